"""The format conformance matrix, generated from one list each (timm-style).

ARCHS (tests/models/foreign_archs.py) x FORMATS x COMMANDS. `pairwise()` picks a subset
covering every (format, command), (arch, format) and (arch, command) pair for CI;
`benchmarks/formats_matrix.py` runs `full()`. Everything is tiny: 8x8 single-channel
images of four classes, 200 samples in an .npz, budgets of one epoch or a few steps.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import foreign_archs  # noqa: E402

ARCHS = tuple(foreign_archs.ARCHITECTURES)
FORMATS = ("torchscript_traced", "torchscript_scripted", "pt2", "onnx", "state_dict", "safetensors")
COMMANDS = {
    "scan_neural_cleanse": ["scan", "--method", "neural-cleanse", "--epochs", "1", "--clean-fraction", "0.5"],
    "scan_tabor": ["scan", "--method", "tabor", "--epochs", "1", "--clean-fraction", "0.5"],
    "scan_deepinspect": ["scan", "--method", "deepinspect", "--steps", "4", "--clean-fraction", "0.5"],
    "repair_fine_pruning": ["repair", "--method", "fine-pruning", "--epochs", "1", "--clean-fraction", "0.5"],
    "repair_refit": ["repair", "--method", "refit", "--epochs", "1", "--clean-fraction", "0.5"],
    "repair_wild": ["repair", "--method", "wild", "--epochs", "1", "--clean-fraction", "0.5"],
    "repair_unlearn": ["repair", "--method", "unlearn", "--epochs", "1", "--clean-fraction", "0.5"],
    "evaluate": ["evaluate"],
    "certify": ["certify", "--n", "20", "--n0", "5", "--max-examples", "4", "--batch-size", "20"],
    "checklist": ["checklist", "--quick", "--stages", "repair,certify"],
}
EXT = {"torchscript_traced": "pt", "torchscript_scripted": "pt", "pt2": "pt2", "onnx": "onnx", "state_dict": "pt",
       "safetensors": "safetensors"}
NUM_CLASSES, SIZE, SAMPLES = 4, 8, 200


def make_data(path: Path, *, seed: int = 0) -> Path:
    """Four classes: a bright 3x3 blob in one quadrant of an 8x8 noise image."""
    rng = np.random.default_rng(seed)
    y = np.arange(SAMPLES) % NUM_CLASSES
    x = rng.uniform(0, 0.4, size=(SAMPLES, 1, SIZE, SIZE)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = (k // 2) * 4 + rng.integers(0, 2), (k % 2) * 4 + rng.integers(0, 2)
        x[i, 0, r:r + 3, c:c + 3] = rng.uniform(0.7, 1.0)
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


def train(arch: str, data: Path, *, epochs: int = 15, seed: int = 0) -> torch.nn.Module:
    with np.load(data, allow_pickle=False) as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    torch.manual_seed(seed)
    model = foreign_archs.ARCHITECTURES[arch](num_classes=NUM_CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export(model: torch.nn.Module, fmt: str, folder: Path) -> Path:
    """Save `model` the way its user would, in `fmt`; return the file."""
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{EXT[fmt]}"
    example = torch.rand(2, 1, SIZE, SIZE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "torchscript_traced":
            torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "torchscript_scripted":
            torch.jit.save(torch.jit.script(model), str(path))
        elif fmt == "pt2":
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
        elif fmt == "onnx":
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=16, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        elif fmt == "state_dict":
            torch.save(model.state_dict(), path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def arch_args(arch: str, fmt: str) -> list[str]:
    if fmt not in ("state_dict", "safetensors"):
        return []
    return ["--arch", f"{HERE / 'foreign_archs.py'}:{arch}", "--arch-kwargs", f"num_classes={NUM_CLASSES}"]


def argv(arch: str, fmt: str, command: str, model: Path, data: Path, out: Path) -> list[str]:
    head, *rest = COMMANDS[command]
    return [head, str(model), "--data", str(data), *arch_args(arch, fmt), *rest, "--out", str(out), "--quiet"]


def full() -> list[tuple[str, str, str]]:
    return list(itertools.product(ARCHS, FORMATS, COMMANDS))


def pairwise() -> list[tuple[str, str, str]]:
    """Every (format, command) once, the architecture rotating so each meets every format and command."""
    commands = list(COMMANDS)
    return [(ARCHS[(i + j) % len(ARCHS)], fmt, cmd) for i, fmt in enumerate(FORMATS) for j, cmd in enumerate(commands)]


OK_CODES = {"scan": (0, 1), "repair": (0,), "evaluate": (0,), "certify": (0,), "checklist": (0,)}
INPUT_FORMAT = {"torchscript_traced": "torchscript", "torchscript_scripted": "torchscript", "pt2": "torch.export",
                "onnx": "onnx", "state_dict": "state_dict", "safetensors": "safetensors"}


class Case:
    """One cell of the matrix, run in-process through the CLI's `main`."""

    def __init__(self, arch: str, fmt: str, command: str, root: Path, data: Path, models: dict) -> None:
        self.arch, self.fmt, self.command, self.root, self.data = arch, fmt, command, root, data
        key = (arch, fmt)
        if key not in models:
            trained = models.setdefault(arch, train(arch, data)) if arch not in models else models[arch]
            models[key] = export(trained, fmt, root / "inputs" / f"{arch}-{fmt}")
        self.model = models[key]
        self.out = root / "out" / f"{arch}-{fmt}-{command}"

    def run(self) -> float:
        """Run the command; check its report, exit code and (repair) the file written back. Seconds."""
        import json
        import time

        from poisonguard.cli import main
        from poisonguard.models import handle, load_model

        saved: list = []
        original = handle.LoadedModel.save_like

        def recording(loaded, model, folder, **kw):
            meta = original(loaded, model, folder, **kw)
            saved.append((handle.copy_module(model).eval(), meta))
            return meta

        head = COMMANDS[self.command][0]
        handle.LoadedModel.save_like = recording
        try:
            start = time.perf_counter()
            rc = main(argv(self.arch, self.fmt, self.command, self.model, self.data, self.out))
            seconds = time.perf_counter() - start
        finally:
            handle.LoadedModel.save_like = original
        assert rc in OK_CODES[head], f"{self.arch}/{self.fmt}/{self.command}: exit {rc}"
        report = json.loads((self.out / "report.json").read_text())
        assert report["model"]["format"] == INPUT_FORMAT[self.fmt]
        if head == "checklist":
            assert all(s["status"] == "ok" for s in report["stages"]), report["stages"]
        if head in ("repair", "checklist"):
            assert saved, "no model written back"
            module, meta = saved[-1]
            path = Path(meta["path"])
            assert path.suffix == "." + {"torchscript": "pt", "torch.export": "pt2", "onnx": "onnx"}.get(
                INPUT_FORMAT[self.fmt], "safetensors")
            kw = {"arch": f"{HERE / 'foreign_archs.py'}:{self.arch}", "arch_kwargs": {"num_classes": NUM_CLASSES}} \
                if self.fmt in ("state_dict", "safetensors") else {}
            back = load_model(path, input_shape=(1, SIZE, SIZE), num_classes=NUM_CLASSES, **kw)
            probe = torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                diff = (back.model(probe) - module(probe)).abs().max().item()
            assert diff <= 1e-5, f"{path} gives outputs {diff:.2e} away from the repaired module"
            rc = main(["evaluate", str(path), "--data", str(self.data), *arch_args(self.arch, self.fmt), "--quiet"])
            assert rc == 0
        return seconds
