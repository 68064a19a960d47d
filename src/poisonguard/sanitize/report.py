"""The sanitization report: the verdict in one sentence computed from the numbers, the most
suspicious samples as images, per-class histograms of the combined score with the cut, the
per-method table, and the average flagged image (the trigger, where the poison shares one)."""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.report import img, table
from poisonguard.report.evaluation import class_label
from poisonguard.report.plots import _pyplot, bar_chart, figure_to_data_uri, image_grid
from poisonguard.results import Sanitization

PRETTY = {"spectral": "Spectral signatures", "spectre": "SPECTRE", "scan": "SCAn", "abl": "ABL isolation", "strip": "STRIP"}
MOST_SUSPICIOUS = 24


def verdict_sentence(result: Sanitization, classes=None) -> str:
    text = _verdict_sentence(result, classes)
    from poisonguard.sanitize.run import DEFAULT_EPOCHS

    epochs = result.extra.get("epochs") if result.extra.get("trained_model") else None
    if result.verdict == "poisoned" and epochs is not None and epochs < DEFAULT_EPOCHS // 2:
        text += (f" Caution: the model sanitize trained ran {epochs} epochs, under half the {DEFAULT_EPOCHS} the "
                 "class threshold was set on; such short runs have flagged clean data.")
    missing = result.extra.get("heldout_missing")
    if missing:  # the user asked for the held-out test (or the default gate includes it); say it did not run
        text += f" The held-out test (--class-gate {result.extra.get('gate_requested')}) did not run: {missing}; the " \
                "class anomaly index alone decided."
    return text


def _verdict_sentence(result: Sanitization, classes=None) -> str:
    n, k = result.n_samples, len(result.flagged)
    if result.extra.get("rule") == "paper":
        return (f"The papers' own fixed removal rules flag {k} of {n} samples ({k / n:.1%}); these rules remove a set "
                "share whatever the data, so this count alone does not show that the data is poisoned "
                "(the calibrated default, without --rule paper, decides that).")
    top = max(result.class_index.items(), key=lambda kv: kv[1]) if result.class_index else ("-", 0.0)
    if result.verdict == "poisoned":
        where = ", ".join(class_label(c, classes) for c in result.targets)
        return (f"The training data looks POISONED: {k} of {n} samples ({k / n:.1%}) stand out as a separate cluster "
                f"labelled {where} ({_why(result)}); they are flagged and left out of the cleansed copy.")
    where = class_label(int(top[0]), classes) if str(top[0]).isdigit() else "no class"
    return (f"No poisoning found: no class holds a cluster of samples that stands out (highest class anomaly index "
            f"{float(top[1]):.2f}, {where}, not above {result.class_threshold:.2f}); {k} of {n} samples flagged.")


def _why(result: Sanitization) -> str:
    """Which gate made the targets: the class anomaly index, the held-out test, or both."""
    index = max(result.class_index[str(c)] for c in result.targets)
    parts = [f"class anomaly index {index:.2f} > {result.class_threshold:.2f}"] if index > result.class_threshold else []
    held, cut = result.extra.get("heldout_index") or {}, result.extra.get("heldout_cut")
    if held and cut is not None:
        top = max(held.get(str(c), 0.0) for c in result.targets)
        if top > cut:
            parts.append(f"held-out test z {top:.2f} > {cut:.2f}: more of its training samples score high than of "
                         "its clean held-out samples")
    return "; ".join(parts) or "class gate"


def histograms(z: np.ndarray, labels: np.ndarray, cut: float, targets, classes=None) -> str:
    """Per-class histograms of the combined score, the cut drawn; target classes in red."""
    plt = _pyplot()
    present = [int(c) for c in np.unique(labels)][:20]
    cols = min(5, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.8 * rows), squeeze=False)
    bins = np.linspace(min(float(z.min()), -4.0), max(float(z.max()), cut + 1.0), 40)
    for ax, c in zip(axes.flat, present):
        ax.hist(z[labels == c], bins=bins, color="#c0392b" if c in targets else "#4a77b4")
        ax.axvline(cut, color="black", linestyle="--", linewidth=1)
        ax.set_title(class_label(c, classes), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(f"combined score per class (counts); dashed: the cut {cut:.2f}, applied only in target classes (red)", fontsize=9)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    return figure_to_data_uri(fig)


def suspicious_grid(x: torch.Tensor, labels: np.ndarray, z: np.ndarray, flagged: set[int], classes=None) -> str:
    """The most suspicious samples, each titled with its position and label (red when flagged)."""
    from poisonguard.report.plots import _as_image

    order = np.argsort(-z)[:MOST_SUSPICIOUS]
    cells = [[int(i), class_label(int(labels[i]), classes), float(z[i]), "flagged" if int(i) in flagged else ""] for i in order]
    if x.ndim != 4:  # table rows or token ids: no picture, the positions say which rows
        return table(["position", "label", "combined score", ""], cells)
    plt = _pyplot()
    cols = 8
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        image = _as_image(x[int(i)])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        name = str(classes[int(labels[i])]) if classes else str(int(labels[i]))
        ax.set_title(f"#{int(i)} label {name}", fontsize=7, color="#c0392b" if int(i) in flagged else "black")
    fig.suptitle("most suspicious samples (position in the input, label; red: flagged)", fontsize=9)
    grid = figure_to_data_uri(fig)
    return img(grid, "most suspicious samples") + table(["position", "label", "combined score", ""], cells)


def feature_shift_table(x: torch.Tensor, flagged: np.ndarray, keep: np.ndarray, names=None, top: int = 8) -> str:
    """Features whose mean over the flagged rows lies furthest from the kept rows', in the kept rows' std."""
    f, k = x[torch.as_tensor(flagged)], x[torch.as_tensor(keep)] if len(keep) else x
    std = k.std(0).clamp_min(1e-6) if len(k) > 1 else torch.ones(x.shape[1])
    shift = (f.mean(0) - k.mean(0)) / std
    order = torch.argsort(-shift.abs())[:top].tolist()
    rows = [[names[i] if names is not None and i < len(names) else f"feature {i}", round(float(f[:, i].mean()), 4),
             round(float(k[:, i].mean()), 4), round(float(shift[i]), 2)] for i in order]
    return table(["feature", "mean flagged", "mean kept (same classes)", "shift (kept std)"], rows)


def trigger_estimate(x: torch.Tensor, labels: np.ndarray, flagged: np.ndarray, targets, feature_names=None) -> str:
    """Mean flagged image beside the mean kept image of the same classes, and their difference."""
    if not len(flagged):
        return ""
    keep = np.setdiff1d(np.flatnonzero(np.isin(labels, targets)), flagged)
    if x.ndim == 2 and x.is_floating_point():  # table rows: the features where flagged rows differ most
        return feature_shift_table(x, flagged, keep, feature_names)
    mean_flagged = x[torch.as_tensor(flagged)].mean(0)
    mean_kept = x[torch.as_tensor(keep)].mean(0) if len(keep) else torch.zeros_like(mean_flagged)
    diff = (mean_flagged - mean_kept).abs()
    diff = diff / max(float(diff.max()), 1e-6)
    return img(image_grid([[mean_flagged, mean_kept, diff]],
                          col_titles=["mean flagged", "mean kept (same classes)", "|difference| (scaled)"], scale=1.6),
               "suspected trigger")


def method_table(result: Sanitization) -> str:
    rows = []
    for name in result.methods:
        s = result.scores[name]
        idx = s.get("class_index", {})
        top = max(idx.items(), key=lambda kv: kv[1]) if idx else ("-", None)
        rows.append([PRETTY.get(name, name), s.get("paper", ""), f"class {top[0]}", top[1],
                     ", ".join(map(str, s.get("targets_alone", []))) or "none", s.get("flagged_alone"), s.get("seconds")])
    return table(["method", "paper", "most anomalous", "its index", "targets alone", "flagged alone", "seconds"], rows)


def add_to_report(report, result: Sanitization, data, classes=None, *, order: int = 30) -> None:
    labels = data.y.numpy()
    report.set("sanitization", result)
    flagged = np.asarray(result.flagged, dtype=np.int64)
    html = table(["verdict", "samples", "flagged", "target classes", "cut (combined z)", "stated FPR"],
                 [[result.verdict, result.n_samples, len(flagged), ", ".join(map(str, result.targets)) or "none",
                   result.cut, result.false_positive_rate]])
    keys = sorted(result.class_index, key=int)
    html += img(bar_chart([result.class_index[k] for k in keys], labels=[str(classes[int(k)]) if classes else k for k in keys],
                          threshold=result.class_threshold, highlight=[i for i, k in enumerate(keys) if int(k) in result.targets],
                          ylabel="class anomaly index", title="combined class anomaly index"), "class anomaly index")
    html += "<h3>Most suspicious samples</h3>" + suspicious_grid(data.x, labels, result.z, set(result.flagged), classes)
    html += "<h3>Scores per class</h3>" + img(histograms(result.z, labels, result.cut, result.targets, classes), "histograms")
    if len(flagged):
        html += "<h3>Suspected trigger</h3>" + trigger_estimate(data.x, labels, flagged, result.targets,
                                                                getattr(data.meta, "feature_names", None))
    html += "<h3>Per method</h3>" + method_table(result)
    report.add_section("Data sanitization", html, summary=verdict_sentence(result, classes), order=order)


def retrain_section(report, evaluation, *, kept: int, removed: int, held_out: bool, order: int = 40) -> None:
    from poisonguard.report import table as _table

    report.set("retrain", {**evaluation.to_dict(), "kept": kept, "removed": removed, "evaluated_on_held_out_kept": held_out})
    html = _table(["samples kept", "removed", "clean accuracy", "attack success rate"],
                  [[kept, removed, evaluation.clean_accuracy, evaluation.attack_success_rate]])
    summary = (f"A model trained on the cleansed data reaches clean accuracy {evaluation.clean_accuracy:.1%}"
               + (f" and attack success rate {evaluation.attack_success_rate:.1%}." if evaluation.attack_success_rate is not None else "."))
    report.add_section("Retrained on the cleansed data", html, summary=summary, order=order)
