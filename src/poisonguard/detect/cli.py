"""`poisonguard scan MODEL --data D|none --method neural-cleanse,tabor,deepinspect --out DIR`."""

from __future__ import annotations

import json
import logging

from poisonguard.errors import UserError

log = logging.getLogger(__name__)

# What `scan` runs without --method; `poisonguard.scan` (the Python API) follows it.
DEFAULT_METHODS = ("neural_cleanse",)


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_model, positive_float, positive_int, probability

    p = sub.add_parser("scan", help="is this model backdoored? reverse-engineer triggers (Neural Cleanse, TABOR, DeepInspect)")
    add_model(p)
    p.add_argument("--data", required=True, help="clean data: mnist5k, cifar10, a path ... or 'none' (data-free: deepinspect only)")
    p.add_argument("--method", default=",".join(DEFAULT_METHODS), help="comma-separated: neural-cleanse, tabor, deepinspect")
    p.add_argument("--clean-fraction", type=probability, default=0.05, help="share of the training part used as clean data (default 0.05)")
    p.add_argument("--epochs", type=positive_int, default=None, help="inversion epochs for neural-cleanse / tabor (default 40)")
    p.add_argument("--steps", type=positive_int, default=None, help="generator steps for deepinspect (default 300)")
    p.add_argument("--threshold", type=positive_float, default=None,
                   help="anomaly index above which a class is flagged (default 2, the papers' ~95%% level)")
    p.add_argument("--prune-after", type=positive_int, default=None, help="drop the least promising classes after this many epochs (faster; may add false flags, since pruned classes keep unfinished masks)")
    p.add_argument("--input-shape", default=None, help="C,H,W for --data none when the model has no metadata.json")
    p.add_argument("--num-classes", type=positive_int, default=None, help="class count for --data none without metadata.json")
    p.add_argument("--out", required=True, help="folder for report.json, report.html, trigger_<class>.npz")
    add_common(p)
    p.set_defaults(func=cmd_scan)


def _methods(text: str) -> list[str]:
    from poisonguard.detect import DETECTORS

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--method is empty")
    for name in names:
        DETECTORS.get(name)  # unknown name -> UserError listing the known ones
    return [DETECTORS.normalise(n) for n in dict.fromkeys(names)]


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


def build_detector(name: str, args):
    from poisonguard.detect import DETECTORS

    cls = DETECTORS.get(name)
    options = {"seed": args.seed, "device": args.device}
    if args.threshold is not None:
        options["threshold"] = args.threshold
    if name in ("neural_cleanse", "tabor"):
        if args.epochs:
            options["epochs"] = args.epochs
        if args.prune_after:
            options["prune_after"] = args.prune_after
    elif name == "deepinspect" and args.steps:
        options["steps"] = args.steps
    return cls(**options)


def cmd_scan(args) -> int:
    from poisonguard.cli.inputs import check_input_shape, check_num_classes, data_inputs, guard_out, load_checked_model, load_splits, model_inputs
    from poisonguard.data import per_class_subset
    from poisonguard.detect import DETECTORS
    from poisonguard.detect.report import add_to_report, write_triggers
    from poisonguard.models import load_model
    from poisonguard.report import Report

    out = guard_out(args.out, command="scan", force=args.force,
                    inputs=[*model_inputs(args.model), *(() if args.data.strip().lower() == "none" else data_inputs(args.data))])
    methods = _methods(args.method)
    _shape(args.input_shape)  # a typo or a 30000x30000 shape fails before the model is read
    data_free = args.data.strip().lower() == "none"
    report = Report("scan")
    if data_free:
        needing = [m for m in methods if DETECTORS.get(m).needs_data]
        if needing:
            raise UserError(f"--data none: {', '.join(needing)} needs clean data; use --method deepinspect or give --data")
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
        model, clean, classes, examples = loaded.model, None, loaded.classes, None
        info = {"path": args.model, "sha256": loaded.sha256, "num_classes": k, "input_shape": list(shape),
                "format": loaded.format, "architecture": loaded.metadata.get("architecture")}
    else:
        splits = load_splits(args.data, args.seed)
        loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
        model, shape, k, classes = loaded.model, splits.input_shape, splits.num_classes, list(splits.classes)
        clean = per_class_subset(splits.train, fraction=args.clean_fraction, seed=args.seed)
        examples = splits.test.x[: max(k, 1)]
    report.set("model", info)
    report.set("scan", {"methods": methods, "data": args.data, "clean_images": 0 if clean is None else len(clean),
                        "clean_fraction": None if clean is None else args.clean_fraction, "seed": args.seed})
    summary, taken = [], set()
    for order, name in enumerate(methods):
        detector = build_detector(name, args)
        if name == "deepinspect":
            det = detector.detect(model, clean, input_shape=shape, num_classes=k)
        else:
            det = detector.detect(model, clean)
        add_to_report(report, det, examples, classes, order=20 + order)
        triggers = write_triggers(det, out, taken=taken)
        summary.append({"method": name, "backdoored": det.backdoored, "flagged_classes": list(det.flagged_classes),
                        "seconds": det.seconds, "triggers": [str(p) for p in triggers]})
    path = report.write(out)
    print(json.dumps({"report": str(path), "detections": summary}))
    return 0
