"""`poisonguard sanitize DATA [--model M] [--method scan] [--expected-rate R] [--retrain] --out DIR`.

Writes DIR/report.json (its "sanitization" block), DIR/report.html, DIR/scores.npz (every
sample's score per method) and DIR/cleansed.npz (the data without the flagged samples).
Exit code 0 when the data looks clean, 1 when poisoned, 2 for a user's mistake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from poisonguard.errors import EXIT_FINDING, EXIT_OK, UserError

log = logging.getLogger(__name__)

OUTPUTS = ("report.json", "report.html", "scores.npz", "cleansed.npz", "cleansed.csv", "cleansed.parquet")


def _number(option: str, text: str | None, *, default: float | None = None, high: float = float("inf")) -> float | None:
    """A number in (0, high), checked here rather than by argparse so a mistake is one line, exit 2."""
    if text is None:
        return default
    what = f"a number in (0, {high})" if high < float("inf") else "a positive number"
    try:
        value = float(text)
    except ValueError as exc:
        raise UserError(f"{option} must be {what}, got {text!r}") from exc
    if not 0 < value < high:  # also refuses nan and inf
        raise UserError(f"{option} must be {what}, got {text}")
    return value


def _rate(option: str, text: str | None) -> float | None:
    """A share in (0, 0.5): --fpr, --expected-rate, --heldout-alpha, filter's --frr."""
    return _number(option, text, high=0.5)


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_verdict_options, positive_int
    from poisonguard.sanitize import DEFAULT_METHODS, SANITIZERS
    from poisonguard.sanitize.run import DEFAULT_EPOCHS, TABULAR_METHODS
    from poisonguard.sanitize.calibrate import GATES, HELDOUT_ALPHA

    p = sub.add_parser("sanitize", help="is my training data poisoned? flag the poisoned samples, write a cleansed copy")
    p.add_argument("data", help="the training data: mnist5k, cifar10, a CIFAR archive, an image folder, .zip, .npz, "
                                "or a .csv/.parquet table (with --label-column)")
    p.add_argument("--model", default=None, help="a model trained on DATA (any format scan takes); default: train one")
    p.add_argument("--arch", default=None, help="architecture of a bare state dict given with --model, or to train "
                                                "(default: cifar_cnn for colour images of 16 x 16 pixels or more, "
                                                "else mnist_cnn; the family's built-in for tables and text)")
    from poisonguard.cli.options import add_model_input_options

    add_model_input_options(p)
    add_verdict_options(p, method_default=None,  # None: each kind of data's own default, told apart from a typed one
                        method_help=f"comma-separated, combined into one verdict: {', '.join(SANITIZERS.names())} "
                                    f"(default {','.join(DEFAULT_METHODS)} for images, {','.join(TABULAR_METHODS)} "
                                    "for tables, text_keywords for text)",
                        fpr_type=str, fpr_default=None,  # checked by _rate: a mistake is one line, exit 2
                        fpr_help="share of a target class's clean samples allowed above the cut (default 0.05; tables 0.01)",
                        finding="the data looks poisoned")
    p.add_argument("--expected-rate", default=None, help="poison share you expect, in (0, 0.5): SPECTRE's epsilon; "
                                                                     "the papers' fixed removal counts are reported beside ours")
    p.add_argument("--class-threshold", default=None,
                   help="combined class anomaly index above which a class is a target (default exp(2) = 7.39, SCAn's level)")
    p.add_argument("--class-gate", choices=GATES, default="either",
                   help="either (default): the class anomaly index, or the held-out test where DATA has a test part "
                        "(its training samples score above its clean held-out samples); index: the index alone; "
                        "heldout: the test alone")
    p.add_argument("--heldout-alpha", default=None,
                   help=f"family-wise level of the held-out test over the classes, in (0, 0.5) (default {HELDOUT_ALPHA})")
    p.add_argument("--rule", choices=["calibrated", "paper"], default="calibrated",
                   help="calibrated (default): the combined, FPR-calibrated verdict; paper: each method's own fixed "
                        "removal rule (spectral/SPECTRE 1.5 x --expected-rate, ABL 1%%, ...), for comparison")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="epochs of the model sanitize trains (default 10, as train; the class threshold was set on models trained that long, and a much shorter run (2 epochs on mnist5k) has flagged clean data)")
    p.add_argument("--retrain", action="store_true", help="train a model on the cleansed data and report its accuracy")
    p.add_argument("--retrain-epochs", type=positive_int, default=10, help="epochs for --retrain (default 10)")
    p.add_argument("--trigger", default=None, help="a trigger file: --retrain also reports its attack success rate")
    p.add_argument("--out", required=True, help="folder for report.json, report.html, scores.npz and the cleansed copy (cleansed.npz; "
                                                "cleansed.csv or .parquet for a table or text corpus)")
    add_common(p)
    p.set_defaults(func=cmd_sanitize)


def _methods(text: str) -> list[str]:
    from poisonguard.cli.options import method_list
    from poisonguard.sanitize import SANITIZERS

    return method_list(text, SANITIZERS)


def _model(args, rows):
    from poisonguard.cli.inputs import load_checked_model
    from poisonguard.data import Splits

    splits = Splits(rows.name, rows.train, rows.test if rows.test is not None else rows.train)
    loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
    return loaded.model, info


def write_scores(path: Path, result, labels: np.ndarray) -> None:
    arrays = {"combined": result.z}
    for name in result.methods:
        arrays[f"score_{name}"] = result.method_scores[name]
        arrays[f"z_{name}"] = result.method_z[name]
    write_score_arrays(path, labels, result.flagged, arrays)


def write_score_arrays(path: Path, labels: np.ndarray, flagged, arrays: dict[str, np.ndarray]) -> None:
    """scores.npz: each sample's position, label and flag, and the scores in `arrays` (name: (N,))."""
    from poisonguard.utils import atomic_path

    n = len(labels)
    arrays = {"position": np.arange(n), "label": labels, "flagged": np.isin(np.arange(n), sorted(flagged)), **arrays}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _retrain(args, rows, keep: np.ndarray, report, sanitizer):
    from poisonguard.cli.inputs import load_checked_trigger
    from poisonguard.data import Splits, stratified_split
    from poisonguard.sanitize.report import retrain_section
    from poisonguard.train import evaluate, fit

    kept = rows.train.subset(keep)
    held_out = rows.test is None
    if held_out:  # no test part: judge on a seeded fifth of the kept rows, trained on the rest
        tr, te = stratified_split(kept.y.numpy(), 0.2, args.seed)
        kept, test = kept.subset(tr), kept.subset(te)
    else:
        test = rows.test
    trigger = load_checked_trigger(args.trigger, Splits(rows.name, rows.train, test))
    model = fit(sanitizer._build(kept), kept, epochs=args.retrain_epochs, batch_size=64, optimizer="adam",
                augment="none", seed=args.seed, device=args.device)
    ev = evaluate(model, test, trigger)
    retrain_section(report, ev, kept=len(keep), removed=len(rows.train) - len(keep), held_out=held_out)
    return ev


def cmd_sanitize(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.sanitize(args)
    from poisonguard.cli.inputs import data_inputs, file_inputs, guard_out, model_inputs
    from poisonguard.data.export import cleansed_path, write_cleansed
    from poisonguard.data.rows import load_rows
    from poisonguard.report import Report
    from poisonguard.sanitize import Sanitizer
    from poisonguard.sanitize.calibrate import CLASS_THRESHOLD, HELDOUT_ALPHA
    from poisonguard.sanitize.report import add_to_report
    from poisonguard.sanitize.run import DEFAULT_METHODS, TABULAR_METHODS

    out = guard_out(args.out, command="sanitize", force=args.force, outputs=OUTPUTS,
                    inputs=[*data_inputs(args.data), *model_inputs(args.model), *file_inputs(("trigger", args.trigger))])
    methods = None if args.method is None else _methods(args.method)
    fpr, expected = _rate("--fpr", args.fpr), _rate("--expected-rate", args.expected_rate)
    threshold = _number("--class-threshold", args.class_threshold, default=CLASS_THRESHOLD)
    alpha = _rate("--heldout-alpha", args.heldout_alpha)
    rows = load_rows(args.data, seed=args.seed)
    if args.model is not None:
        from poisonguard.cli.inputs import fit_columns

        rows = fit_columns(rows, args.model)  # a table encoded to the model's columns
    if methods is None:  # the default: SCAn alone for images, SCAn + spectral signatures for tables
        methods = list(TABULAR_METHODS if rows.train.kind == "tabular" else DEFAULT_METHODS)
    if args.trigger and not args.retrain:
        raise UserError("--trigger measures the retrained model's attack success rate; give --retrain too")
    model, info = (None, None) if args.model is None else _model(args, rows)
    sanitizer = Sanitizer(methods=methods, fpr=fpr, expected_rate=expected, epochs=args.epochs,
                          arch=args.arch if args.model is None else None, rule=args.rule,
                          class_threshold=threshold, gate=args.class_gate,
                          heldout_alpha=HELDOUT_ALPHA if alpha is None else alpha,
                          seed=args.seed, device=args.device)
    result = sanitizer.run(rows.train, model=model, reference=rows.test)
    report = Report("sanitize")
    if info is not None:
        report.set("model", info)
    report.set("data", {"source": args.data, "kind": rows.kind, "samples": len(rows.train),
                        "test_part": 0 if rows.test is None else len(rows.test), "classes": list(rows.classes),
                        "positions": "0-based rows of the training part" if rows.test is not None else "0-based rows of the whole source"})
    add_to_report(report, result, rows.train, list(rows.classes))
    if rows.names is not None:
        report.data["sanitization"]["flagged_files"] = [rows.names[i] for i in result.flagged]
    keep = np.setdiff1d(np.arange(len(rows.train)), np.asarray(result.flagged, dtype=np.int64))
    out.mkdir(parents=True, exist_ok=True)
    write_scores(out / "scores.npz", result, rows.train.y.numpy())
    cleansed = write_cleansed(rows, keep, cleansed_path(rows, out))
    report.data["sanitization"]["cleansed"] = str(cleansed)
    ev = _retrain(args, rows, keep, report, sanitizer) if args.retrain else None
    path = report.write(out)
    summary = {"report": str(path), "verdict": result.verdict, "flagged_count": len(result.flagged),
               "targets": list(result.targets), "cleansed": str(cleansed)}
    if ev is not None:
        summary["retrain"] = ev.to_dict()
    print(json.dumps(summary))
    if result.verdict == "poisoned" and not args.exit_zero:
        return EXIT_FINDING
    return EXIT_OK
