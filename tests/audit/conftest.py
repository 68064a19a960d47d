"""A small model zoo (2 backdoored, 2 clean, 2 hostile, 1 truncated, 1 unloadable) built once per test session."""

from __future__ import annotations

import os
import pickle

import pytest
import torch


class Payload:
    """A pickle whose loading would run a shell command (only touching a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save(model, folder, *, noise: float = 0.0):
    from poisonguard.models import save_model

    if noise:  # different bytes, same behaviour: two distinct files in the zoo
        model = __import__("copy").deepcopy(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise)
    save_model(model, folder / "model.pt", arch="mnist_cnn", classes=[str(i) for i in range(10)], input_shape=(1, 28, 28))
    return folder / "model.pt"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, badnets_model, clean_model):
    """Folder names say what each file is; hostile payloads only ever touch `marker`."""
    root = tmp_path_factory.mktemp("zoo")
    marker = root.parent / f"{root.name}-PAYLOAD-RAN"
    paths = {
        "backdoor_a": _save(badnets_model, root / "backdoor_a"),
        "backdoor_b": _save(badnets_model, root / "backdoor_b", noise=1e-6),
        "clean_a": _save(clean_model, root / "clean_a"),
        "clean_b": _save(clean_model, root / "clean_b", noise=1e-6),
    }
    (root / "hostile_pickle").mkdir()
    paths["hostile_pickle"] = root / "hostile_pickle" / "weights.txt"  # wrong extension on purpose
    paths["hostile_pickle"].write_bytes(pickle.dumps(Payload(marker), protocol=4))
    (root / "hostile_torch").mkdir()
    paths["hostile_torch"] = root / "hostile_torch" / "model.pt"
    torch.save({"weight": torch.zeros(2), "extra": Payload(marker)}, paths["hostile_torch"])
    (root / "truncated").mkdir()
    paths["truncated"] = root / "truncated" / "model.pt"
    data = paths["clean_a"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    (root / "no_metadata").mkdir()  # a safe state dict that cannot be loaded: no architecture known
    paths["no_metadata"] = root / "no_metadata" / "weights.pth"
    torch.save({"weight": torch.zeros(3)}, paths["no_metadata"])
    (root / "notes.md").write_text("not a model")
    return {"root": root, "marker": marker, "paths": paths}


@pytest.fixture
def fake_filesafety(monkeypatch):
    """The stand-in file check: tests of the audit's plumbing that need no real file check."""
    import audit_fakes

    import poisonguard.filesafety as filesafety

    monkeypatch.setattr(filesafety, "inspect_file", audit_fakes.fake_inspect)
    return audit_fakes
