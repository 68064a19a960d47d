"""The HTML section for repairs: before/after table, pruning curves, the trigger used."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

from poisonguard.results import Repair


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def trigger_label(result: Repair) -> str | None:
    """Which trigger a repair's attack success rates were measured with, in words (None: no trigger)."""
    kind = result.extra.get("attack_success_rate_trigger")
    if kind == "real":
        return "the real trigger"
    if kind == "reconstructed":
        return f"a trigger reconstructed by {result.extra.get('trigger_reconstructed_by', 'the method')}"
    if kind == "given":
        return "the given trigger (its file does not say whether the attack or a scan made it)"
    return None


def best_repair(results: Sequence[Repair]) -> Repair:
    """The repair the summary names: lowest attack success rate after, then highest clean accuracy."""
    return min(results, key=lambda r: (r.after.attack_success_rate if r.after.attack_success_rate is not None else 1,
                                       -r.after.clean_accuracy))


def majority_share(test) -> float:
    """The share of the test data's largest class: what always answering that class scores."""
    return float(test.y.bincount().max()) / len(test)


def no_better_than_majority(result: Repair, majority: float | None) -> bool:
    """The repair took a model that beat always answering the largest class down to no better:
    its attack success rate then says little, and the model is no model to use."""
    return majority is not None and result.after.clean_accuracy <= majority < result.before.clean_accuracy


def filter_mode_sentence(extra: dict) -> str:
    """What unlearning's filter mode (Neural Cleanse's input filter) built: it leaves the weights
    as they were, so the attack success rate above is unchanged by design."""
    real = extra.get("filter_detection_rate_real_trigger")
    return (f"This mode leaves the model's weights unchanged: it builds an input filter on "
            f"{len(extra.get('filter_neurons', []))} penultimate neurons that flags "
            f"{_pct(extra.get('filter_detection_rate_reconstructed'))} of inputs carrying the reconstructed trigger"
            + (f" and {_pct(real)} carrying the real one" if real is not None else "")
            + f", at {_pct(extra.get('filter_false_positive_rate_clean'))} of clean inputs. The filter is reported, "
              "not saved; `poisonguard filter` is the run-time input filter.")


def repair_summary(results: Sequence[Repair], *, kind: str = "image", majority: float | None = None) -> str:
    """One sentence on the best repair, from the same numbers as the table's row for it; `kind`
    is the data's (image, tabular, text), which names the inputs; `majority`, the test data's
    `majority_share`, adds a warning when the repair left no better than that."""
    from poisonguard.report.evaluation import INPUT_WORDS

    best = best_repair(results)
    if best.after.attack_success_rate is None:
        text = (f"{best.method} retrained the model on a little clean data; clean accuracy went from "
                f"{_pct(best.before.clean_accuracy)} to {_pct(best.after.clean_accuracy)} (no trigger known to "
                "measure the attack with).")
    else:
        text = (f"After {best.method}, {trigger_label(best)} fools the model on {_pct(best.after.attack_success_rate)} "
                f"of inputs (before: {_pct(best.before.attack_success_rate)}) and it still classifies "
                f"{_pct(best.after.clean_accuracy)} of clean {INPUT_WORDS.get(kind, 'inputs')} correctly "
                f"(before: {_pct(best.before.clean_accuracy)}).")
    if best.extra.get("mode") == "filter":
        text += " " + filter_mode_sentence(best.extra)
    if no_better_than_majority(best, majority):
        text += (f" That is no better than always answering the largest class ({_pct(majority)}), so the attack "
                 "success rate says little and the repaired model is no model to use: try another method or more "
                 "epochs.")
    return text


def _curve_html(r: Repair) -> str:
    from poisonguard.report import img
    from poisonguard.report.plots import line_chart

    curve = r.extra.get("curve")
    if not curve:
        return ""
    x = [c["fraction"] if "fraction" in c else c["pruned"] for c in curve]
    # measured on the repair's own clean data, not on the test set the table's columns use
    series = {"clean accuracy (the repair's clean data)": [c["clean_accuracy"] for c in curve]}
    rate_key = "attack_success_rate" if "attack_success_rate" in curve[0] else "trigger_rate"
    if all(c.get(rate_key) is not None for c in curve):
        label = "attack success (its clean data + trigger)" if rate_key == "attack_success_rate" else \
            "attack success (its clean data + reconstructed trigger)"
        series[label] = [c[rate_key] for c in curve]
    xlabel = "share of channels pruned" if "fraction" in curve[0] else "neurons pruned"
    return (img(line_chart(x, series, xlabel=xlabel, ylabel="rate",
                           title=f"{r.method}: accuracy vs pruning ({r.extra.get('layer', '')})"), "pruning curve")
            + f"<p>{r.method} pruned {r.extra.get('pruned_channels', r.extra.get('pruned_neurons'))} of "
              f"{r.extra.get('channels', r.extra.get('neurons'))} {'channels' if 'channels' in r.extra else 'neurons'} "
              f"in layer <code>{escape(str(r.extra.get('layer')))}</code>. The curve is measured on the clean data "
              "the repair uses; the table above, on the test set.</p>")


def repair_section(results: Sequence[Repair], *, splits=None, trigger=None,
                   saved_to: str | Path | None = None) -> tuple[str, str, str]:
    """(title, html, one-sentence summary) for one or more repairs of the same model."""
    from markupsafe import escape

    from poisonguard.report import table

    rows = [[r.method, r.before.clean_accuracy, r.after.clean_accuracy, r.before.attack_success_rate,
             r.after.attack_success_rate, trigger_label(r) or "no trigger", f"{r.seconds:.1f}"] for r in results]
    html = table(["method", "clean accuracy before", "after", "attack success before", "after",
                  "attack success measured with", "seconds"], rows)
    html += "".join(_curve_html(r) for r in results)
    if trigger is not None and splits is not None:
        from poisonguard.report.evaluation import trigger_figure

        labels = sorted({trigger_label(r) for r in results if trigger_label(r)})
        html += (f"<p>Trigger used to measure the attack success rate ({escape(', '.join(labels))}):</p>"
                 + trigger_figure(trigger, splits))
    if saved_to is not None:
        html += f"<p>The repaired model ({escape(best_repair(results).method)}) is saved as <code>{escape(str(saved_to))}</code>.</p>"
    majority = majority_share(splits.test) if getattr(splits, "test", None) is not None and len(splits.test) else None
    return "Backdoor removal", html, repair_summary(results, kind=getattr(splits, "kind", "image"), majority=majority)
