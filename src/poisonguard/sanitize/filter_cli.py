"""`poisonguard filter MODEL --data CLEAN --inputs INPUTS [--frr 0.01] --out DIR`: a run-time input filter.

Images: STRIP (Gao et al., ACSAC 2019, the default) guards a deployed model: each incoming input
is superimposed on clean images and the entropy of the model's predictions is measured; a
trigger keeps forcing its target through the overlay (low entropy), a clean input's class does
not. Tables: the Mahalanobis filter (Lee et al., NeurIPS 2018; `sanitize/mahalanobis.py`, the
default and the only one: STRIP's superposition means nothing on raw units), which rejects an
input whose penultimate representation lies far from the clean inputs of the class the model
predicts; images may ask for it with `--method mahalanobis`. The threshold is the FRR quantile
of clean inputs' statistic (`--data`: its test part, or every row of a source without one), so
about FRR of clean inputs are rejected.

Writes DIR/report.json (its "input_filter" block: method, threshold, rejected positions,
counts), DIR/report.html, DIR/entropy.npz (STRIP) or DIR/distance.npz (Mahalanobis): every
input's statistic and whether it was rejected, and DIR/accepted.npz or accepted.csv (the inputs
without the rejected ones, in the input's format). Positions are the inputs' own 0-based rows
(the training part of a source that has a test part). Exit code 1 when more inputs are rejected
than the FRR explains (a one-sided binomial test at level 0.01: some inputs carry a trigger), 0
otherwise, 2 for a user's mistake.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from poisonguard.errors import EXIT_FINDING, EXIT_OK, UserError

log = logging.getLogger(__name__)

OUTPUTS = ("report.json", "report.html", "entropy.npz", "distance.npz", "accepted.npz", "accepted.csv")
# method: (paper, statistic, what the histogram shows, whether large values are rejected)
FILTERS = {"strip": ("Gao et al., ACSAC 2019", "entropy", "STRIP entropy (bits)", False),
           "mahalanobis": ("Lee et al., NeurIPS 2018", "distance", "squared Mahalanobis distance", True)}
EXCESS_ALPHA = 0.01


def add_commands(sub) -> None:
    from poisonguard.cli.options import add_common, add_model, positive_int

    p = sub.add_parser("filter", help="which of these inputs carry a trigger? a run-time input filter (STRIP, Mahalanobis)")
    add_model(p)
    p.add_argument("--data", required=True, help="clean inputs of the model's task that set the threshold: "
                                                 "mnist5k, cifar10, a path (its test part, or every row without one)")
    p.add_argument("--inputs", required=True, help="the inputs to filter, any data spec --data takes "
                                                   "(labels may be absent: a table without the label column, an .npz without y; "
                                                   "they are never used)")
    p.add_argument("--frr", default="0.01", help="false-rejection rate on clean inputs, in (0, 0.5) (default 0.01)")
    p.add_argument("--draws", type=positive_int, default=10, help="superimpositions per input (default 10, as the paper)")
    p.add_argument("--method", default=None, help="images: strip (default) or mahalanobis; tables: mahalanobis; "
                                                   "text: strip (superimposed texts; default) or onion (outlier words "
                                                   "under a bigram model of --data's texts)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when inputs carry a trigger")
    p.add_argument("--out", required=True, help="folder for report.json, report.html, the statistic (.npz) and the "
                                                "accepted inputs")
    add_common(p)
    p.set_defaults(func=cmd_filter)


def excess_rejections(rejected: int, n: int, frr: float) -> float:
    """One-sided binomial p-value of `rejected` of `n` clean inputs falling below an FRR threshold."""
    from scipy.stats import binom

    return float(binom.sf(rejected - 1, n, frr)) if n else 1.0


def filter_summary(k: int, n: int, frr: float, p: float, verdict: str) -> str:
    """The filter's sentence: whether `k` rejections of `n` inputs are more than the false-rejection
    rate explains, and, where they are not, that the rejected inputs are still left out and
    whether `n` inputs could have shown triggered ones at all (with one input at a 1% FRR, a
    rejection has p = 0.01: no count of rejections reaches the test's level)."""
    from poisonguard.report.evaluation import counted

    if verdict == "trojaned":
        return (f"{k} of {counted(n, 'input')} {'is' if k == 1 else 'are'} rejected, more than the {frr:.1%} false-rejection "
                f"rate explains (p = {p:.2g}): some inputs carry a trigger; the rejected ones are left out of the "
                "accepted inputs.")
    if k == 0:
        return f"None of {counted(n, 'input')} is rejected: no sign of triggered inputs."
    text = (f"{k} of {counted(n, 'input')} {'is' if k == 1 else 'are'} rejected and left out of the accepted inputs; that "
            f"many is within what the {frr:.1%} false-rejection rate explains (p = {p:.2g}), so "
            f"{'it may be a clean input' if k == 1 else 'they may be clean inputs'} rejected by chance")
    if excess_rejections(n, n, frr) >= EXCESS_ALPHA:
        return text + (f"; with {counted(n, 'input')} not even every one rejected would show triggered inputs at the "
                       f"{EXCESS_ALPHA:.0%} level: filter more inputs at once to tell.")
    return text + "."


def filter_section(report, block: dict, clean_score: np.ndarray, score: np.ndarray) -> None:
    from poisonguard.report import img, table
    from poisonguard.report.plots import _pyplot, figure_to_data_uri

    method = block["method"]
    # ONION (text only, cli.text.filter_inputs) scores with a language model; its block names the score
    xlabel = FILTERS[method][2] if method in FILTERS else block.get("score", "score")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.4))
    bins = np.linspace(min(clean_score.min(), score.min()), max(clean_score.max(), score.max()), 40)
    ax.hist(clean_score, bins=bins, alpha=0.6, label="clean inputs (--data)", color="#4a77b4", density=True)
    ax.hist(score, bins=bins, alpha=0.6, label="filtered inputs", color="#c0392b", density=True)
    ax.axvline(block["threshold"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{xlabel}; dashed: the threshold")
    ax.legend(fontsize=7)
    html = table(["inputs", "rejected", "expected at the FRR", "FRR", "threshold", "p (excess)"],
                 [[block["inputs"], len(block["rejected"]), f"{block['frr'] * block['inputs']:.1f}", block["frr"],
                   block["threshold"], f"{block['p_excess']:.2g}"]])
    html += img(figure_to_data_uri(fig), f"{xlabel} histograms")
    report_summary = filter_summary(len(block["rejected"]), block["inputs"], block["frr"], block["p_excess"],
                                    block["verdict"])
    title = {"strip": "STRIP", "mahalanobis": "Mahalanobis", "onion": "ONION"}.get(method, method) + " input filter"
    report.add_section(title, html, summary=report_summary, order=30)


def cmd_filter(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.filter_inputs(args)
    from poisonguard.cli.inputs import data_inputs, encode_to, fit_columns, guard_out, load_checked_model, model_inputs
    from poisonguard.data import Splits
    from poisonguard.data.export import cleansed_path, write_cleansed
    from poisonguard.data.rows import load_inputs, load_rows
    from poisonguard.report import Report
    from poisonguard.sanitize.cli import _rate
    from poisonguard.utils import atomic_path

    out = guard_out(args.out, command="filter", force=args.force, outputs=OUTPUTS,
                    inputs=[*model_inputs(args.model), *data_inputs(args.data), *data_inputs(args.inputs, "inputs")])
    frr = _rate("--frr", args.frr)
    clean_rows = fit_columns(load_rows(args.data, seed=args.seed), args.model)
    clean = clean_rows.test if clean_rows.test is not None else clean_rows.train
    method = choose_filter(args.method, clean)  # before the inputs are read: a refused method needs no inputs
    rows = fit_columns(load_inputs(args.inputs, seed=args.seed), args.model)
    # a model that records no columns: the clean table's names order the incoming rows (a file
    # with its columns in another order was fed to the model as it stood: every row rejected)
    rows = encode_to(rows, getattr(clean.meta, "feature_names", None), "the clean data's")
    if rows.train.input_shape != clean.input_shape:
        raise UserError(f"the inputs have shape {rows.train.input_shape} but the clean data {clean.input_shape}")
    if len(clean) < 20:
        raise UserError(f"--data has {len(clean)} clean inputs; the filter's threshold needs at least 20")
    loaded, info = load_checked_model(args.model, Splits(clean_rows.name, clean_rows.train, clean), args.arch, args=args)
    score, clean_score, threshold = run_filter(method, loaded.model, clean, rows.train.x, frr=frr, draws=args.draws,
                                               seed=args.seed)
    paper, statistic, _, reject_large = FILTERS[method]
    rejected = np.flatnonzero(score > threshold if reject_large else score < threshold)
    p = excess_rejections(len(rejected), len(score), frr)
    block = {"method": method, "paper": paper, "statistic": statistic, "verdict": "trojaned" if p < EXCESS_ALPHA else "clean",
             "threshold": threshold, "frr": frr, "clean_inputs": len(clean), "inputs": len(score),
             "rejected": [int(i) for i in rejected], "p_excess": p, "excess_alpha": EXCESS_ALPHA}
    if method == "strip":
        block["draws"] = args.draws
    if rows.names is not None:
        block["rejected_files"] = [rows.names[i] for i in rejected]
    report = Report("filter")
    report.set("model", info)
    report.set("input_filter", block)
    filter_section(report, block, clean_score, score)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{statistic}.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, position=np.arange(len(score)), **{statistic: score},
                     rejected=np.isin(np.arange(len(score)), rejected))
    accepted = write_cleansed(rows, np.setdiff1d(np.arange(len(score)), rejected), cleansed_path(rows, out, "accepted"))
    path = report.write(out)
    print(json.dumps({"report": str(path), "method": method, "verdict": block["verdict"], "rejected_count": len(rejected),
                      "inputs": len(score), "threshold": threshold, "accepted": str(accepted)}))
    return EXIT_FINDING if block["verdict"] == "trojaned" and not args.exit_zero else EXIT_OK


def choose_filter(method: str | None, clean) -> str:
    """The filter for this kind of input: STRIP for images by default, Mahalanobis for tables (STRIP refuses them)."""
    from poisonguard.sanitize.strip import check_images

    method = method or ("mahalanobis" if clean.kind == "tabular" else "strip")
    if method not in FILTERS:
        raise UserError(f"{'table rows' if clean.kind == 'tabular' else 'images'} are filtered by "
                        f"{' or '.join(FILTERS)}; {method!r} is a text filter")
    if method == "strip":
        check_images(clean)
    return method


def run_filter(method: str, model, clean, x, *, frr: float, draws: int, seed: int):
    """(statistic of every input, of the held-out clean inputs, the threshold) for `method`."""
    if method == "strip":
        from poisonguard.sanitize.strip import StripFilter

        strip = StripFilter(draws=draws, frr=frr, seed=seed).fit(model, clean)
        return strip.entropy(model, x), strip.clean_entropy, strip.threshold
    from poisonguard.sanitize.mahalanobis import MahalanobisFilter

    maha = MahalanobisFilter(frr=frr, seed=seed).fit(model, clean)
    return maha.distance(model, x), maha.clean_distance, maha.threshold
