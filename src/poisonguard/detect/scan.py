"""One scan of one loaded model into a report: calibration, the verdict, each method's section.

`poisonguard scan` and each `poisonguard audit` worker call `scan_into_report`, so a model
audited in a zoo gets the same verdict, calibrated the same way, as the model scanned alone.
The caller loads the model and data (and writes trigger files, where it keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from poisonguard.detect.verdict import DEFAULT_METHODS, Verdict
from poisonguard.errors import UserError


@dataclass(frozen=True)
class ScanPlan:
    """What the verdict depends on besides the model and data.

    calibration: "auto" trains (or reads from the cache) `reference_models` clean references
    on the clean data; "none" leaves the verdict uncalibrated (it says so). `options` are the
    per-method constructor options (`detect.cli.detector_options`).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    fpr: float = 0.05
    statistic: str = "robust"
    calibration: str = "auto"
    reference_models: int = 4
    references: str = "builtin"  # "own": a table model's own --arch rebuilt (calibration.reference_architecture)
    seed: int = 0
    device: str = "auto"
    options: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calibration not in ("auto", "none"):
            raise ValueError(f"calibration must be 'auto' or 'none', got {self.calibration!r}")
        if self.reference_models < 2:
            raise ValueError(f"calibration needs at least 2 reference models, got {self.reference_models}")
        from poisonguard.detect.calibration import REFERENCE_CHOICES

        if self.references not in REFERENCE_CHOICES:
            raise ValueError(f"references must be one of {REFERENCE_CHOICES}, got {self.references!r}")


# What a scan takes where the user names nothing, by the kind of data (scan's CLI and each audit
# worker ask here, so a table audited in a zoo is scanned as `poisonguard scan` scans it alone).
# Tables: the references train on the clean part, and 5% of a few thousand rows is too few; an
# MLP trains in seconds and a two-class null needs a per-class spread (notes/issue-19.md).
KIND_DEFAULTS = {
    "image": {"clean_fraction": 0.05, "reference_models": 4},
    "tabular": {"clean_fraction": 0.25, "reference_models": 8},
}


def defaults_for(kind: str) -> dict:
    """{"methods", "clean_fraction", "reference_models"} a scan of `kind` data uses by default."""
    from poisonguard.detect.verdict import TABULAR_METHODS

    methods = TABULAR_METHODS if kind == "tabular" else DEFAULT_METHODS
    return {"methods": tuple(methods), **KIND_DEFAULTS.get(kind, KIND_DEFAULTS["image"])}


def _references(loaded, clean, input_shape, plan: ScanPlan):
    """The clean references, trained once here when a method contrasts with them (reference_contrast);
    calibration then fits its null on the same models. None when no method needs them."""
    from poisonguard.detect import DETECTORS
    from poisonguard.detect.calibration import reference_architecture, train_references, weights_metadata

    if not any(getattr(DETECTORS.get(m), "needs_references", False) for m in plan.methods):
        return None
    arch = reference_architecture(weights_metadata(loaded), input_shape, loaded.model, choice=plan.references)
    return train_references(clean, architecture=arch, n_models=plan.reference_models, seed=plan.seed,
                            device=plan.device)


# Images: the inversions take one pass over the clean images per epoch, so CIFAR-10's 5% (2,500)
# would cost 12x MNIST 5k's (200); 500 keeps a CIFAR scan in minutes on a CPU. Tables are not
# capped (their references train on the clean part).
MAX_CLEAN_IMAGES = 500


def clean_share(splits, *, fraction: float, seed: int, cap: int | None = None):
    """(the defender's clean data: `fraction` of each class of the training part, images capped at
    `cap` (default MAX_CLEAN_IMAGES) in all, balanced; the share's size before the cap, or None
    when it was not capped)."""
    from poisonguard.data import per_class_subset

    cap = cap or MAX_CLEAN_IMAGES
    clean = per_class_subset(splits.train, fraction=fraction, seed=seed)
    if splits.kind != "image" or len(clean) <= cap:
        return clean, None
    return per_class_subset(clean, per_class=max(1, cap // splits.num_classes), seed=seed), len(clean)


def scan_into_report(report, loaded, clean, plan: ScanPlan, *, input_shape, num_classes, classes, examples,
                     data_label: str, clean_fraction: float | None, capped_from: int | None = None) -> Verdict:
    """Scan `loaded.model` with `plan`; set the report's calibration, scan and verdict, add each method's section.

    `clean` is the defender's clean ImageData, or None (data-free: uncalibrated, data-free methods);
    `capped_from`, the size of the clean share before the scan's cap on images, when it was capped.
    Returns the Verdict; `verdict.detections` holds the Detections (masks, triggers).
    """
    from poisonguard.detect.calibration import calibrate_for
    from poisonguard.detect.report import add_to_report, add_verdict
    from poisonguard.detect.verdict import scan_verdict

    from poisonguard.detect.calibration import judged_per_class

    methods = list(plan.methods)
    calibration, references = None, None
    if clean is not None and plan.calibration == "auto" and plan.statistic != "paper":
        if any(judged_per_class(m, num_classes) for m in methods) and plan.reference_models < 3:  # before minutes of training, not after
            raise UserError(f"{'a two-class model' if num_classes < 3 else 'reference_contrast'} is judged per class "
                            f"against the references, whose spread needs at least 3 of them; got "
                            f"--reference-models {plan.reference_models}")
        references = _references(loaded, clean, input_shape, plan)
        calibration, block = calibrate_for(loaded, clean, input_shape, methods=methods, n_models=plan.reference_models,
                                           fpr=plan.fpr, seed=plan.seed, device=plan.device, options=plan.options,
                                           data_id=f"{data_label}:{clean_fraction}:{plan.seed}", models=references,
                                           statistic=plan.statistic, references=plan.references)
        report.set("calibration", block)
    skipped: list[dict[str, Any]] = []
    verdict = scan_verdict(
        loaded.model, clean, methods=methods, fpr=plan.fpr, statistic=plan.statistic, calibration=calibration,
        seed=plan.seed, device=plan.device, input_shape=input_shape, num_classes=num_classes, options=plan.options,
        classes=classes, data_info={"clean_fraction": None if clean is None else clean_fraction, "data": data_label,
                                    **({"capped_from": capped_from} if capped_from else {})},
        on_skip=lambda name, exc: skipped.append({"method": name, "error": str(exc)}), references=references)
    report.set("scan", {"methods": [d.method for d in verdict.detections], "skipped": skipped, "data": data_label,
                        "clean_images": 0 if clean is None else len(clean),
                        "clean_fraction": None if clean is None else clean_fraction, "seed": plan.seed,
                        "clean_images_capped_from": capped_from})
    add_verdict(report, verdict, classes)
    for order, det in enumerate(verdict.detections):
        add_to_report(report, det, examples, classes, order=20 + order, verdict=verdict)
    return verdict
