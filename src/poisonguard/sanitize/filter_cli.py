"""`poisonguard filter MODEL --data CLEAN --inputs INPUTS [--frr 0.01] --out DIR`: STRIP as an input filter.

STRIP (Gao et al., ACSAC 2019) guards a deployed model: each incoming input is superimposed
on clean images and the entropy of the model's predictions is measured; a trigger keeps
forcing its target through the overlay (low entropy), a clean input's class does not. The
threshold is the FRR quantile of the entropy of the clean inputs (`--data`: its test part,
or every row of a source without one), so about FRR of clean inputs are rejected.

Writes DIR/report.json (its "input_filter" block: threshold, rejected positions, counts),
DIR/report.html, DIR/entropy.npz (every input's entropy and whether it was rejected) and
DIR/accepted.npz (the inputs without the rejected ones, in the input's format). Positions
are the inputs' own 0-based rows (the training part of a source that has a test part).
Exit code 1 when more inputs are rejected than the FRR explains (a one-sided binomial test
at level 0.01: some inputs carry a trigger), 0 otherwise, 2 for a user's mistake.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from poisonguard.errors import EXIT_FINDING, EXIT_OK, UserError

log = logging.getLogger(__name__)

OUTPUTS = ("report.json", "report.html", "entropy.npz", "accepted.npz", "accepted.csv")
EXCESS_ALPHA = 0.01


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_model, positive_int

    p = sub.add_parser("filter", help="which of these inputs carry a trigger? STRIP's run-time input filter")
    add_model(p)
    p.add_argument("--data", required=True, help="clean inputs of the model's task that set the threshold: "
                                                 "mnist5k, cifar10, a path (its test part, or every row without one)")
    p.add_argument("--inputs", required=True, help="the inputs to filter, any data spec --data takes "
                                                   "(labels are read but not used)")
    p.add_argument("--frr", default="0.01", help="false-rejection rate on clean inputs, in (0, 0.5) (default 0.01)")
    p.add_argument("--draws", type=positive_int, default=10, help="superimpositions per input (default 10, as the paper)")
    p.add_argument("--method", default=None, help="text inputs: strip (superimposed texts; default) or onion "
                                                   "(outlier words under a bigram model of --data's texts)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when inputs carry a trigger")
    p.add_argument("--out", required=True, help="folder for report.json, report.html, entropy.npz, accepted.npz")
    add_common(p)
    p.set_defaults(func=cmd_filter)


def excess_rejections(rejected: int, n: int, frr: float) -> float:
    """One-sided binomial p-value of `rejected` of `n` clean inputs falling below an FRR threshold."""
    from scipy.stats import binom

    return float(binom.sf(rejected - 1, n, frr)) if n else 1.0


def filter_section(report, block: dict, clean_entropy: np.ndarray, entropy: np.ndarray) -> None:
    from poisonguard.report import img, table
    from poisonguard.report.plots import _pyplot, figure_to_data_uri

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.4))
    bins = np.linspace(min(clean_entropy.min(), entropy.min()), max(clean_entropy.max(), entropy.max()), 40)
    ax.hist(clean_entropy, bins=bins, alpha=0.6, label="clean inputs (--data)", color="#4a77b4", density=True)
    ax.hist(entropy, bins=bins, alpha=0.6, label="filtered inputs", color="#c0392b", density=True)
    ax.axvline(block["threshold"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("STRIP entropy (bits); dashed: the threshold")
    ax.legend(fontsize=7)
    html = table(["inputs", "rejected", "expected at the FRR", "FRR", "threshold", "p (excess)"],
                 [[block["inputs"], len(block["rejected"]), round(block["frr"] * block["inputs"], 1), block["frr"],
                   block["threshold"], block["p_excess"]]])
    html += img(figure_to_data_uri(fig), "entropy histograms")
    k, n = len(block["rejected"]), block["inputs"]
    if block["verdict"] == "trojaned":
        summary = (f"{k} of {n} inputs are rejected, more than the {block['frr']:.1%} false-rejection rate explains "
                   f"(p = {block['p_excess']:.2g}): some inputs carry a trigger; the rejected ones are left out of accepted.npz.")
    else:
        summary = (f"{k} of {n} inputs are rejected, no more than the {block['frr']:.1%} false-rejection rate "
                   f"explains (p = {block['p_excess']:.2g}): no sign of triggered inputs.")
    report.add_section("STRIP input filter", html, summary=summary, order=30)


def cmd_filter(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.filter_inputs(args)
    if args.method not in (None, "strip"):
        raise UserError(f"images are filtered by strip; {args.method!r} is a text filter")
    from poisonguard.cli.inputs import data_inputs, guard_out, load_checked_model, model_inputs
    from poisonguard.data import Splits
    from poisonguard.data.export import cleansed_path, write_cleansed
    from poisonguard.data.rows import load_rows
    from poisonguard.report import Report
    from poisonguard.sanitize.cli import _rate
    from poisonguard.sanitize.strip import StripFilter, check_images
    from poisonguard.utils import atomic_path

    out = guard_out(args.out, command="filter", force=args.force, outputs=OUTPUTS,
                    inputs=[*model_inputs(args.model), *data_inputs(args.data), *data_inputs(args.inputs, "inputs")])
    frr = _rate("--frr", args.frr)
    clean_rows = load_rows(args.data, seed=args.seed)
    clean = clean_rows.test if clean_rows.test is not None else clean_rows.train
    check_images(clean)  # before the inputs are read: a table's incoming rows need not even parse
    rows = load_rows(args.inputs, seed=args.seed)
    if rows.train.input_shape != clean.input_shape:
        raise UserError(f"the inputs have shape {rows.train.input_shape} but the clean data {clean.input_shape}")
    if len(clean) < 20:
        raise UserError(f"--data has {len(clean)} clean inputs; STRIP's threshold needs at least 20")
    loaded, info = load_checked_model(args.model, Splits(clean_rows.name, clean_rows.train, clean), args.arch, args=args)
    strip = StripFilter(draws=args.draws, frr=frr, seed=args.seed).fit(loaded.model, clean)
    entropy = strip.entropy(loaded.model, rows.train.x)
    rejected = np.flatnonzero(entropy < strip.threshold)
    p = excess_rejections(len(rejected), len(entropy), frr)
    block = {"method": "strip", "paper": "Gao et al., ACSAC 2019", "verdict": "trojaned" if p < EXCESS_ALPHA else "clean",
             "threshold": strip.threshold, "frr": frr, "draws": args.draws, "clean_inputs": len(clean),
             "inputs": len(entropy), "rejected": [int(i) for i in rejected], "p_excess": p, "excess_alpha": EXCESS_ALPHA}
    report = Report("filter")
    report.set("model", info)
    report.set("input_filter", block)
    if rows.names is not None:
        block["rejected_files"] = [rows.names[i] for i in rejected]
    filter_section(report, block, strip.clean_entropy, entropy)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "entropy.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, position=np.arange(len(entropy)), entropy=entropy, rejected=np.isin(np.arange(len(entropy)), rejected))
    accepted = write_cleansed(rows, np.setdiff1d(np.arange(len(entropy)), rejected), cleansed_path(rows, out, "accepted"))
    path = report.write(out)
    print(json.dumps({"report": str(path), "verdict": block["verdict"], "rejected": len(rejected),
                      "inputs": len(entropy), "threshold": strip.threshold, "accepted": str(accepted)}))
    return EXIT_FINDING if block["verdict"] == "trojaned" and not args.exit_zero else EXIT_OK
