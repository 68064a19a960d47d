"""`scan --references own`: the clean references of a user's own table model rebuilt from the
user's code, keeping the suspect's buffers (its owner's scaling); by default the built-in mlp stands
in, which measured better on larger tables (notes/issue-19.md, session 17)."""

from __future__ import annotations

import textwrap

import torch

from poisonguard.detect.calibration import ReferenceArch, reference_architecture, train_references, weights_metadata
from poisonguard.models import load_model

CODE = textwrap.dedent("""
    import torch
    from torch import nn

    class Scaled(nn.Module):
        def __init__(self, width, classes):
            super().__init__()
            self.register_buffer("mean", torch.zeros(width))
            self.register_buffer("std", torch.ones(width))
            self.net = nn.Sequential(nn.Linear(width, 16), nn.GELU(), nn.Linear(16, classes))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    def build(num_classes, width):
        return Scaled(width, num_classes)
""")


def _users_model(tmp_path, width=5):
    code = tmp_path / "scaled.py"
    code.write_text(CODE)
    spec = f"{code}:build"
    namespace: dict = {}
    exec(compile(CODE, str(code), "exec"), namespace)
    suspect = namespace["build"](2, width)
    with torch.no_grad():
        suspect.mean.copy_(torch.arange(width) * 100.0)  # raw units far from 0 and 1
        suspect.std.copy_(torch.full((width,), 50.0))
    torch.save(suspect.state_dict(), tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt", arch=spec, arch_kwargs={"num_classes": 2, "width": width}, num_classes=2,
                        input_shape=[width])
    return code, spec, loaded


def test_a_users_table_model_gets_references_of_its_own_code_and_scaling(tmp_path):
    code, spec, loaded = _users_model(tmp_path)
    assert reference_architecture(weights_metadata(loaded), (5,), loaded.model).spec == "mlp"  # the default stand-in
    arch = reference_architecture(weights_metadata(loaded), (5,), loaded.model, choice="own")
    assert arch.spec == spec and arch.kwargs == {"num_classes": 2, "width": 5}
    assert "own architecture" in arch.source and "standing in" not in arch.source
    ref = arch.build(num_classes=2, input_shape=(5,), seed=3)
    assert type(ref).__name__ == "Scaled"
    assert torch.equal(ref.mean, loaded.model.mean) and torch.equal(ref.std, loaded.model.std)
    assert not torch.equal(ref.net[0].weight, loaded.model.net[0].weight)  # parameters re-initialised
    # seeded: the same seed gives the same reference
    assert torch.equal(arch.build(num_classes=2, input_shape=(5,), seed=3).net[0].weight, ref.net[0].weight)
    # the calibration cache keys the code's bytes and the kept buffers: an edited build file or
    # another scaling is another calibration
    before = arch.settings()
    code.write_text(CODE + "\n# edited\n")
    assert arch.settings()["code"] != before["code"]
    kwargs = {"num_classes": 2, "width": 5}
    unscaled = ReferenceArch(spec, kwargs=kwargs).build(num_classes=2, input_shape=(5,), seed=0)  # the code's defaults
    other = ReferenceArch(spec, kwargs=kwargs, suspect=unscaled)
    assert other.settings()["buffers"] != before["buffers"]


def test_references_train_as_the_users_model_with_its_scaling(tmp_path):
    from poisonguard.data.dataset import ImageData

    _, _, loaded = _users_model(tmp_path, width=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=g)
    x[:, 0] += x[:, 0].sign()  # a margin around the rule x0 > 0
    x = x * 50 + torch.tensor([0.0, 100.0, 200.0])
    data = ImageData(x, (x[:, 0] > 0).long(), ["no", "yes"], kind="tabular")
    arch = reference_architecture(weights_metadata(loaded), (3,), loaded.model, choice="own")
    refs = train_references(data, architecture=arch, n_models=2, epochs=10, device="cpu")
    for ref in refs:
        assert torch.equal(ref.mean, loaded.model.mean)
        accuracy = (ref(x).argmax(1) == data.y).float().mean().item()
        assert accuracy > 0.75  # learns the rule (chance: 0.5) in the owner's scaling


def test_files_that_name_no_rebuildable_architecture_get_the_built_in_stand_in():
    assert reference_architecture(None, (7,)).spec == "mlp"  # TorchScript, ONNX: no architecture to rebuild
    assert reference_architecture({"architecture": "mlp"}, (7,)).source.startswith("the suspect's own architecture")
    # by default an image model's library architecture gets the built-in stand-in; asked for, its own
    library = {"architecture": "torchvision:resnet18"}
    assert reference_architecture(library, (3, 32, 32)).spec == "resnet20"
    image = reference_architecture(library, (3, 32, 32), choice="own")
    assert image.spec == "torchvision:resnet18" and "image recipe" in image.source
    # --references own on a file with no architecture to rebuild says why the built-in stands in
    graph = reference_architecture(None, (3, 32, 32), choice="own")
    assert graph.spec == "resnet20" and "--references own needs a weights file loaded with --arch" in graph.source
    assert "--references own" not in reference_architecture(None, (3, 32, 32)).source


def test_batch_norm_statistics_are_neither_kept_nor_keyed():
    """Training replaces running statistics, so suspects of one architecture that differ only there
    share one calibration; an owner's normalisation buffer is kept and keyed."""
    from torch import nn

    from poisonguard.detect.calibration import owner_buffers

    def users(mean: float, bn_mean: float) -> nn.Module:
        m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
        m.register_buffer("mean", torch.full((1,), mean))
        m[1].running_mean.fill_(bn_mean)
        return m

    assert set(owner_buffers(users(0.1, 0.0))) == {"mean"}
    key = {b: ReferenceArch("torchvision:resnet18", suspect=users(0.1, b)).settings()["buffers"] for b in (0.0, 5.0)}
    assert key[0.0] == key[5.0]
    assert ReferenceArch("torchvision:resnet18", suspect=users(0.2, 0.0)).settings()["buffers"] != key[0.0]


def test_scan_plan_references_choice_reaches_the_trained_references(tmp_path):
    from poisonguard.data.dataset import ImageData
    from poisonguard.detect.scan import ScanPlan, _references

    _, _, loaded = _users_model(tmp_path, width=3)
    x = torch.randn(120, 3) * 50 + torch.tensor([0.0, 100.0, 200.0])
    clean = ImageData(x, (x[:, 0] > 0).long(), ("no", "yes"), kind="tabular")
    for choice, kind in (("own", "Scaled"), ("builtin", "Sequential")):  # the built-in mlp is a Sequential
        plan = ScanPlan(methods=("reference_contrast",), references=choice, reference_models=2, device="cpu")
        refs = _references(loaded, clean, (3,), plan)
        assert len(refs) == 2 and type(refs[0]).__name__ == kind, (choice, type(refs[0]))


def test_a_wrapped_suspects_references_sit_in_the_same_adapter_with_its_own_buffers(monkeypatch):
    """With --normalize / --input-size the suspect is an InputAdapter: no buffer name matched, so
    the owner's scaling was silently not kept, and the reference skipped the resizing."""
    from torch import nn

    from poisonguard.models.wrappers import InputAdapter

    inner = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    inner.register_buffer("scale", torch.tensor([7.0]))
    suspect = InputAdapter(inner, mean=[0.5], std=[0.25], size=(16, 16))

    def build(**kwargs):
        m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        m.register_buffer("scale", torch.tensor([1.0]))
        return m

    monkeypatch.setattr("poisonguard.models.arch.build_from_spec", lambda spec, **kwargs: build())
    ref = ReferenceArch("torchvision:whatever", suspect=suspect).build(num_classes=3, input_shape=(1, 8, 8), seed=0)
    assert isinstance(ref, InputAdapter) and ref.size == (16, 16) and torch.equal(ref.mean, suspect.mean)
    assert torch.equal(ref.inner.scale, torch.tensor([7.0]))
    assert ref(torch.rand(2, 1, 8, 8)).shape == (2, 3)
