"""`poisonguard scan MODEL --data D|none --method neural-cleanse,tabor,deepinspect --out DIR`."""

from __future__ import annotations

import json
import logging

from poisonguard.errors import UserError

log = logging.getLogger(__name__)



def __getattr__(name: str):
    """`DEFAULT_METHODS`: what `scan` runs without --method (the verdict's set; `poisonguard.scan` follows it).

    Read lazily so building the parser does not import torch.
    """
    if name == "DEFAULT_METHODS":
        from poisonguard.detect.verdict import DEFAULT_METHODS

        return DEFAULT_METHODS
    raise AttributeError(name)


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_model, positive_int
    from poisonguard.detect.calibration import REFERENCE_CHOICES

    p = sub.add_parser("scan", help="is this model backdoored? one calibrated verdict from several trigger-inversion methods")
    add_model(p)
    p.add_argument("--data", required=True, help="clean data: mnist5k, cifar10, a path ... or 'none' (data-free: uncalibrated, data-free methods only)")
    add_verdict_options(p)
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when a backdoor is found")
    p.add_argument("--references", choices=REFERENCE_CHOICES, default="builtin",
                   help="a model loaded with your own --arch (or a library's): builtin (default) trains the built-in "
                        "mlp, mnist_cnn or resnet20 as its clean references; own rebuilds your architecture, keeping "
                        "its buffers (measured: on tables fewer false positives on a small table, more on larger "
                        "ones; on images more backdoors found and more clean models flagged; README)")
    add_budget_options(p)
    p.add_argument("--prune-after", type=positive_int, default=None, help="drop the least promising classes after this many epochs (faster; may add false flags, since pruned classes keep unfinished masks)")
    p.add_argument("--input-shape", default=None, help="C,H,W for --data none when the model has no metadata.json")
    p.add_argument("--num-classes", type=positive_int, default=None, help="class count for --data none without metadata.json")
    p.add_argument("--out", required=True, help="folder for report.json, report.html, trigger_<class>.npz")
    add_common(p)
    p.set_defaults(func=cmd_scan)


def add_verdict_options(p) -> None:
    """What the verdict rests on (`scan` and `audit` share them)."""
    from poisonguard.cli import options

    options.add_verdict_options(p, method_default=None,
                                method_help="comma-separated: neural-cleanse, tabor, deepinspect, feature-re "
                                            "(default: the verdict's set neural-cleanse,deepinspect,feature-re)",
                                fpr_type=options.probability, fpr_default=0.05,
                                fpr_help="false-positive rate the verdict is set to (default 0.05)")
    p.add_argument("--statistic", choices=("robust", "lower_mad", "paper"), default="robust",
                   help="robust: calibrated trimmed leave-one-out index of log sizes (default); lower_mad: the "
                        "calibrated log-space lower-half MAD (the default before calibration version 5; 5 classes or more); "
                        "paper: each paper's own rule")
    p.add_argument("--calibration", choices=("auto", "none"), default="auto",
                   help="auto: calibrate on clean reference models trained from --data (cached); none: uncalibrated")
    p.add_argument("--reference-models", type=options.positive_int, default=None,
                   help="clean reference models for calibration (default 4; 8 for a table, where they are cheap)")


def add_budget_options(p) -> None:
    """The scan's budget per model (`scan` and `audit` share them)."""
    from poisonguard.cli.options import positive_float, positive_int, probability

    p.add_argument("--clean-fraction", type=probability, default=None,
                   help="share of the training part used as clean data (default 0.05; 0.25 for a table, whose "
                        "reference models train on it)")
    p.add_argument("--max-clean-images", type=positive_int, default=None,
                   help="cap on the clean images the scan uses, balanced over classes (default 500, "
                        "detect.scan.MAX_CLEAN_IMAGES; each inversion epoch is one pass over them)")
    p.add_argument("--epochs", type=positive_int, default=None, help="inversion epochs for neural-cleanse / tabor (default 40)")
    p.add_argument("--steps", type=positive_int, default=None, help="generator steps for deepinspect / feature-re")
    p.add_argument("--threshold", type=positive_float, default=None,
                   help="--statistic paper: anomaly index above which a class is flagged (default 2, the papers' ~95%% level)")


def methods_option(text: str | None) -> list[str]:
    """--method as registry names; None: the verdict's default set."""
    from poisonguard.detect.verdict import DEFAULT_METHODS

    return list(DEFAULT_METHODS) if text is None else _methods(text)


def _methods(text: str) -> list[str]:
    from poisonguard.cli.options import method_list
    from poisonguard.detect import DETECTORS

    return method_list(text, DETECTORS)


def _shape(text: str | None):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"--input-shape must be C,H,W, got {text!r}") from exc
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    from poisonguard.cli.inputs import check_input_shape

    return check_input_shape(shape, "--input-shape")


def detector_options(names: list[str], *, threshold: float | None = None, epochs: int | None = None,
                     prune_after: int | None = None, steps: int | None = None,
                     steps_per_epoch: int | None = None) -> dict[str, dict]:
    """Per-method keyword options: each method gets only the budget options it takes."""
    options: dict[str, dict] = {}
    for name in names:
        o = {}
        if threshold is not None:
            o["threshold"] = threshold
        if name in ("neural_cleanse", "tabor"):
            o.update({k: v for k, v in (("epochs", epochs), ("prune_after", prune_after),
                                         ("steps_per_epoch", steps_per_epoch)) if v})
        elif name in ("deepinspect", "feature_re") and steps:
            o["steps"] = steps
        options[name] = o
    return options


def cmd_scan(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.scan(args)
    from poisonguard.cli.inputs import check_input_shape, check_num_classes, data_inputs, guard_out, load_checked_model, load_splits, model_inputs
    from poisonguard.detect import DETECTORS
    from poisonguard.detect.report import write_triggers
    from poisonguard.detect.scan import ScanPlan, clean_share, defaults_for, scan_into_report
    from poisonguard.errors import EXIT_FINDING, EXIT_OK
    from poisonguard.models import load_model
    from poisonguard.report import Report

    out = guard_out(args.out, command="scan", force=args.force,
                    inputs=[*model_inputs(args.model), *(() if args.data.strip().lower() == "none" else data_inputs(args.data))])
    methods = methods_option(args.method)
    _shape(args.input_shape)  # a typo or a 30000x30000 shape fails before the model is read
    data_free = args.data.strip().lower() == "none"
    report = Report("scan")
    capped_from = None
    if data_free:
        needing = [m for m in methods if DETECTORS.get(m).needs_data]
        if args.method is not None and needing:
            raise UserError(f"--data none: {', '.join(needing)} needs clean data; use --method deepinspect or give --data")
        methods = [m for m in methods if not DETECTORS.get(m).needs_data]
        from poisonguard.cli.options import model_options

        loaded = load_model(args.model, arch=args.arch, input_shape=_shape(args.input_shape), num_classes=args.num_classes,
                            **model_options(args))
        shape = _shape(args.input_shape) or (tuple(loaded.input_shape) if loaded.input_shape else None)
        k = args.num_classes or loaded.metadata.get("num_classes")
        if shape is None:
            raise UserError("--data none: the input shape is unknown (no metadata.json); give --input-shape C,H,W")
        shape = check_input_shape(shape, "--data none: the input shape")
        if k is not None:
            k = check_num_classes(k, "--data none: the number of classes")
        clean, classes, examples = None, loaded.classes, None
        info = {"path": args.model, "sha256": loaded.sha256, "num_classes": k, "input_shape": list(shape),
                "format": loaded.format, "architecture": loaded.metadata.get("architecture")}
    else:
        splits = load_splits(args.data, args.seed, model=args.model)
        loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
        shape, k, classes = splits.input_shape, splits.num_classes, list(splits.classes)
        defaults = defaults_for(splits.kind)
        args.clean_fraction = args.clean_fraction or defaults["clean_fraction"]
        args.reference_models = args.reference_models or defaults["reference_models"]
        if args.method is None:
            methods = list(defaults["methods"])
        clean, capped_from = clean_share(splits, fraction=args.clean_fraction, seed=args.seed,
                                         cap=args.max_clean_images)
        examples = splits.test.x[: max(k, 1)]
    report.set("model", info)
    if args.statistic == "lower_mad" and k is not None:  # before minutes of inversion, not after
        from poisonguard.detect.verdict import check_lower_mad_classes

        check_lower_mad_classes(int(k))
    options = detector_options(methods, threshold=args.threshold, epochs=args.epochs, prune_after=args.prune_after,
                               steps=args.steps)
    plan = ScanPlan(methods=tuple(methods), fpr=args.fpr, statistic=args.statistic, calibration=args.calibration,
                    reference_models=args.reference_models or 4, references=args.references, seed=args.seed,
                    device=args.device, options=options)
    verdict = scan_into_report(report, loaded, clean, plan, input_shape=shape, num_classes=k, classes=classes,
                               examples=examples, data_label=args.data,
                               clean_fraction=None if clean is None else args.clean_fraction,
                               capped_from=capped_from)
    summary, taken = [], set()
    for det in verdict.detections:
        flagged_here = [e["class"] for e in verdict.method_rows(det.method) if e["flagged"]]
        triggers = write_triggers(det, out, taken=taken, classes=flagged_here)
        summary.append({"method": det.method, "flagged_classes": flagged_here, "seconds": det.seconds,
                        "triggers": [str(p) for p in triggers]})
    path = report.write(out)
    print(json.dumps({"report": str(path), "verdict": report.data["verdict"], "detections": summary}))
    return EXIT_FINDING if verdict.backdoored and not args.exit_zero else EXIT_OK
