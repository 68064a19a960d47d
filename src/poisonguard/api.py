"""The Python API: any `nn.Module` and plain tensors, one call each (as in Captum and torchattacks).

    import poisonguard
    model = poisonguard.load_model("model.onnx").model          # or any nn.Module of your own
    verdict = poisonguard.scan(model, x_clean, y_clean)         # the verdict; .detections per method
    fix = poisonguard.repair(model, x_clean, y_clean, method="refit")   # results.Repair, .model
    cert = poisonguard.certify(model, x_test, y_test, sigma=0.25, n=1000)  # results.Certification

Images are float tensors (N, C, H, W) in [0, 1] and labels int (N,), exactly what the command
line feeds a model; the results are the objects the CLI's reports are made of. ScriptModules,
`ExportedProgram`s and their `.module()` are turned into eager modules first
(`models.handle.as_eager`); the caller's model is never changed.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Sequence

import torch
from torch import nn

from poisonguard.errors import UserError


def _data(x: Any, y: Any, classes: Sequence[str] | None = None):
    from poisonguard.data import ImageData

    try:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:  # a DataLoader, a Dataset, a list of tensors
        raise UserError("images and labels must be tensors or arrays, (N, C, H, W) floats in [0, 1] and (N,) "
                        f"integers (e.g. torch.cat over a DataLoader's batches), got {type(x).__name__}") from exc
    if x.ndim == 2:  # rows of a table, or token ids of texts
        raise UserError(f"this Python API takes images (N, C, H, W); got {tuple(x.shape)}, rows or token ids. Tables "
                        "and text run on the command line (`poisonguard scan MODEL --data table.csv --label-column "
                        "NAME`, `--text-column T` for text), which encodes them and trains their reference models")
    if x.ndim != 4 or not x.is_floating_point():
        raise UserError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise UserError(f"labels must be an integer tensor (N,), got {y.dtype} {tuple(y.shape)}")
    k = len(classes) if classes is not None else int(y.max()) + 1 if len(y) else 0
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    return ImageData(x.float().contiguous(), y.long(), names)


def _model(model: Any, x: torch.Tensor) -> nn.Module:
    from poisonguard.models.handle import as_eager

    if hasattr(model, "model") and hasattr(model, "save_like"):  # a LoadedModel
        model = model.model
    return as_eager(model, torch.as_tensor(x)[:2].float())


def load_model(path: str, *, arch: str | None = None, **options: Any):
    """`models.load_model`: a `LoadedModel` (`.model`, `.format`, `.save_like(...)`) from any supported file.

    `arch` may name your own code (`"file.py:callable"`): you typed it, so it runs.
    """
    from pathlib import Path

    from poisonguard.models import load_model as _load

    if Path(path).is_dir() and (Path(path) / "tokenizer.json").is_file():
        raise UserError(f"{path} is a text model's folder: load it with "
                        "poisonguard.models.text_files.load_text_model(path, arch=...)")
    return _load(path, arch=arch, **options)


def scan(model: Any, x_clean: Any, y_clean: Any, *, methods: Sequence[str] | None = None, classes: Sequence[str] | None = None,
         fpr: float = 0.05, statistic: str = "robust", calibration: Any = None, seed: int = 0, device: str = "auto",
         **options: Any):
    """The scan verdict (`detect.verdict.Verdict`) of `model` from each detector in `methods`.

    `methods` defaults to the scan command's default set. `options` are hyperparameters: a
    shared keyword goes to every selected method that takes it (`epochs=2` reaches Neural
    Cleanse and TABOR, not DeepInspect), a method's name takes a dict of its own
    (`deepinspect={"steps": 100}`). `calibration` is a `detect.calibration.Calibration`
    (e.g. from `calibrate_from_models` on clean models of your own); without it the verdict
    says it is uncalibrated. `verdict.detections` holds one `results.Detection` per method,
    in order; `verdict.to_dict()` is what `poisonguard scan` writes as report.json["verdict"].
    """
    from poisonguard.detect.verdict import route_options, scan_verdict

    if isinstance(methods, str):  # "neural_cleanse" became the methods "n", "e", ...
        methods = [m for m in methods.split(",") if m.strip()]
    if calibration is not None and not hasattr(calibration, "null_for"):
        raise UserError("calibration must be a Calibration (e.g. from detect.calibration.calibrate_from_models) or "
                        f"None; got {calibration!r} (the CLI's 'auto' trains references: `poisonguard scan`)")
    data = _data(x_clean, y_clean, classes)
    net = _model(model, data.x)
    names = list(methods) if methods is not None else default_scan_methods()
    return scan_verdict(net, data, methods=names, fpr=fpr, statistic=statistic, calibration=calibration, seed=seed,
                        device=device, input_shape=data.input_shape, num_classes=data.num_classes,
                        options=route_options(names, options), classes=list(data.classes))


def default_scan_methods() -> list[str]:
    """The methods `poisonguard scan` runs without --method (one place, so the API follows the CLI)."""
    from poisonguard.detect import cli as detect_cli

    default = getattr(detect_cli, "DEFAULT_METHODS", None)
    if default:
        return list(default)
    return ["neural_cleanse"]


def repair(model: Any, x_clean: Any, y_clean: Any, *, method: str = "refit", trigger: Any = None,
           x_test: Any = None, y_test: Any = None, classes: Sequence[str] | None = None, seed: int = 0,
           device: str = "auto", **options: Any):
    """Remove a backdoor from a copy of `model` with `method` (fine_pruning, refit, wild, unlearn).

    `options` are the method's hyperparameters. Returns `results.Repair`; the repaired copy
    is `.model` (write it back in a file's format with `LoadedModel.save_like`).
    """
    from poisonguard.repair import REPAIRERS

    data = _data(x_clean, y_clean, classes)
    test = _data(x_test, y_test, data.classes) if x_test is not None else None
    net = _model(model, data.x)
    repairer = REPAIRERS.get(method)(seed=seed, device=device, **options)
    return repairer.repair(net, data, trigger=trigger, test=test)


def certify(model: Any, x: Any, y: Any, *, sigma: float = 0.25, n: int = 10_000, n0: int = 100, alpha: float = 0.001,
            classes: Sequence[str] | None = None, seed: int = 0, device: str = "auto", **options: Any):
    """Randomized-smoothing certificates (Cohen et al., 2019) for images x with labels y: `results.Certification`."""
    from poisonguard.certify.smoothing import RandomizedSmoothing

    data = _data(x, y, classes)
    net = _model(model, data.x)
    return RandomizedSmoothing(sigma=sigma, n=n, n0=n0, alpha=alpha, seed=seed, device=device, **options).certify(net, data)


class _CallablePackage(types.ModuleType):
    """A package that is also the API function of its name: `poisonguard.repair` is the
    `poisonguard/repair/` package (`from poisonguard.repair import REPAIRERS` works) and
    `poisonguard.repair(model, x, y)` calls `api.repair`."""

    def __call__(self, *args: Any, **kwargs: Any):
        return globals()[self.__name__.rsplit(".", 1)[-1]](*args, **kwargs)


def callable_package(module_name: str) -> None:
    """Make the package `module_name` (poisonguard.repair, poisonguard.certify) callable as its API function."""
    sys.modules[module_name].__class__ = _CallablePackage
