"""Bad model inputs get one line and exit 2 with nothing written; checkpoints people download load.

Covers issue 15's bad-input list and issue 13's model-loading items (metadata field types and
bounds, state-dict mismatches, multi-line torch errors, odd weight dtypes, damaged zips,
formats recognised by bytes).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from poisonguard.cli import main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import conformance as C  # noqa: E402
import foreign_archs  # noqa: E402

ARCH = f"{HERE / 'foreign_archs.py'}:strided_gelu"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    data = C.make_data(root / "d.npz")
    model = C.train("strided_gelu", data, epochs=4)
    return root, data, model


def made(save) -> None:
    """Run `save` (a test's own torch.jit/export calls) without its deprecation warnings reaching stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save()


def nothing_written(out: Path) -> bool:
    """No output in `out` (the folder may exist holding only the claim --out makes before any work)."""
    return not out.exists() or all(f.name == ".poisonguard-out.json" for f in out.rglob("*") if f.is_file())


def one_line_error(capfd, rc: int, out: Path | None = None) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("poisonguard: error:"), err
    if out is not None:
        assert nothing_written(out)
    return err[0]


def run(args, out: Path) -> int:
    return main([*args, "--out", str(out), "--quiet"])


def test_unknown_format(work, tmp_path, capfd):
    _, data, _ = work
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00\x01not a model at all" * 10)
    rc = run(["evaluate", str(bad), "--data", str(data)], tmp_path / "o")
    assert "unknown format" in one_line_error(capfd, rc, tmp_path / "o")


def test_a_plain_pickle_is_not_called_code_that_would_run(work, tmp_path, capfd):
    # The file safety check passes it (it imports nothing); the refusal must not say it could run code.
    import pickle

    _, data, _ = work
    plain = tmp_path / "model.pt"
    plain.write_bytes(pickle.dumps({"hello": [1, 2, 3], "cfg": {"lr": 0.1}}, protocol=4))
    rc = run(["evaluate", str(plain), "--data", str(data), "--arch", ARCH], tmp_path / "o")
    line = one_line_error(capfd, rc, tmp_path / "o")
    assert "weights-only reader refuses this pickle" in line and "run code" not in line


def test_onnx_operator_the_converter_lacks(work, tmp_path, capfd):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _, data, _ = work
    # Shrink is a standard operator (so the file is safe) that onnx2torch has no converter for.
    nodes = [helper.make_node("Shrink", ["x"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["y"])]
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("starts", 0), ("ends", 4), ("axes", 1))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], initializer=consts)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    rc = run(["scan", str(path), "--data", str(data)], tmp_path / "o")
    assert "no converter for operator Shrink" in one_line_error(capfd, rc, tmp_path / "o")


def test_onnx_weights_shared_through_identity_nodes_load(work, tmp_path, capsys):
    """torch's exporter hands equal weights to several layers through Identity nodes (an untrained
    ResNet's zero batch-norm biases); onnx2torch failed on them with a bare KeyError."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _, data, _ = work
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 8, 8], rng.normal(0, 0.1, 256).astype(np.float32))
    zeros = helper.make_tensor("b", TensorProto.FLOAT, [4], np.zeros(4, np.float32))
    nodes = [helper.make_node("Identity", ["w"], ["w_shared"]), helper.make_node("Identity", ["b"], ["b_shared"]),
             helper.make_node("Identity", ["b_shared"], ["b_twice"]),
             helper.make_node("Conv", ["x", "w_shared", "b_twice"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], initializer=[weight, zeros])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]), str(path))
    assert main(["evaluate", str(path), "--data", str(data), "--quiet"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clean_accuracy"] <= 1


def test_onnx_constant_with_external_data_reads_nothing(work, tmp_path, capfd, monkeypatch):
    """A Constant node's tensor may point at external data too. The converter read it relative
    to the working directory, where the file check (which resolves it beside the model) never
    looked: a file of the user's current folder became weights, and repair wrote them out."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _, data, _ = work
    secret = tmp_path / "cwd" / "token.txt"
    secret.parent.mkdir()
    secret.write_bytes(np.full((64, 4), 7.0, np.float32).tobytes())
    monkeypatch.chdir(secret.parent)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 4], data_location=TensorProto.EXTERNAL)
    weight.external_data.add(key="location", value="token.txt")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Constant", [], ["w"], value=weight),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]).SerializeToString())
    rc = run(["evaluate", str(path), "--data", str(data)], tmp_path / "o")
    assert "external files" in one_line_error(capfd, rc, tmp_path / "o")


def test_onnx_dense_layers_written_as_matmul_can_be_repaired(work, tmp_path):
    """tf2onnx and other exporters write a dense layer as MatMul + Add on stored weights, which
    onnx2torch keeps as buffers: repair had nothing to train (REFIT stopped with a bare
    StopIteration). They are parameters now, and the repaired file carries changed weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    _, data, _ = work
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (C.SIZE * C.SIZE, C.NUM_CLASSES)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, C.SIZE, C.SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", C.NUM_CLASSES])],
                              initializer=[numpy_helper.from_array(w, "w"),
                                           numpy_helper.from_array(np.zeros(C.NUM_CLASSES, np.float32), "b")])
    path = tmp_path / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]), str(path))
    out = tmp_path / "rep"
    assert main(["repair", str(path), "--data", str(data), "--method", "refit", "--epochs", "2", "--out", str(out),
                 "--quiet"]) == 0
    repaired = onnx.load(str(out / "model.onnx"))
    arrays = [numpy_helper.to_array(t) for t in repaired.graph.initializer]
    big = [a for a in arrays if a.size == w.size]
    assert len(big) == 1 and not np.allclose(big[0].reshape(w.shape), w)


@pytest.mark.parametrize("spec, words", [
    ("{tmp}/missing.py:f", "is not a file"),
    ("no_such_package_xyz.mod:f", "does not import"),
    ("{tmp}/broken.py:f", "does not import"),
    ("{tmp}/three.py:f", "not a torch.nn.Module"),
    ("{tmp}/three.py:absent", "has no attribute"),
])
def test_arch_specs_that_fail(work, tmp_path, capfd, spec, words):
    _, data, model = work
    (tmp_path / "broken.py").write_text("import no_such_module_abc\n")
    (tmp_path / "three.py").write_text("def f(**kw):\n    return 3\n")
    weights = tmp_path / "w" / "model.pt"
    weights.parent.mkdir()
    torch.save(model.state_dict(), weights)
    rc = run(["repair", str(weights), "--data", str(data), "--arch", spec.format(tmp=tmp_path)], tmp_path / "o")
    assert words in one_line_error(capfd, rc, tmp_path / "o")


def test_state_dict_mismatch_names_keys(work, tmp_path, capfd):
    _, data, model = work
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(3)
    del state["5.bias"]
    weights = tmp_path / "model.pt"
    torch.save(state, weights)
    rc = run(["evaluate", str(weights), "--data", str(data), "--arch", ARCH, "--arch-kwargs", "num_classes=4"], tmp_path / "o")
    line = one_line_error(capfd, rc, tmp_path / "o")
    assert "missing keys: 5.bias" in line and "unexpected keys: extra.weight" in line


def test_output_not_n_by_classes(work, tmp_path, capfd):
    _, data, _ = work

    class Bad(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :8].reshape(-1, 4, 2)

    path = tmp_path / "model.pt"
    made(lambda: torch.jit.save(torch.jit.trace(Bad(), torch.rand(2, 1, 8, 8)), str(path)))
    capfd.readouterr()
    rc = run(["certify", str(path), "--data", str(data)], tmp_path / "o")
    assert "expected (N, classes)" in one_line_error(capfd, rc, tmp_path / "o")


@pytest.mark.parametrize("field, value", [
    ("num_classes", "ten"), ("num_classes", {"n": 4}), ("num_classes", 4_000_000), ("num_classes", 10**12),
    ("architecture", 123), ("architecture", ["a"]), ("input_shape", [1, 60000, 60000]),
])
def test_metadata_fields_of_wrong_type_or_size(work, tmp_path, capfd, field, value):
    _, data, model = work
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "metadata.json").write_text(json.dumps({field: value}))
    rc = run(["evaluate", str(weights), "--data", str(data), "--arch", ARCH], tmp_path / "o")
    assert field in one_line_error(capfd, rc, tmp_path / "o")


def test_metadata_sizes_cannot_allocate_before_the_weights_are_compared(work, tmp_path, capfd, monkeypatch):
    """metadata.json names a built-in MLP over 2**24 features: built for real that is 4 GiB of
    weights, for a file of a few kilobytes. The architecture is compared with the file's tensors
    on the meta device first, so no real model is built before the mismatch is reported."""
    import poisonguard.models.arch as arch

    _, data, model = work
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "metadata.json").write_text(json.dumps({"architecture": "mlp", "num_classes": C.NUM_CLASSES,
                                                        "input_shape": [1 << 24]}))
    built = []
    real_build = arch.build_from_spec

    def recording(*args, **kwargs):
        net = real_build(*args, **kwargs)
        built.append({p.device.type for p in net.parameters()})
        return net

    monkeypatch.setattr(arch, "build_from_spec", recording)
    rc = run(["evaluate", str(weights), "--data", str(data)], tmp_path / "o")
    assert "does not fit architecture 'mlp'" in one_line_error(capfd, rc, tmp_path / "o")
    assert built == [{"meta"}]


def test_metadata_never_names_code_to_run(work, tmp_path, capfd):
    _, data, model = work
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f(**kw):\n    return None\n")
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "metadata.json").write_text(json.dumps({"architecture": f"{tmp_path / 'evil.py'}:f", "num_classes": 4,
                                                        "input_shape": [1, 8, 8]}))
    rc = run(["evaluate", str(weights), "--data", str(data)], tmp_path / "o")
    assert "pass --arch" in one_line_error(capfd, rc)
    assert not marker.exists()


class _DamagedProbe(nn.Module):
    """A class of its own: TorchScript reuses an already compiled class of the same name."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_damaged_torchscript_and_export_give_one_line(work, tmp_path, capfd):
    _, data, model = work
    probe = _DamagedProbe().eval()
    for name, save in (("ts.pt", lambda p: torch.jit.save(torch.jit.script(probe), str(p))),
                       ("m.pt2", lambda p: torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(p)))):
        good = tmp_path / ("good_" + name)
        made(lambda: save(good))
        capfd.readouterr()
        bad = tmp_path / name
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.infolist():
                body = src.read(item)
                if name == "ts.pt" and b"class _DamagedProbe" in body:
                    # Parses (so the static check passes) but does not compile: a multi-line torch error.
                    body = body.replace(b"self.head", b"self.no_such_layer")
                elif name == "m.pt2" and item.filename.endswith("models/model.json"):
                    body = b'{"graph_module": {}}'
                dst.writestr(item, body)
        rc = run(["evaluate", str(bad), "--data", str(data)], tmp_path / "o")
        line = one_line_error(capfd, rc, tmp_path / "o")
        assert "cannot load" in line


def test_zip_with_wrong_crc_is_refused(work, tmp_path, capfd):
    _, data, model = work
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 16)
    off = info.header_offset
    start = off + 30 + int.from_bytes(raw[off + 26:off + 28], "little") + int.from_bytes(raw[off + 28:off + 30], "little")
    raw[start + 4] ^= 0xFF
    path.write_bytes(bytes(raw))
    rc = run(["evaluate", str(path), "--data", str(data), "--arch", ARCH, "--arch-kwargs", "num_classes=4"], tmp_path / "o")
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "CRC" in err[0], err  # filesafety's finding: a damaged file is refused
    assert nothing_written(tmp_path / "o")


def test_weight_dtypes(work, tmp_path, capfd, caplog):
    _, data, model = work
    half = tmp_path / "half" / "model.pt"
    half.parent.mkdir()
    torch.save({k: v.half() for k, v in model.state_dict().items()}, half)
    rc = main(["evaluate", str(half), "--data", str(data), "--arch", ARCH, "--arch-kwargs", "num_classes=4"])
    assert rc == 0 and "converted" in caplog.text
    capfd.readouterr()
    boolean = tmp_path / "bool.pt"
    torch.save({k: v.bool() for k, v in model.state_dict().items()}, boolean)
    rc = run(["evaluate", str(boolean), "--data", str(data), "--arch", ARCH, "--arch-kwargs", "num_classes=4"], tmp_path / "o")
    assert "bool" in one_line_error(capfd, rc, tmp_path / "o")


MASKED = """
import torch
from torch import nn


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.register_buffer("keep", torch.ones(6, dtype=torch.bool))

    def forward(self, x):
        return self.fc(x * self.keep)


def build():
    return Masked()
"""


def test_a_bool_mask_buffer_in_a_state_dict_loads(tmp_path):
    """A mask kept as a bool buffer (as attention masks are) was refused as if it were a weight."""
    from poisonguard.errors import UserError
    from poisonguard.models import load_model

    (tmp_path / "masked.py").write_text(MASKED)
    spec = f"{tmp_path / 'masked.py'}:build"
    state = {"fc.weight": torch.randn(2, 6), "fc.bias": torch.zeros(2), "keep": torch.tensor([True, False] * 3)}
    torch.save(state, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", arch=spec, num_classes=2, input_shape=[6])
    assert loaded.model.keep.dtype == torch.bool and loaded.model.keep.tolist() == [True, False] * 3
    torch.save({**state, "fc.bias": torch.tensor([True, False])}, tmp_path / "w.pt")  # a weight stays refused
    with pytest.raises(UserError, match="fc.bias has dtype bool"):
        load_model(tmp_path / "w.pt", arch=spec, num_classes=2, input_shape=[6])


def test_format_by_bytes_not_name(work, tmp_path):
    from poisonguard.models import load_model

    _, _, model = work
    disguised = tmp_path / "model.safetensors"
    made(lambda: torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 8, 8)), str(disguised)))
    assert load_model(disguised, input_shape=(1, 8, 8), num_classes=4).format == "torchscript"


def test_downloaded_checkpoints(work, tmp_path):
    """HF pytorch_model.bin, sharded safetensors with an index, Lightning .ckpt: same outputs as the model."""
    from safetensors.torch import save_file

    from poisonguard.models import load_model

    _, _, model = work
    probe = torch.rand(3, 1, 8, 8)
    expected = model(probe)
    kw = {"arch": ARCH, "arch_kwargs": {"num_classes": 4}, "num_classes": 4, "input_shape": (1, 8, 8)}
    (tmp_path / "hf").mkdir()
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    (tmp_path / "sharded").mkdir()
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / "sharded" / name))
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"lr": 0.01, "width": 8}}, ckpt)
    for path in (tmp_path / "hf" / "pytorch_model.bin", index, ckpt):
        loaded = load_model(path, **kw)
        assert torch.allclose(loaded.model(probe), expected, atol=1e-6), path
    assert load_model(ckpt, **kw).metadata["checkpoint_hyper_parameters"] == {"lr": 0.01, "width": 8}
    # a shard that is a link to a file elsewhere is refused, as ONNX external data is (it was followed)
    from poisonguard.errors import UserError

    (tmp_path / "linked").mkdir()
    (tmp_path / "elsewhere").mkdir()
    first, second = shards
    save_file({k: state[k] for k in shards[first]}, str(tmp_path / "linked" / first))
    save_file({k: state[k] for k in shards[second]}, str(tmp_path / "elsewhere" / "secret.safetensors"))
    (tmp_path / "linked" / second).symlink_to(tmp_path / "elsewhere" / "secret.safetensors")
    (tmp_path / "linked" / index.name).write_text(index.read_text())
    with pytest.raises(UserError, match="is a link"):
        load_model(tmp_path / "linked" / index.name, **kw)


def test_torchvision_and_timm_specs():
    from poisonguard.errors import UserError
    from poisonguard.models.arch import build_from_spec

    net = build_from_spec("torchvision:squeezenet1_1", num_classes=7, input_shape=(3, 32, 32))
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"pip install 'poisonguard\[timm\]'"):
            build_from_spec("timm:resnet18", num_classes=7, input_shape=(3, 32, 32))


def test_a_library_architecture_never_downloads_or_reads_weights(monkeypatch):
    """metadata.json naming torchvision:fcn_resnet50 made its builder download ImageNet weights for
    the backbone (weights_backbone's default); timm's checkpoint_path read any file it named."""
    import torchvision.models._api as api

    from poisonguard.errors import UserError
    from poisonguard.models.arch import build_from_spec

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    net = build_from_spec("torchvision:lraspp_mobilenet_v3_large", num_classes=3, input_shape=(3, 32, 32))
    assert sum(p.numel() for p in net.parameters()) > 0
    for spec, kwargs in (("timm:resnet18", {"checkpoint_path": "/etc/passwd"}),
                         ("torchvision:fcn_resnet50", {"weights_backbone": "IMAGENET1K_V1"}),
                         ("timm:resnet18", {"pretrained_cfg_overlay": {"file": "/etc/passwd"}})):
        with pytest.raises(UserError, match="would download or read weights"):
            build_from_spec(spec, num_classes=3, input_shape=(3, 32, 32), kwargs=kwargs)
    from poisonguard.models.arch import _check_no_fetch

    _check_no_fetch({"drop_path_rate": 0.1, "in_chans": 1, "global_pool": "avg"}, "timm:resnet18")  # hyperparameters


def test_normalize_and_input_size_wrap_and_travel(work, tmp_path):
    """The adapter normalises and resizes inside the model, is recorded, and is taken off when written back."""
    from poisonguard.models import load_model

    _, _, model = work
    big = foreign_archs.strided_gelu(num_classes=4, size=16).eval()
    path = tmp_path / "in" / "model.pt2"
    path.parent.mkdir()
    torch.export.save(torch.export.export(big, (torch.rand(2, 1, 16, 16),)), str(path))
    loaded = load_model(path, num_classes=4, input_shape=(1, 8, 8), normalize=([0.5], [0.25]), input_size=(16, 16))
    x = torch.rand(3, 1, 8, 8)
    want = big((torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear") - 0.5) / 0.25)
    assert torch.allclose(loaded.model(x), want, atol=1e-5)
    meta = loaded.save_like(loaded.model, tmp_path / "out", classes=list("abcd"), input_shape=(1, 8, 8))
    assert meta["normalize"] == {"mean": [0.5], "std": [0.25]} and meta["input_size"] == [16, 16]
    back = load_model(meta["path"], num_classes=4, input_shape=(1, 8, 8))
    assert torch.allclose(back.model(x), want, atol=1e-5)
    assert np.isclose(float(big(torch.rand(1, 1, 16, 16)).shape[1]), 4)


def test_a_zoo_folder_shares_one_metadata_json_without_mixing_models(work, tmp_path, capsys, caplog):
    """Models saved side by side share the name metadata.json: it describes the file it names
    (or model.*), so another model in the folder is not called "changed after saving" by its
    sha256; the model it does describe still is, when its bytes change."""
    _, data, model = work
    folder = tmp_path / "zoo"
    folder.mkdir()
    from poisonguard.models import save_model

    save_model(model, folder / "model.pt", arch=ARCH, classes=[str(i) for i in range(C.NUM_CLASSES)],
               input_shape=[1, C.SIZE, C.SIZE])
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["file"] == "model.pt"
    made(lambda: torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(1, 1, C.SIZE, C.SIZE)), str(folder / "other.pt")))
    assert main(["evaluate", str(folder / "other.pt"), "--data", str(data), "--quiet"]) == 0
    assert "describes another file" in caplog.text
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes() + b"\0")
    assert main(["evaluate", str(folder / "model.pt"), "--data", str(data), "--arch", ARCH, "--quiet"]) == 2
    assert "changed after saving" in capsys.readouterr().err


def test_a_torchscript_traced_in_train_mode_is_named(work, tmp_path, caplog):
    """Batch norm traced in training mode normalises with each batch's statistics, so the file
    answers differently from the eval-mode module poisonguard examines: say so."""
    from poisonguard.models.graph import uses_batch_statistics

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, C.NUM_CLASSES))
    example = torch.rand(4, 1, C.SIZE, C.SIZE)
    traced = {}
    made(lambda: traced.update(train=torch.jit.trace(net.train(), example), eval=torch.jit.trace(net.eval(), example)))
    assert uses_batch_statistics(traced["train"]) and not uses_batch_statistics(traced["eval"])
    _, data, _ = work
    torch.jit.save(traced["train"], str(tmp_path / "bn.pt"))
    main(["evaluate", str(tmp_path / "bn.pt"), "--data", str(data), "--quiet"])
    assert "batch's own statistics" in caplog.text


def test_a_model_that_ends_in_softmax_is_read_as_logits(work, tmp_path, caplog):
    """Exported classifiers often end in a softmax. Taken as logits, its probabilities pass a
    second softmax and their cross-entropy gradient nearly vanishes (trigger inversion and
    fine-tuning stall). The loaded model answers log-probabilities, which are logits: the same
    loss and input gradient as the network without its softmax. A repaired copy is written back
    with its softmax, and a logits model is left as it is."""
    from poisonguard.models import load_model

    _, data, model = work
    shape = (1, C.SIZE, C.SIZE)
    with_softmax = nn.Sequential(copy_of(model), nn.Softmax(dim=1)).eval()
    path = tmp_path / "soft.pt"
    made(lambda: torch.jit.save(torch.jit.trace(with_softmax, torch.rand(2, *shape)), str(path)))
    loaded = load_model(path, num_classes=C.NUM_CLASSES, input_shape=shape)
    assert "outputs probabilities" in caplog.text
    x = torch.rand(6, *shape, requires_grad=True)
    y = torch.arange(6) % C.NUM_CLASSES
    ours = torch.nn.functional.cross_entropy(loaded.model(x), y)
    (ours_grad,) = torch.autograd.grad(ours, x)
    logits = torch.nn.functional.cross_entropy(model.eval()(x), y)
    (logits_grad,) = torch.autograd.grad(logits, x)
    assert torch.isclose(ours, logits, rtol=1e-4)
    assert torch.allclose(ours_grad, logits_grad, rtol=1e-3, atol=1e-7)
    naive = torch.nn.functional.cross_entropy(with_softmax(x), y)  # what was computed before
    (naive_grad,) = torch.autograd.grad(naive, x)
    assert naive_grad.abs().sum() < 0.5 * logits_grad.abs().sum()

    meta = loaded.save_like(loaded.model, tmp_path / "out", classes=[str(i) for i in range(C.NUM_CLASSES)],
                            input_shape=list(shape))
    assert meta["outputs"] == "probabilities"
    written = torch.jit.load(meta["path"])
    assert torch.allclose(written(x.detach()).sum(dim=1), torch.ones(6), atol=1e-5)
    caplog.clear()
    plain = tmp_path / "plain.pt"
    made(lambda: torch.jit.save(torch.jit.trace(copy_of(model).eval(), torch.rand(2, *shape)), str(plain)))
    assert torch.allclose(load_model(plain, num_classes=C.NUM_CLASSES, input_shape=shape).model(x.detach()),
                          model(x.detach()), atol=1e-5)
    assert "outputs probabilities" not in caplog.text


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def test_a_table_model_with_batchnorm1d_loads_from_torchscript_and_export(tmp_path):
    """Lifted batch norms were always BatchNorm2d, which refuses the (N, F) input of a table model."""
    from poisonguard.models import load_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    net.train()(torch.randn(64, 4))  # running statistics that are not the defaults
    net.eval()
    x = torch.randn(5, 4)
    torch.jit.save(torch.jit.trace(net, x), str(tmp_path / "bn1d.pt"))
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("n")},)),
                      str(tmp_path / "bn1d.pt2"))
    for name in ("bn1d.pt", "bn1d.pt2"):
        loaded = load_model(tmp_path / name, num_classes=2, input_shape=(4,))
        assert any(isinstance(m, nn.BatchNorm1d) for m in loaded.model.modules())
        assert torch.allclose(loaded.model.eval()(x), net(x), atol=1e-5)


def test_a_typed_code_architecture_is_recorded_with_its_absolute_path(tmp_path, monkeypatch):
    """A repaired model recorded "../mymodel.py:build", so its "pass --arch" hint failed from any other folder."""
    from poisonguard.models import load_model

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "net.py").write_text("from torch import nn\ndef build(num_classes=2):\n"
                                              "    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))\n")
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path / "code")
    loaded = load_model(tmp_path / "w.pt", arch="net.py:build", num_classes=2, input_shape=(4,))
    assert loaded.architecture == f"{tmp_path / 'code' / 'net.py'}:build"
    meta = loaded.save_like(loaded.model, tmp_path / "out", classes=["a", "b"], input_shape=[4])
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["architecture"] == loaded.architecture
    assert meta["architecture"] == loaded.architecture
