"""What an audit result depends on besides the file's bytes: the scan settings and their hash."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from poisonguard import __version__


@dataclass(frozen=True)
class AuditSettings:
    """The behavioural scan's settings for one model (the audit-wide ones, then the manifest's).

    The scan is `poisonguard scan`'s: `methods`, the verdict at false-positive rate `fpr`,
    calibrated on `reference_models` clean references (`calibration` "auto"; computed once per
    architecture and data and cached, so the workers share it) or not ("none"). `epochs`,
    `steps_per_epoch`, `steps`, `clean_fraction` and `max_clean_images` are the scan budget;
    `arch` and `data` may differ per model (manifest), `arch_kwargs`, `normalize`,
    `input_size` and `binary_output` (the options every model command takes) do not; `label_column` names a
    table's labels.
    `methods`, `clean_fraction` and `reference_models` left None take scan's default for the
    kind of data each model is scanned on (`detect.scan.defaults_for`: images or tables),
    filled in by `resolved` once the worker has loaded that data. The hash of all of it (and
    the poisonguard version) is half of a result's key in `audit.db`: change any and the model
    is scanned again.
    """

    data: str = "mnist5k"
    arch: str | None = None
    arch_kwargs: str | None = None  # as typed: --arch-kwargs, --normalize, --input-size (cli.options)
    normalize: str | None = None
    input_size: str | None = None
    binary_output: str | None = None  # --binary-output: a two-class model's one answer per input
    label_column: str | None = None
    methods: tuple[str, ...] | None = None
    fpr: float = 0.05
    statistic: str = "robust"
    calibration: str = "auto"
    reference_models: int | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    steps: int | None = None
    clean_fraction: float | None = None
    max_clean_images: int | None = None  # None: detect.scan.MAX_CLEAN_IMAGES
    threshold: float | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "steps", "max_clean_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.reference_models is not None and self.reference_models < 2:
            raise ValueError(f"calibration needs at least 2 reference models, got {self.reference_models}")
        if self.clean_fraction is not None and not 0 < self.clean_fraction <= 1:
            raise ValueError(f"clean_fraction must lie in (0, 1], got {self.clean_fraction}")
        if not 0 < self.fpr < 1:
            raise ValueError(f"fpr must lie in (0, 1), got {self.fpr}")
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(self.methods))

    def resolved(self, kind: str) -> "AuditSettings":
        """These settings with scan's defaults for `kind` data where they were left None."""
        from poisonguard.detect.scan import defaults_for

        defaults = defaults_for(kind)
        return replace(self, **{name: defaults[name] for name in ("methods", "clean_fraction", "reference_models")
                                if getattr(self, name) is None})

    def scan_plan(self):
        """The `detect.scan.ScanPlan` these (`resolved`) settings ask for (the per-method budget options included)."""
        from poisonguard.detect.cli import detector_options
        from poisonguard.detect.scan import ScanPlan

        if self.methods is None or self.reference_models is None:
            raise ValueError("the settings name no methods or references yet: call resolved(kind) with the data's kind")
        options = detector_options(list(self.methods), threshold=self.threshold, epochs=self.epochs, steps=self.steps,
                                   steps_per_epoch=self.steps_per_epoch)
        return ScanPlan(methods=self.methods, fpr=self.fpr, statistic=self.statistic, calibration=self.calibration,
                        reference_models=self.reference_models, seed=self.seed, device=self.device, options=options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_model(self, *, arch: str | None = None, data: str | None = None) -> "AuditSettings":
        """These settings with a manifest line's own architecture and data, where it gives them."""
        return replace(self, arch=arch or self.arch, data=data or self.data)

    def digest(self) -> str:
        """A stable hash of what a result depends on; `device` is left out (it does not change the
        verdict's meaning). A data file or folder counts by its contents, not its name: rewritten
        under the same name it is other data (its results are redone); typed another way it is
        the same."""
        fields = {k: v for k, v in self.to_dict().items() if k != "device"}
        fields["data"] = data_identity(self.data)
        text = json.dumps({"version": __version__, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def absolute_if_path(spec: str) -> str:
    """An existing file or folder's absolute path (links kept); a built-in data set's name as is."""
    import os
    from pathlib import Path

    path = Path(spec).expanduser()
    return os.path.abspath(path) if path.exists() else spec


def data_identity(spec: str) -> str:
    """What the data named by `spec` is: the sha256 of a file, the listing of a folder (names,
    sizes, times), or a built-in set's name."""
    from pathlib import Path

    path = Path(spec).expanduser()
    if not path.exists():
        return f"name:{spec}"
    stat = path.stat()
    return _content_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _content_identity(path: str, size: int, mtime_ns: int) -> str:  # size and time: a rewrite is read again
    from pathlib import Path

    from poisonguard.cli.inputs import fingerprint

    return fingerprint(Path(path))
