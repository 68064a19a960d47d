"""`poisonguard repair MODEL --data D --method M --out DIR`: remove a backdoor from a model.

Writes DIR/model.<ext> (+ metadata.json) with the repaired model in the input's format
(TorchScript .pt, torch.export .pt2, ONNX .onnx; weights-only files as .safetensors), DIR/report.json with a
`repairs` entry, and DIR/report.html (before/after table, pruning curve, trigger used).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from poisonguard.errors import UserError, user_values


def method_choices() -> list[str]:
    """The registered repair methods as the command line spells them (fine-pruning, refit, ...)."""
    from poisonguard.repair import REPAIRERS

    return [n.replace("_", "-") for n in REPAIRERS.names()]


def _method_help() -> str:
    from poisonguard.repair import REPAIRERS

    def first_line(name: str) -> str:
        doc = (REPAIRERS.get(name).__doc__ or "").strip().splitlines()
        return doc[0].rstrip(".") if doc else ""

    return ("; ".join(f"{n.replace('_', '-')}: {first_line(n)}" for n in REPAIRERS.names())
            + " (default fine-pruning; retrain for a table)")

log = logging.getLogger(__name__)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from exc
    return value  # range checked in the handler so the message is one clear line with exit 2


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_data, add_model

    p = sub.add_parser("repair", help="remove a backdoor from a model using a little clean data")
    add_model(p)
    add_data(p)
    p.add_argument("--method", default=None, metavar="METHOD", help=_method_help())
    p.add_argument("--clean-fraction", type=fraction, default=None,
                   help="share of the training split used as the defender's clean data, in (0, 1] "
                        "(default 0.05; 0.25 for a table)")
    p.add_argument("--aux-data", default=None, help="unlabelled in-distribution images (REFIT labels them with the model)")
    p.add_argument("--from-scan", default=None, help="folder of a `poisonguard scan` run: its trigger_<class>.npz files")
    p.add_argument("--trigger", default=None, help="the real trigger, if known, to measure the attack success rate (trigger.npz; trigger.json for text)")
    p.add_argument("--unlearn-mode", choices=["unlearn", "prune", "filter"], default="unlearn",
                   help="Neural Cleanse mitigation for --method unlearn (default unlearn)")
    p.add_argument("--prune-layer", default=None, help="fine-pruning: dotted name of the layer to prune (default: last conv)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="fine-pruning: accuracy budget for pruning")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the method's own)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the method's own)")
    p.add_argument("--out", required=True, help="output folder (must not hold the input model)")
    add_common(p)
    p.set_defaults(func=cmd_repair)


def scan_triggers(folder: str, splits) -> list:
    """Every trigger_<class>.npz that `poisonguard scan` wrote in `folder`, checked against the data."""
    from poisonguard.attacks import PatchTrigger, check_trigger_fits, load_trigger
    from poisonguard.attacks.triggers import GeneratorTrigger

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"--from-scan {path} is not a folder")
    files = sorted(f for f in path.glob("trigger_*.npz") if re.fullmatch(r"trigger_\d+\.npz", f.name))
    if not files:
        raise UserError(f"--from-scan {path} holds no trigger_<class>.npz files (did the scan flag any class?)")
    triggers = []
    for f in files:
        trig = load_trigger(f)
        if not isinstance(trig, (PatchTrigger, GeneratorTrigger)):
            raise UserError(f"{f} is not a trigger scan reconstructs (mask-and-pattern or generator)")
        check_trigger_fits(trig, splits.input_shape, splits.num_classes)
        triggers.append(trig)
    return triggers


def build_repairer(method: str, args, scan: list | None):
    from poisonguard.repair import REPAIRERS

    key = REPAIRERS.normalise(method)
    if key not in REPAIRERS:
        raise UserError(f"unknown repair method {method!r}; known: {', '.join(method_choices())}")
    kwargs = {"seed": args.seed, "device": args.device}
    for opt in ("epochs", "lr"):
        if getattr(args, opt) is not None:
            kwargs[opt] = getattr(args, opt)
    if key == "fine_pruning":
        kwargs["layer"] = args.prune_layer
        if args.max_accuracy_drop is not None:
            kwargs["max_accuracy_drop"] = args.max_accuracy_drop
    if key == "unlearn":
        kwargs["mode"] = args.unlearn_mode
        if scan:
            kwargs.update(triggers=scan, triggers_source="scan")
    with user_values():
        return REPAIRERS.get(key)(**kwargs)


def cmd_repair(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.repair(args)
    from poisonguard.cli.inputs import (check_finite_model, data_inputs, feature_record, file_inputs, guard_out,
                                        load_checked_model, load_checked_trigger, load_splits, model_inputs)
    from poisonguard.data import per_class_subset
    from poisonguard.report import Report
    from poisonguard.repair.report import majority_share, no_better_than_majority, repair_section, trigger_label

    if args.clean_fraction is not None and not 0 < args.clean_fraction <= 1:
        raise UserError(f"--clean-fraction must lie in (0, 1], got {args.clean_fraction}")
    out = guard_out(args.out, command="repair", force=args.force,
                    inputs=[*model_inputs(args.model), *data_inputs(args.data), *data_inputs(args.aux_data, "--aux-data"),
                            *file_inputs(("trigger", args.trigger), ("--from-scan folder", args.from_scan))])
    splits = load_splits(args.data, args.seed, model=args.model)
    if args.method is None:
        # An MLP trains in seconds: training a fresh copy on the trusted rows beats pruning its
        # 64 units or distilling it, whose soft labels carry an in-range trigger (notes/issue-19.md).
        args.method = "retrain" if splits.kind == "tabular" else "fine-pruning"
    loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
    trigger = load_checked_trigger(args.trigger, splits)
    scan = scan_triggers(args.from_scan, splits) if args.from_scan else None
    aux = None
    if args.aux_data:
        aux = load_splits(args.aux_data, args.seed, model=args.model).train
        if aux.input_shape != splits.input_shape:
            raise UserError(f"--aux-data images are {aux.input_shape} but the model takes {splits.input_shape}")
    repairer = build_repairer(args.method, args, scan)
    if repairer.name == "fine_pruning":  # fail before any work when there is nothing to prune
        from poisonguard.repair.fine_pruning import find_prune_layer

        find_prune_layer(loaded.model, splits.train.x[:2], args.prune_layer)
    if args.clean_fraction is None:  # the defender's clean share, as scan's: a table's is a quarter of its rows
        from poisonguard.detect.scan import defaults_for

        args.clean_fraction = defaults_for(splits.kind)["clean_fraction"]
    clean = per_class_subset(splits.train, fraction=args.clean_fraction, seed=args.seed)
    # Without --trigger, measure the attack with the scan's reconstruction (the first flagged class).
    asr_trigger = trigger if trigger is not None else (scan[0] if scan else None)
    result = repairer.repair(loaded.model, clean, trigger=asr_trigger, test=splits.test, aux_data=aux,
                             trigger_reconstructed_by="scan" if trigger is None and scan else None)
    check_finite_model(result.model, "the repaired model", x=splits.test.x[:64])  # a diverged fine-tune is not saved
    # Written back in the input's format (TorchScript, .pt2, ONNX; weights as safetensors).
    meta = loaded.save_like(result.model, out, classes=splits.classes, input_shape=splits.input_shape,
                      training={"command": "repair", "method": result.method, "source_sha256": info["sha256"],
                                "clean_samples": len(clean), "seed": args.seed},
                      extra={"clean_accuracy": result.after.clean_accuracy,
                             "attack_success_rate": result.after.attack_success_rate, **feature_record(splits)})
    majority = majority_share(splits.test)
    unusable = no_better_than_majority(result, majority)
    report = Report("repair")
    report.set("model", info)
    report.set("repaired_model", {"path": meta["path"], "sha256": meta["sha256"], "format": meta["format"],
                                  "largest_class_share": round(majority, 6), "no_better_than_largest_class": unusable})
    report.append("repairs", result)
    title, html, summary = repair_section([result], splits=splits, trigger=asr_trigger)
    report.add_section(title, html, summary=summary, order=30)
    report.write(out)
    print(json.dumps({"out": str(out), "method": result.method, "seconds": round(result.seconds, 2),
                      "before": result.before.to_dict(), "after": result.after.to_dict(),
                      "attack_success_rate_trigger": result.extra["attack_success_rate_trigger"],
                      "trigger_reconstructed_by": result.extra.get("trigger_reconstructed_by")}))
    if result.extra["attack_success_rate_trigger"] == "reconstructed":
        log.warning("attack success rates measured with %s, not the attack's own trigger (%s)", trigger_label(result),
                    "the --trigger file is one scan wrote; give the attack's trigger file to measure that"
                    if args.trigger else "give --trigger to measure that")
    if unusable:
        log.warning("the repaired model is right on %.1f%% of the test data, no more than always answering its "
                    "largest class (%.1f%%), so its attack success rate says little: it was saved, but it is no "
                    "model to use; try another --method or more --epochs", 100 * result.after.clean_accuracy,
                    100 * majority)
    return 0
