"""The behavioural half of an audit: the scan verdict of one model file (the adapter).

With `AuditSettings.scan_plan`, this is where the audit calls into `poisonguard.detect`. It loads the model through
the CLI's checked loader and runs `detect.scan.scan_into_report`, the code `poisonguard scan`
runs: the calibrated default verdict (`detect/verdict.py`) at the audit's budget.
"""

from __future__ import annotations

import functools

from poisonguard.audit.settings import AuditSettings


@functools.lru_cache(maxsize=4)
def _splits(data: str, seed: int, label_column: str | None):
    # A Ray worker scans many models on the same data: load it once per process. The label
    # column travels in the settings: a worker is another process, which the CLI's per-run
    # `--label-column` (data.options) does not reach.
    from poisonguard.cli.inputs import load_splits

    return load_splits(data, seed, label_column=label_column)


def scan_model(path: str, settings: AuditSettings):
    """Load `path` safely and scan it as `poisonguard scan` would; return (verdict block, the model's own Report).

    Raises UserError for a file that cannot be loaded as a classifier for `settings.data`.
    """
    from poisonguard.cli.inputs import fit_columns, load_checked_model
    from poisonguard.detect.scan import clean_share, scan_into_report
    from poisonguard.report import Report

    splits = fit_columns(_splits(settings.data, settings.seed, settings.label_column), path)
    settings = settings.resolved(splits.kind)
    from types import SimpleNamespace

    options = SimpleNamespace(arch_kwargs=settings.arch_kwargs, normalize=settings.normalize, input_size=settings.input_size,
                              binary_output=settings.binary_output)
    loaded, info = load_checked_model(path, splits, _arch_for(path, settings.arch), args=options)
    clean, capped_from = clean_share(splits, fraction=settings.clean_fraction, seed=settings.seed,
                                     cap=settings.max_clean_images)
    report = Report("scan")
    report.set("model", info)
    report.set("audit", {"settings": settings.to_dict()})
    verdict = scan_into_report(report, loaded, clean, settings.scan_plan(), input_shape=splits.input_shape,
                               num_classes=splits.num_classes, classes=list(splits.classes),
                               examples=splits.test.x[: splits.num_classes], data_label=settings.data,
                               clean_fraction=settings.clean_fraction, capped_from=capped_from)
    return verdict.to_dict(), report


def _arch_for(path: str, arch: str | None) -> str | None:
    """`arch` (--arch, or the manifest's) for a bare state dict; None where the file's own
    metadata.json names its architecture, so one zoo may mix both."""
    from pathlib import Path

    from poisonguard.models.files import read_metadata

    return None if read_metadata(Path(path)).get("architecture") else arch
