"""The behavioural half of an audit: the scan verdict of one model file (the adapter).

This is the only place the audit calls into `poisonguard.detect`. It loads the model through
the CLI's checked loader and runs the scan `poisonguard scan` runs by default (Neural Cleanse,
Wang et al., 2019), at the audit's budget. When detect/ gains the calibrated default verdict,
`verdict_block` is the one line to switch.
"""

from __future__ import annotations

import functools
from typing import Any

from poisonguard.audit.settings import AuditSettings


@functools.lru_cache(maxsize=4)
def _splits(data: str, seed: int):
    # A Ray worker scans many models on the same data: load it once per process.
    from poisonguard.cli.inputs import load_splits

    return load_splits(data, seed)


def verdict_block(detections: list) -> dict[str, Any]:
    """report.json["verdict"] from the scan's detections (DESIGN.md keys).

    Placeholder until detect/ provides the calibrated default verdict: backdoored when any
    method flags a class; `score` is the largest anomaly index; no calibrated false-positive rate.
    """
    targets = sorted({c for det in detections for c in det.flagged_classes})
    score = max((max(det.anomaly_index, default=0.0) for det in detections), default=0.0)
    return {"backdoored": bool(targets), "targets": targets, "score": float(score), "false_positive_rate": None,
            "evidence": [{"method": det.method, "flagged_classes": list(det.flagged_classes),
                          "threshold": det.threshold} for det in detections]}


def _detector(settings: AuditSettings):
    from poisonguard.detect import DETECTORS

    options: dict[str, Any] = {"seed": settings.seed, "device": settings.device}
    if settings.threshold is not None:
        options["threshold"] = settings.threshold
    if settings.epochs is not None:
        options["epochs"] = settings.epochs
    if settings.steps_per_epoch is not None:
        options["steps_per_epoch"] = settings.steps_per_epoch
    return DETECTORS.get(settings.method)(**options)


def scan_model(path: str, settings: AuditSettings):
    """Load `path` safely and scan it; return (verdict block, the model's own scan Report).

    Raises UserError for a file that cannot be loaded as a classifier for `settings.data`.
    """
    from poisonguard.cli.inputs import load_checked_model
    from poisonguard.data import per_class_subset
    from poisonguard.detect.report import add_to_report
    from poisonguard.report import Report

    splits = _splits(settings.data, settings.seed)
    loaded, info = load_checked_model(path, splits, settings.arch)
    clean = per_class_subset(splits.train, fraction=settings.clean_fraction, seed=settings.seed)
    det = _detector(settings).detect(loaded.model, clean)
    report = Report("scan")
    report.set("model", info)
    report.set("scan", {"methods": [det.method], "data": settings.data, "clean_images": len(clean),
                        "clean_fraction": settings.clean_fraction, "seed": settings.seed, "audit_settings": settings.to_dict()})
    add_to_report(report, det, splits.test.x[: splits.num_classes], list(splits.classes), order=20)
    verdict = verdict_block([det])
    report.set("verdict", verdict)
    return verdict, report
