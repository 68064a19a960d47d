"""Turning Detections into report sections and trigger files (used by the CLI and the stage)."""

from __future__ import annotations

from html import escape
from pathlib import Path

import torch

from poisonguard.attacks import PatchTrigger, save_trigger
from poisonguard.detect.verdict import STAND_IN_TEST_WORDS
from poisonguard.report import img, table
from poisonguard.report.evaluation import INPUT_WORDS, class_label
from poisonguard.report.plots import bar_chart, image_grid
from poisonguard.results import Detection

PRETTY = {"neural_cleanse": "Neural Cleanse", "tabor": "TABOR", "deepinspect": "DeepInspect (data-free)",
          "feature_re": "FeatureRE (feature space)", "reference_contrast": "reference contrast (against clean models)",
          "text_inversion": "DBS-style word inversion", "text_phrase": "phrase inversion",
          "text_ngram": "exact n-gram search"}
# What each method's evidence can see, to explain why methods disagree.
SEES = {"neural_cleanse": "small pixel patches", "tabor": "small, compact pixel patches",
        "deepinspect": "small perturbations of inputs it synthesises without data",
        "feature_re": "input transformations (warps, blends, filters) that switch on a few hidden features",
        "reference_contrast": "small changes that move the suspect but not clean reference models",
        "text_inversion": "a few inserted words found by relaxed optimisation",
        "text_phrase": "inserted phrases found by relaxed optimisation",
        "text_ngram": "inserted words and short phrases found by exact search"}




def _data_words(verdict) -> str:
    n = verdict.data.get("clean_images", 0)
    unit = INPUT_WORDS.get(verdict.data.get("kind", "image"), "samples")
    if not n:
        return f"data-free (no clean {unit})"
    frac, pool = verdict.data.get("clean_fraction"), verdict.data.get("capped_from")
    if frac and pool:
        return f"{n} clean {unit} (a balanced sample, capped, of the {pool:,} that are {frac:.0%} of the training split)"
    return f"{n} clean {unit}" + (f" ({frac:.0%} of the training split)" if frac else "")


def _calibration_words(verdict) -> str:
    cal = verdict.calibration or {}
    if verdict.statistic == "paper":
        return "each paper's own rule (anomaly index above its threshold), uncalibrated"
    statistic = "the lower-half MAD index, " if verdict.statistic == "lower_mad" else ""
    if not verdict.calibrated:
        return (f"{statistic}UNCALIBRATED (no clean reference models: the stated false-positive rate assumes a normal "
                "spread of clean classes)")
    words = f"{statistic}calibrated on {cal.get('reference_models')} clean reference models: {cal.get('source')}"
    if cal.get("stand_in"):  # verdict.stand_in_rows: only the methods whose rows carry more tests
        extra = {PRETTY.get(m, m): row_tests(verdict.method_rows(m))[1:] for m in verdict.methods}
        share = {2: "half", 3: "a third"}
        judged = [f"{name} is also judged {' and '.join(STAND_IN_TEST_WORDS[t] for t in tests)}, each of its "
                  f"{len(tests) + 1} tests at {share.get(len(tests) + 1, f'1/{len(tests) + 1}')} of the rate"
                  for name, tests in extra.items() if tests]
        once = [name for name, tests in extra.items() if not tests]
        if judged:
            words += f"; as they are another architecture, {'; '.join(judged)}"
        if judged and once:
            # why is in verdict.stand_in_tests: no such test for the method, or its prior flags these clean references
            words += f" ({', '.join(once)}: against the references alone)"
    return words


def verdict_text(verdict, classes=None) -> str:
    """The verdict in one plain sentence, then how it was reached (computed from the evidence)."""
    names = [PRETTY.get(m, m) for m in verdict.methods]
    rate = f"{verdict.false_positive_rate:.0%}".replace(".0%", "%")
    how = (f"Checked with {', '.join(names)} at a {rate} false-positive rate, {_calibration_words(verdict)}; "
           f"{_data_words(verdict)}; score {verdict.score:.3f}.")
    if verdict.backdoored:
        which = ", ".join(class_label(c, classes) for c in verdict.targets)
        return (f"This model looks BACKDOORED: a trigger far smaller than normal turns inputs into {which}. " + how)
    caveat = ""
    if verdict.data.get("kind") == "tabular" and len({e["class"] for e in verdict.evidence}) > 2:
        # measured: 2 of 6 backdoors found on held-out tables of 4 and 7 classes (README, Tables)
        caveat = (" Caution: on tables of more than two classes this scan has found only 2 of 6 planted backdoors "
                  "so far, so a clean verdict there is weak evidence.")
    if _every_class_followed(verdict):
        return ("No backdoor found, but the scan could not judge: for every class the trigger found also moves the "
                "clean reference models (a route every model takes), so its size was counted as the whole input "
                "and says nothing about this model. Treat the result as inconclusive. " + how + caveat)
    return "No backdoor found: no class can be reached with an unusually small trigger by any method. " + how + caveat


def _every_class_followed(verdict) -> bool:
    """Every method ran by contrast with the references and every class's trigger moved them too
    (`reference_contrast`'s `followed_by_references`): no statistic depended on the suspect."""
    dets = list(getattr(verdict, "detections", None) or [])
    followed = [d.extra.get("followed_by_references") for d in dets]
    return bool(dets) and all(f and all(f) for f in followed)


def disagreement_notes(verdict, classes=None) -> list[str]:
    """One sentence per class on which the methods disagree, saying why that is expected."""
    notes = []
    classes_seen = sorted({e["class"] for e in verdict.evidence})
    for c in classes_seen:
        rows = [e for e in verdict.evidence if e["class"] == c]
        yes = [e for e in rows if e["flagged"]]
        no = [e for e in rows if not e["flagged"]]
        fmt = lambda e: (f"{PRETTY.get(e['method'], e['method'])} (index{' over its threshold' if judged_by_tests([e]) else ''} "
                         f"{e['statistic']:.2f} vs threshold {e['threshold']:.2f})")
        if not yes and c in verdict.targets:
            notes.append(_together_note(verdict, c, rows, fmt, classes))
            continue
        if not yes or not no:
            continue
        seen = "; ".join(f"{PRETTY.get(e['method'], e['method'])} looks for {SEES.get(e['method'], 'its own kind of trigger')}"
                         for e in yes)
        notes.append(f"{class_label(c, classes).capitalize()}: flagged by {', '.join(fmt(e) for e in yes)}, not by "
                     f"{', '.join(fmt(e) for e in no)}. The methods look for different triggers ({seen}), so one "
                     "finding is enough: the verdict counts a class as a target when any method flags it, with the "
                     "thresholds set so that all methods together keep the stated false-positive rate.")
    return notes


def _together_note(verdict, c, rows, fmt, classes) -> str:
    """Why a class no method flags alone is a target: the methods' combined evidence passed the cut."""
    combo = verdict.combination
    p = ", ".join(f"{PRETTY.get(e['method'], e['method'])} {e['p_value']:.3g}" for e in rows)
    return (f"{class_label(c, classes).capitalize()}: no method flags it alone ({', '.join(fmt(e) for e in rows)}), but "
            f"together they do: their p-values for it ({p}) combine by {combo['rule']} to "
            f"{combo['statistic'][str(c)]:.3g}, under the cut {combo['cut']:.3g} that keeps the stated "
            "false-positive rate for all methods together.")


def verdict_sentence(det: Detection, classes=None) -> str:
    """The verdict in words a non-expert understands."""
    name = PRETTY.get(det.method, det.method)
    if det.backdoored:
        which = ", ".join(class_label(c, classes) for c in det.flagged_classes)
        if len(det.flagged_classes) >= len(row_classes(det)):
            return (f"{name}: flags every class ({which}), so no class stands apart from the others: its rule "
                    "cannot single out a planted trigger's target here.")
        return (f"{name}: this model looks BACKDOORED. A tiny, unusual pattern is enough to turn almost any input "
                f"into {which}, far smaller than for the other classes - the signature of a planted trigger.")
    return (f"{name}: no backdoor found. Every class needs a similarly large change to the input before the model "
            f"switches to it (no index above {det.threshold:g}).")


def row_classes(det: Detection) -> list[int]:
    """The class of each per-class row of `det` (a scan may cover only some classes)."""
    return list(det.extra.get("targets") or range(len(det.anomaly_index)))


def trigger_of(det: Detection, cls: int) -> PatchTrigger:
    """The reconstructed trigger of class `cls` as a PatchTrigger (for the trigger file)."""
    i = row_classes(det).index(cls)
    pattern = det.patterns[i].detach().cpu().float()
    if pattern.ndim == 3:  # image patterns live in [0, 1]; a feature vector's pattern is in raw units
        pattern = pattern.clamp(0, 1)
    return PatchTrigger(det.masks[i].detach().cpu().float().clamp(0, 1), pattern, int(cls), origin="reconstructed")


def write_triggers(det: Detection, out: Path, *, taken: set[int] | None = None, classes=None) -> list[Path]:
    """`trigger_<class>.npz` for every flagged class (or for `classes`, the verdict's flags); returns the paths.

    `taken` holds classes an earlier method already wrote; this method's trigger for such a
    class goes to `trigger_<class>_<method>.npz` so the first method's file is kept.
    """
    paths = []
    if det.masks is None and det.triggers is None:
        return paths
    taken = set() if taken is None else taken
    for cls in (det.flagged_classes if classes is None else classes):
        name = f"trigger_{cls}.npz" if cls not in taken else f"trigger_{cls}_{det.method}.npz"
        taken.add(cls)
        path = out / name
        trigger = trigger_of(det, cls) if det.masks is not None else det.triggers[row_classes(det).index(cls)]
        save_trigger(trigger, path)
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


def row_tests(rows) -> list[str]:
    """The stand-in tests a method's rows carry, in the verdict's order (none: not a stand-in row)."""
    return [name for name in STAND_IN_TEST_WORDS if rows and name in rows[0]]


def judged_by_tests(rows) -> bool:
    """Whether a method's evidence rows come from `verdict.stand_in_rows`: each number is then the
    largest of several tests' index over its own threshold (threshold 1)."""
    return bool(row_tests(rows))


def stand_in_words(rows) -> str:
    """What a stand-in row's number is (verdict.stand_in_rows), said once under its chart and table."""
    tests = row_tests(rows)
    n = len(tests)
    return (f"The references are another architecture than this model's, so each class is tested {n} ways, each at "
            f"1/{n} of the rate: {'; '.join(STAND_IN_TEST_WORDS[t] for t in tests)}. The number drawn is each test's "
            f"value divided by its own threshold, the largest of the {n}; above 1 flags the class. report.json keeps "
            "every test's figures.")


def chart_values(det: Detection, evidence: list[dict] | None) -> tuple[list[float], float, set[int], str]:
    """What the chart and table show: the verdict's one-sided statistic when a verdict is given.

    Returns (value per row, threshold, flagged row numbers, axis label). Without a verdict
    the method's own anomaly index and flags are shown.
    """
    targets = row_classes(det)
    if evidence:
        by_class = {e["class"]: e for e in evidence}
        values = [by_class[c]["statistic"] for c in targets]
        threshold = by_class[targets[0]]["threshold"]
        flagged = {i for i, c in enumerate(targets) if by_class[c]["flagged"]}
        if judged_by_tests(evidence):
            return values, threshold, flagged, "index over its threshold"  # stand_in_words under the chart
        return values, threshold, flagged, "one-sided index (the verdict's statistic)"
    flagged = {i for i, c in enumerate(targets) if c in det.flagged_classes}
    return list(det.anomaly_index), det.threshold, flagged, "anomaly index"


def method_sentence(det: Detection, evidence: list[dict] | None, classes=None) -> str:
    """One sentence per method, computed from the numbers its chart draws."""
    from poisonguard.detect.calibration import judged_per_class

    name = PRETTY.get(det.method, det.method)
    values, threshold, flagged, _ = chart_values(det, evidence)
    targets = row_classes(det)
    index = "index over its threshold" if judged_by_tests(evidence) else "index"
    # A per-class null compares each class with the same class on the clean references, not
    # with the suspect's other classes (`verdict.method_index`); the sentence says which.
    against_references = bool(evidence) and judged_per_class(det.method, len(targets))
    if flagged:
        which = ", ".join(f"{class_label(targets[i], classes)} ({index} {values[i]:.2f})" for i in sorted(flagged))
        than = "on the clean reference models" if against_references else "for the other classes"
        if len(flagged) == len(values) and not against_references:
            return (f"{name}: flags every class ({which}), above the threshold {threshold:.2f}: no class stands apart "
                    "from the others, so the index cannot single out a target.")
        return (f"{name}: flags {which}, above the threshold {threshold:.2f}: a far smaller trigger than {than} turns "
                f"inputs into {'it' if len(flagged) == 1 else 'them'}.")
    top = max(range(len(values)), key=lambda i: values[i])
    close = ("no class needs a much smaller trigger than on the clean reference models" if against_references
             else "every class needs a similarly large trigger")
    followed = det.extra.get("followed_by_references") or []
    route = (", whose trigger also moves the clean reference models: a route every model takes"
             if top < len(followed) and followed[top] else "")
    return (f"{name}: no class above the threshold {threshold:.2f} (largest {index} {values[top]:.2f}, "
            f"{class_label(targets[top], classes)}{route}): {close}.")


def detection_html(det: Detection, examples: torch.Tensor | None, classes=None, evidence: list[dict] | None = None) -> str:
    """Bar chart of the per-class statistic with its threshold, then every class's trigger as images."""
    k = len(det.anomaly_index)
    targets = row_classes(det)
    names = list(classes) if classes else []
    labels = [str(names[c]) if c < len(names) else str(c) for c in targets]
    values, threshold, flagged, ylabel = chart_values(det, evidence)
    html = img(bar_chart(values, labels=labels, threshold=threshold,
                         highlight=sorted(flagged), ylabel=ylabel,
                         title=f"{PRETTY.get(det.method, det.method)}: {ylabel} per class"), f"{ylabel} per class")
    rows = [[targets[i], labels[i], det.mask_l1[i] if det.mask_l1 else None, values[i],
             "flagged" if i in flagged else ""] for i in range(k)]
    html += table(["class", "name", "trigger size", ylabel, ""], rows)
    if judged_by_tests(evidence):
        html += f"<p>{escape(stand_in_words(evidence))}</p>"
    followed = [i for i, f in enumerate(det.extra.get("followed_by_references") or []) if f]
    if followed and det.masks is not None:  # reference_contrast: the size is not the mask drawn below
        html += (f"<p>Class(es) {escape(', '.join(labels[i] for i in followed))}: the trigger found also moves the "
                 f"clean reference models (more than {det.extra.get('max_reference_success', 0.5):.0%} of their inputs), "
                 f"so it is a route every model takes, not "
                 f"backdoor evidence; its size is counted as the whole input ({det.masks[0].numel()} "
                 f"{'features' if det.masks.ndim == 2 else 'pixels'}), "
                 "whatever the mask shown.</p>")
    if det.masks is not None and det.masks.ndim == 2:  # feature vectors: a table per class, not a picture
        from poisonguard.report.evaluation import feature_trigger_table

        names = det.extra.get("feature_names")
        for i in classes_to_draw(det):
            html += f"<h4>class {escape(labels[i])}{' *' if i in flagged else ''}: features the trigger sets</h4>"
            html += feature_trigger_table(det.masks[i].detach().cpu(), det.patterns[i].detach().cpu(), names)
    elif det.masks is not None:
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


def detection_record(det: Detection, verdict=None) -> dict:
    """The report's `detections` entry for one method.

    With a verdict, `backdoored`, `flagged_classes`, `anomaly_index` and `threshold` are the
    verdict's own judgement of this method (its statistic and calibrated threshold per class,
    the numbers the charts and stdout show); the method's own rule (the paper's MAD test; none
    for a two-class model) is kept beside them under `own_rule`, so the two never read as one.
    """
    record = det.to_dict()
    rows = verdict.method_rows(det.method) if verdict is not None else []
    if not rows:
        return record
    record["own_rule"] = {k: record[k] for k in ("backdoored", "flagged_classes", "anomaly_index", "threshold")}
    thresholds = sorted({e["threshold"] for e in rows})
    record.update(backdoored=any(e["flagged"] for e in rows), flagged_classes=[e["class"] for e in rows if e["flagged"]],
                  anomaly_index=[e["statistic"] for e in rows],
                  threshold=thresholds[0] if len(thresholds) == 1 else [e["threshold"] for e in rows],
                  statistic=verdict.statistic)
    if judged_by_tests(rows):  # say what `anomaly_index` holds, and keep each test's figures
        record["anomaly_index_is"] = ("each test's index over its own threshold, the largest of: "
                                      + "; ".join(STAND_IN_TEST_WORDS[t] for t in row_tests(rows)))
        record["tests"] = {name: {"index": [e[name]["index"] for e in rows], "threshold": rows[0][name]["threshold"]}
                           for name in row_tests(rows)}
    return record


def add_to_report(report, det: Detection, examples, classes=None, *, order: int = 20, verdict=None) -> None:
    """The method's section; with a verdict, its chart, table and sentence use the verdict's statistic."""
    report.append("detections", detection_record(det, verdict))
    title = f"Trigger reconstruction: {PRETTY.get(det.method, det.method)}"
    evidence = verdict.method_rows(det.method) if verdict is not None else None
    summary = method_sentence(det, evidence, classes) if evidence else verdict_sentence(det, classes)
    report.add_section(title, detection_html(det, examples, classes, evidence), summary=summary, order=order)


def verdict_section_html(verdict) -> str:
    """The evidence per method and every disagreement explained (the verdict's sentence is the section summary)."""
    head = ["method", "flags", "largest index (class)", "threshold"]
    rows = []
    for method in verdict.methods:
        mine = verdict.method_rows(method)
        top = max(mine, key=lambda e: e["statistic"])
        over = " over its threshold" if judged_by_tests(mine) else ""
        rows.append([PRETTY.get(method, method), ", ".join(str(e["class"]) for e in mine if e["flagged"]) or "none",
                     f"{top['statistic']:.2f}{over} ({top['class']})", f"{top['threshold']:.2f}"])
    html = table(head, rows)
    if verdict.disagreements:
        html += "<p><b>Where the methods disagree</b></p><ul>" + "".join(
            f"<li>{escape(n)}</li>" for n in verdict.disagreements) + "</ul>"
    return html


def add_verdict(report, verdict, classes=None, *, title: str = "Verdict", order: int = 10) -> None:
    """The verdict first: its sentence, the evidence per method, and every disagreement explained."""
    report.set("verdict", verdict.to_dict())
    report.add_section(title, verdict_section_html(verdict), summary=verdict.sentence, order=order)
