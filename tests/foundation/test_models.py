import json
import os
import pickle

import pytest
import torch

from poisonguard.errors import UnsafeFileError, UserError
from poisonguard.models import build_model, check_classifier, load_model, save_model


@pytest.mark.parametrize("arch,shape", [("mnist_cnn", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("preact_resnet18", (3, 32, 32)),
                                        ("cifar_cnn", (3, 32, 32))])
def test_registry_builds_classifiers(arch, shape):
    model = build_model(arch, num_classes=7, input_shape=shape)
    check_classifier(model, shape, 7)
    assert model(torch.rand(3, *shape)).shape == (3, 7)


def test_unknown_architecture_lists_known():
    with pytest.raises(UserError, match="mnist_cnn"):
        build_model("resnet9000", num_classes=10, input_shape=(1, 28, 28))


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("mnist_cnn", num_classes=10, input_shape=(1, 28, 28)).eval()


def _same(a, b):
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_save_and_load_state_dict_with_metadata(tmp_path):
    model = _tiny()
    meta = save_model(model, tmp_path / "model.pt", arch="mnist_cnn", classes=[str(i) for i in range(10)],
                      input_shape=(1, 28, 28), training={"epochs": 1})
    assert json.loads((tmp_path / "metadata.json").read_text())["sha256"] == meta["sha256"]
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.format == "state_dict" and _same(model, loaded.model)


def test_tampered_model_file_is_detected(tmp_path):
    save_model(_tiny(), tmp_path / "model.pt", arch="mnist_cnn", classes=list("0123456789"), input_shape=(1, 28, 28))
    torch.save(_tiny(1).state_dict(), tmp_path / "model.pt")
    with pytest.raises(UserError, match="sha256"):
        load_model(tmp_path / "model.pt")


def test_safetensors_torchscript_and_export(tmp_path):
    from safetensors.torch import save_file

    model = _tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    st = load_model(tmp_path / "m.safetensors", arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28))
    assert _same(model, st.model)
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 28, 28)), tmp_path / "m.ts")
    ts = load_model(tmp_path / "m.ts")
    assert ts.format == "torchscript" and _same(model, ts.model)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    ex = load_model(tmp_path / "m.pt2")
    assert ex.format == "torch.export" and _same(model, ex.model)


def test_bare_state_dict_needs_architecture(tmp_path):
    torch.save({"state_dict": _tiny().state_dict()}, tmp_path / "w.pt")
    with pytest.raises(UserError, match="architecture"):
        load_model(tmp_path / "w.pt", num_classes=10, input_shape=(1, 28, 28))
    assert load_model(tmp_path / "w.pt", arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28)).format == "state_dict"
    with pytest.raises(UserError, match="does not fit"):
        load_model(tmp_path / "w.pt", arch="lenet5", num_classes=10, input_shape=(1, 28, 28))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # A refused file is a finding (UnsafeFileError, exit 1), not a user error (issue 13).
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"weight": _Payload(marker)}, fh)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_model(evil, arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28))
    assert not marker.exists()
    # The same payload inside torch.save's zip format.
    torch.save({"weight": _Payload(marker)}, evil)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_model(evil, arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28))
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    torch.save(_tiny(), tmp_path / "full.pt")
    with pytest.raises(UnsafeFileError, match="refused"):
        load_model(tmp_path / "full.pt", arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28))


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(UserError):
        load_model(tmp_path / "junk.pt", arch="mnist_cnn", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_check_classifier_rejects_non_classifiers():
    with pytest.raises(UserError, match="not a classifier"):
        check_classifier(torch.nn.Identity(), (1, 4, 4), 16)
    with pytest.raises(UserError, match="outputs"):
        check_classifier(_tiny(), (1, 28, 28), 5)
    with pytest.raises(UserError, match="inputs of shape"):
        check_classifier(_tiny(), (3, 32, 32), 10)

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    with pytest.raises(UserError, match="NaN"):
        check_classifier(NaNNet(), (1, 28, 28), 10)


def test_build_model_seed_fixes_the_initial_weights():
    a = build_model("mnist_cnn", num_classes=10, input_shape=(1, 28, 28), seed=5)
    torch.randn(100)  # whatever else used the global generator in between must not matter
    state = torch.get_rng_state()
    b = build_model("mnist_cnn", num_classes=10, input_shape=(1, 28, 28), seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is left alone
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
