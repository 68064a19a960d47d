"""Turning Detections into report sections and trigger files (used by the CLI and the stage)."""

from __future__ import annotations

from pathlib import Path

import torch

from poisonguard.attacks import PatchTrigger, save_trigger
from poisonguard.report import img, table
from poisonguard.report.plots import bar_chart, image_grid
from poisonguard.results import Detection

PRETTY = {"neural_cleanse": "Neural Cleanse", "tabor": "TABOR", "deepinspect": "DeepInspect (data-free)"}


def verdict_sentence(det: Detection, classes=None) -> str:
    """The verdict in words a non-expert understands."""
    name = PRETTY.get(det.method, det.method)
    label = (lambda c: f"class {c}" + (f" ('{classes[c]}')" if classes and str(classes[c]) != str(c) else ""))
    if det.backdoored:
        which = ", ".join(label(c) for c in det.flagged_classes)
        return (f"{name}: this model looks BACKDOORED. A tiny, unusual pattern is enough to turn almost any input "
                f"into {which}, far smaller than for any other class - the signature of a planted trigger.")
    return (f"{name}: no backdoor found. Every class needs a similarly large change to the input before the model "
            f"switches to it (no index above {det.threshold:g}).")


def row_classes(det: Detection) -> list[int]:
    """The class of each per-class row of `det` (a scan may cover only some classes)."""
    return list(det.extra.get("targets") or range(len(det.anomaly_index)))


def trigger_of(det: Detection, cls: int) -> PatchTrigger:
    """The reconstructed trigger of class `cls` as a PatchTrigger (for the trigger file)."""
    i = row_classes(det).index(cls)
    return PatchTrigger(det.masks[i].detach().cpu().float().clamp(0, 1),
                        det.patterns[i].detach().cpu().float().clamp(0, 1), int(cls))


def write_triggers(det: Detection, out: Path, *, taken: set[int] | None = None) -> list[Path]:
    """`trigger_<class>.npz` for every flagged class; returns the paths.

    `taken` holds classes an earlier method already wrote; this method's trigger for such a
    class goes to `trigger_<class>_<method>.npz` so the first method's file is kept.
    """
    paths = []
    if det.masks is None:
        return paths
    taken = set() if taken is None else taken
    for cls in det.flagged_classes:
        name = f"trigger_{cls}.npz" if cls not in taken else f"trigger_{cls}_{det.method}.npz"
        taken.add(cls)
        path = out / name
        save_trigger(trigger_of(det, cls), path)
        paths.append(path)
    return paths


MAX_DRAWN = 20


def classes_to_draw(det: Detection) -> list[int]:
    """Row indices to draw: all of them for small models; else flagged first, then smallest triggers.

    With 100+ classes only some fit the page, and the ones a reader needs are the suspects.
    """
    k = len(det.anomaly_index)
    if k <= MAX_DRAWN:
        return list(range(k))
    targets = row_classes(det)
    flagged = [targets.index(c) for c in det.flagged_classes if c in targets]
    sizes = det.mask_l1 or [-a for a in det.anomaly_index]
    rest = sorted((i for i in range(k) if i not in flagged), key=lambda i: sizes[i])
    return (flagged + rest)[:MAX_DRAWN]


def detection_html(det: Detection, examples: torch.Tensor | None, classes=None) -> str:
    """Bar chart of anomaly indices with the threshold, then every class's trigger as images."""
    k = len(det.anomaly_index)
    targets = row_classes(det)
    names = list(classes) if classes else []
    labels = [str(names[c]) if c < len(names) else str(c) for c in targets]
    flagged = {i for i, c in enumerate(targets) if c in det.flagged_classes}
    html = img(bar_chart(list(det.anomaly_index), labels=labels, threshold=det.threshold,
                         highlight=sorted(flagged), ylabel="anomaly index",
                         title=f"{PRETTY.get(det.method, det.method)}: anomaly index per class"), "anomaly index per class")
    rows = [[targets[i], labels[i], det.mask_l1[i] if det.mask_l1 else None, det.anomaly_index[i],
             "flagged" if i in flagged else ""] for i in range(k)]
    html += table(["class", "name", "trigger size (L1)", "anomaly index", ""], rows)
    if det.masks is not None:
        masks, patterns = det.masks.detach().cpu(), det.patterns.detach().cpu()
        grid_rows, row_titles = [], []
        for i in classes_to_draw(det):
            example = examples[i % len(examples)] if examples is not None and len(examples) else torch.zeros_like(patterns[i])
            stamped = (1 - masks[i]) * example + masks[i] * patterns[i]
            grid_rows.append([masks[i], patterns[i], masks[i] * patterns[i], stamped])
            row_titles.append(f"class {labels[i]}" + (" *" if i in flagged else ""))
        html += img(image_grid(grid_rows, row_titles=row_titles,
                               col_titles=["mask", "pattern", "trigger", "stamped input"], scale=1.1),
                    "reversed triggers")
        if k > MAX_DRAWN:
            html += (f"<p>{MAX_DRAWN} of {k} classes are drawn: the flagged ones first (marked *), "
                     "then those with the smallest triggers.</p>")
    return html


def add_to_report(report, det: Detection, examples, classes=None, *, order: int = 20) -> None:
    report.append("detections", det)
    title = f"Trigger reconstruction: {PRETTY.get(det.method, det.method)}"
    report.add_section(title, detection_html(det, examples, classes), summary=verdict_sentence(det, classes), order=order)
