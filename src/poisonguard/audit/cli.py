"""`poisonguard audit DIR|MANIFEST --data D --out OUT [--workers N] [--address ADDR] [--timeout S]`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from poisonguard.errors import EXIT_INCOMPLETE, UserError

log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, positive_float, positive_int

    p = sub.add_parser("audit", help="audit a model zoo: every file's safety, then each model's scan verdict, in parallel on Ray, resumable")
    p.add_argument("target", help="folder searched for model files (recognised by their bytes), or a manifest "
                                  "(JSON lines or CSV: path[,arch][,data] per model)")
    p.add_argument("--data", required=True, help="clean data for the scans (a manifest line's 'data' overrides it)")
    p.add_argument("--arch", default=None, help="architecture of bare state dicts (a manifest line's 'arch' overrides it)")
    from poisonguard.cli.options import add_model_input_options

    add_model_input_options(p)
    p.add_argument("--out", required=True, help="folder for audit.db, report.json, report.html, audit.sarif and models/<key>/; "
                                                "an audit started again with the same --out resumes")
    p.add_argument("--workers", type=int, default=None, help="models scanned at once (default: the CPU count, or the cluster's)")
    p.add_argument("--address", default=None, help="HOST:PORT of an existing Ray cluster's head (default: a local Ray instance)")
    p.add_argument("--timeout", type=positive_float, default=1800.0, help="seconds a model may take before it is recorded failed (default 1800)")
    p.add_argument("--retry-failed", action="store_true", help="scan again the models an earlier run recorded as failed")
    from poisonguard.detect.cli import add_budget_options, add_verdict_options

    add_verdict_options(p.add_argument_group("verdict (as `poisonguard scan`)"))
    g = p.add_argument_group("scan budget (per model)")
    add_budget_options(g)
    g.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="mini-batches per inversion epoch (default: one pass over the clean images)")
    add_common(p)
    p.set_defaults(func=cmd_audit)


def _out(path: str, target: Path) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if target.is_dir() and out.resolve() == target.resolve():
        raise UserError(f"--out {out} is the audited folder; choose another folder (it may lie inside it)")
    if target.is_file() and out.resolve() == target.resolve().parent:
        raise UserError(f"--out {out} holds the manifest {target.name}; choose another folder")
    return out


def cmd_audit(args) -> int:
    from poisonguard.audit.discover import discover
    from poisonguard.audit.report import audit_block, exit_code, write_reports
    from poisonguard.audit.run import run_audit
    from poisonguard.audit.runner import RayExecutor, check_address
    from poisonguard.audit.worker import audit_one

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    target = Path(args.target).expanduser()
    out = _out(args.out, target)
    from poisonguard.cli.inputs import guard_out

    # another command's outputs are never replaced without --force; an audit's own folder is
    # resumed whatever the zoo holds now. The zoo is not named as an input: --out may lie inside
    # it (discovery skips it), and `_out` has kept it from being the zoo or the manifest's folder.
    guard_out(args.out, command="audit", force=args.force, match_inputs=False)
    if args.address:
        check_address(args.address)  # before any work, so a typo costs seconds
    if args.text_column:
        raise UserError(TEXT_REFUSED.format(data=args.data))
    if args.clean_fraction is not None and args.clean_fraction <= 0:
        raise UserError("--clean-fraction must be above 0")
    items = discover(target, exclude=out)
    check_manifest_code(items, args.arch, target)
    from poisonguard.detect.cli import methods_option

    # Left None, the methods, the clean share and the references are scan's defaults for each
    # model's kind of data (images or tables), which the worker knows once it has the data.
    methods = None if args.method is None else tuple(methods_option(args.method))
    from poisonguard.cli.options import model_options

    model_options(args)  # a malformed --arch-kwargs / --normalize / --input-size fails here, before Ray starts
    try:
        settings = _settings(args, methods)
    except ValueError as exc:  # a value argparse's types let through (--fpr 1, --reference-models 1)
        raise UserError(str(exc)) from exc
    workers = args.workers or (None if args.address else (os.cpu_count() or 1))

    def make_executor():  # only called when something is left to do
        n = workers or _cluster_cpus(args.address)  # an existing cluster: as many workers as it has CPUs
        return RayExecutor(audit_one, workers=n, address=args.address, timeout=args.timeout)

    from poisonguard.audit.store import only_writer

    with only_writer(out):  # one audit at a time writes a folder
        try:
            outcome = run_audit(items, settings, out, make_executor=make_executor, retry_failed=args.retry_failed,
                                before_run=check_names, while_starting=check_data_loads)
        except RuntimeError as exc:
            print(f"poisonguard: audit incomplete: {exc}", file=sys.stderr)
            return EXIT_INCOMPLETE
        root = target if target.is_dir() else target.parent
        html = write_reports(out, outcome.rows, resumed=outcome.resumed, root=root, settings=settings.to_dict(),
                             extra={"workers": workers, "address": args.address, "timeout": args.timeout,
                                    "scanned_this_run": outcome.scanned, "seconds": outcome.seconds})
        print(json.dumps({"report": str(html), "sarif": str(out / "audit.sarif"), "models": len(outcome.rows),
                          "counts": audit_block(outcome.rows, outcome.resumed)["counts"], "resumed": outcome.resumed, "scanned": outcome.scanned,
                          "seconds": outcome.seconds}))
        return exit_code(outcome.rows)


def _settings(args, methods):
    """The audit-wide settings; a data file and an architecture's code file as absolute paths,
    so Ray workers started in another folder (a cluster's head) find them, and so the same
    file typed two ways is one setting."""
    from poisonguard.audit.settings import AuditSettings, absolute_if_path
    from poisonguard.models.arch import absolute_spec

    return AuditSettings(
        data=absolute_if_path(args.data), arch=absolute_spec(args.arch), arch_kwargs=args.arch_kwargs,
        normalize=args.normalize, input_size=args.input_size, binary_output=args.binary_output,
        label_column=args.label_column, methods=methods, fpr=args.fpr, statistic=args.statistic,
        calibration=args.calibration, reference_models=args.reference_models,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, steps=args.steps, clean_fraction=args.clean_fraction,
        max_clean_images=args.max_clean_images, threshold=args.threshold, seed=args.seed, device=args.device)


def check_manifest_code(items, typed: str | None, manifest: Path) -> None:
    """A manifest line may name a built-in, torchvision or timm architecture, but code to run
    (`file.py:callable`) only when the user typed that same spec as --arch: a manifest shipped
    with a downloaded zoo must not choose what Python runs, as metadata.json never does."""
    from poisonguard.models.arch import absolute_spec, spec_kind

    allowed = absolute_spec(typed)
    for item in items:
        if item.arch and spec_kind(item.arch) == "code" and absolute_spec(item.arch) != allowed:
            raise UserError(f"{manifest}: the line for {item.path} names code to run as its architecture "
                            f"({item.arch}); a manifest never chooses code: type it as --arch to allow it")


TEXT_REFUSED = ("{data}: audit scans image and table models; scan each text model's folder with "
                "`poisonguard scan FOLDER --data ...`")


def check_names(jobs) -> None:
    """UserError (exit 2, in a moment, before Ray starts) for an unknown architecture or data set name.

    Otherwise a typo would surface as every model failing, one worker at a time.
    """
    from poisonguard.data import check_spec
    from poisonguard.models import ARCHITECTURES
    from poisonguard.models.arch import spec_kind

    for arch in sorted({j.settings.arch for j in jobs if j.settings.arch}):
        if spec_kind(arch) == "builtin":  # else torchvision:NAME, timm:NAME or the user's file.py:callable
            ARCHITECTURES.get(arch)
    for data in sorted({j.settings.data for j in jobs if j.item.is_model}):
        check_spec(data)


def check_data_loads(jobs) -> None:
    """UserError (exit 2, before any model is scanned) for data that does not load; run while Ray starts.

    Text is refused here: a text model is a folder (weights, model.json, tokenizer.json) that
    the audit's file discovery would take apart; `poisonguard scan FOLDER` scans one.
    """
    from poisonguard.cli.inputs import load_splits
    from poisonguard.data.text import is_text_source

    for data, seed, label in sorted({(j.settings.data, j.settings.seed, j.settings.label_column or "")
                                     for j in jobs if j.item.is_model}):
        if is_text_source(data, None):
            raise UserError(TEXT_REFUSED.format(data=data))
        load_splits(data, seed, label_column=label or None)


def _cluster_cpus(address: str) -> int:
    """Worker count for an existing cluster when --workers is not given: its CPU count."""
    import ray

    ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        ray.shutdown()
