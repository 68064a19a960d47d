"""The HTML section for repairs: before/after table, pruning curves, the trigger used."""

from __future__ import annotations

from typing import Sequence

from poisonguard.results import Repair


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def repair_section(results: Sequence[Repair], *, splits=None, trigger=None) -> tuple[str, str, str]:
    """(title, html, one-sentence summary) for one or more repairs of the same model."""
    from poisonguard.report import img, table
    from poisonguard.report.plots import line_chart

    rows = [[r.method, r.before.clean_accuracy, r.after.clean_accuracy, r.before.attack_success_rate,
             r.after.attack_success_rate, round(r.seconds, 1)] for r in results]
    html = table(["method", "clean accuracy before", "after", "attack success before", "after", "seconds"], rows)
    for r in results:
        curve = r.extra.get("curve")
        if not curve:
            continue
        x = [c.get("fraction", c["pruned"]) for c in curve]
        series = {"clean accuracy (clean data)": [c["clean_accuracy"] for c in curve]}
        rate_key = "attack_success_rate" if "attack_success_rate" in curve[0] else "trigger_rate"
        if all(c.get(rate_key) is not None for c in curve):
            series["attack success (clean data + trigger)"] = [c[rate_key] for c in curve]
        xlabel = "share of channels pruned" if "fraction" in curve[0] else "neurons pruned"
        html += img(line_chart(x, series, xlabel=xlabel, ylabel="rate",
                               title=f"{r.method}: accuracy vs pruning ({r.extra.get('layer', '')})"), "pruning curve")
        html += (f"<p>{r.method} pruned {r.extra.get('pruned_channels', r.extra.get('pruned_neurons'))} of "
                 f"{r.extra.get('channels', r.extra.get('neurons'))} in layer <code>{r.extra.get('layer')}</code>.</p>")
    if trigger is not None and splits is not None:
        from poisonguard.report.evaluation import trigger_figure

        html += "<p>Trigger used to measure the attack success rate:</p>" + trigger_figure(trigger, splits)
    best = min(results, key=lambda r: (r.after.attack_success_rate if r.after.attack_success_rate is not None else 1,
                                       -r.after.clean_accuracy))
    if best.after.attack_success_rate is None:
        summary = (f"{best.method} retrained the model on a little clean data; clean accuracy went from "
                   f"{_pct(best.before.clean_accuracy)} to {_pct(best.after.clean_accuracy)} (no trigger known to "
                   "measure the attack with).")
    else:
        summary = (f"After {best.method}, the trigger fools the model on {_pct(best.after.attack_success_rate)} of inputs "
                   f"(before: {_pct(best.before.attack_success_rate)}) and it still classifies "
                   f"{_pct(best.after.clean_accuracy)} of clean images correctly (before: {_pct(best.before.clean_accuracy)}).")
    return "Backdoor removal", html, summary
