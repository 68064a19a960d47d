"""HTML for federated results: accuracy and ASR curves per round, and the aggregator x attack table."""

from __future__ import annotations

from poisonguard.report import Report, img, table
from poisonguard.report.plots import line_chart
from poisonguard.results import Federated


def summary_rows(results: list[Federated]) -> list[dict]:
    """One dict per run: last-round clean accuracy and ASR, the highest ASR, or the error."""
    rows = []
    for r in results:
        if not r.rounds:
            rows.append({"aggregator": r.aggregator, "attack": r.attack, "error": r.extra.get("error")})
            continue
        asrs = [x.attack_success_rate for x in r.rounds if x.attack_success_rate is not None]
        # the trigger's own effect: the share of inputs not sent to the target anyway that it sends there
        # a round counts only where at least a tenth of the attack's inputs do not reach the target
        # anyway: when the model answers the target everywhere, the "effect" of the trigger on the
        # one or two others left (1.0 from one row) measures nothing
        effects = [x.extra.get("trigger_effect", x.attack_success_rate) if _measurable(x.extra) else 0.0
                   for x in r.rounds if x.attack_success_rate is not None]
        rows.append({"aggregator": r.aggregator, "attack": r.attack, "clean_accuracy": r.rounds[-1].clean_accuracy,
                     "attack_success_rate": r.rounds[-1].attack_success_rate,
                     "max_attack_success_rate": max(asrs) if asrs else None,
                     "untriggered_target_rate": r.rounds[-1].extra.get("untriggered_target_rate"),
                     "target_is_largest_class": r.rounds[-1].extra.get("target_is_largest_class"),
                     "max_trigger_effect": max(effects) if effects else None})
    return rows


MAX_UNTRIGGERED = 0.9  # above this share sent to the target without the trigger, its effect is not measured


def _measurable(values: dict) -> bool:
    """Whether the trigger's own effect can be measured: a round's `extra`, or a summary row."""
    untriggered = values.get("untriggered_target_rate")
    return untriggered is None or untriggered <= MAX_UNTRIGGERED


def federated_summary(rows: list[dict], *, threshold: float = 0.5) -> str:
    """One sentence from the table's rows: a backdoor "got through" a rule when its attack success
    rate passed `threshold` in ANY round (the "highest" column), not only in the last one, and
    by more than the share of untriggered inputs the model sends to the target anyway (a table
    model answering the majority class everywhere "succeeds" on every row with no attacker)."""
    measured = [r for r in rows if r.get("max_attack_success_rate") is not None]
    if not measured:
        return "No attack success rate was measured (no backdoor attack in these runs)."
    # A model sending (nearly) every input to the target: the majority answer of a table model when
    # the target is the largest class, else a model the malicious clients took over.
    through = [r for r in measured if r["max_attack_success_rate"] > threshold
               and (r.get("max_trigger_effect") is None or r["max_trigger_effect"] > threshold
                    or r.get("target_is_largest_class") is False)]
    natural = [r for r in measured if r["max_attack_success_rate"] > threshold and r not in through]
    if natural and not through:
        top = max(natural, key=lambda r: r["max_attack_success_rate"])
        return (f"The attack success rate reached {top['max_attack_success_rate']:.0%} ({top['aggregator']}), but the "
                f"model sends {top['untriggered_target_rate']:.0%} of inputs to the target without the trigger too "
                f"(clean accuracy {top['clean_accuracy']:.0%}): that is the model's answer for most inputs, and the "
                "trigger adds nothing measurable to it; no sign of a backdoor the malicious clients planted.")
    if through:
        worst = max(through, key=lambda r: r["max_attack_success_rate"])
        held = sorted({r["aggregator"] for r in measured} - {r["aggregator"] for r in through + natural})
        taken = [r for r in through if not _measurable(r)]
        return ("The backdoor got through " + ", ".join(sorted({r["aggregator"] for r in through})) +
                f" (up to {worst['max_attack_success_rate']:.0%} attack success with {worst['aggregator']}): with those "
                "aggregation rules a few malicious clients control what the shared model does on triggered inputs"
                + (f"; {', '.join(sorted({r['aggregator'] for r in taken}))} even sends most inputs to the target "
                   "without the trigger, a class that is not the test data's largest: the clients took that model "
                   "over" if taken else "")
                + (f"; {', '.join(held)} kept it at or below {threshold:.0%} in every round." if held else "."))
    top = max(measured, key=lambda r: r["max_attack_success_rate"])
    return (f"No backdoor reached a {threshold:.0%} success rate in any round (highest: "
            f"{top['max_attack_success_rate']:.0%}, {top['aggregator']}): the aggregation rules shown kept the "
            "malicious clients from taking over the shared model.")


def federated_section(report: Report, results: list[Federated], *, order: int = 60,
                      title: str = "Federated learning: malicious clients vs aggregation") -> None:
    """Add curves (clean accuracy, ASR per round) and a summary table for one or more runs."""
    runs = [r for r in results if r.rounds]
    rounds = [x.round for x in runs[0].rounds] if runs else []
    acc = {f"{r.aggregator} / {r.attack}": [x.clean_accuracy for x in r.rounds] for r in runs}
    asr = {f"{r.aggregator} / {r.attack}": [x.attack_success_rate for x in r.rounds]
           for r in runs if r.rounds[0].attack_success_rate is not None}
    html = ""
    if runs and len(runs) <= 12:
        html += img(line_chart(rounds, acc, xlabel="round", ylabel="clean accuracy", title="Clean accuracy"), "accuracy")
        if asr:
            html += img(line_chart(rounds, asr, xlabel="round", ylabel="attack success rate",
                                   title="Backdoor attack success rate"), "ASR")
    rows = [[r["aggregator"], r["attack"], r.get("clean_accuracy"), r.get("attack_success_rate"),
             r.get("max_attack_success_rate"), r.get("untriggered_target_rate"), r.get("error")]
            for r in summary_rows(results)]
    html += table(["aggregator", "attack", "clean accuracy (last round)", "ASR (last round)", "ASR (highest)",
                   "sent to the target without the trigger (last round)", "error"], rows)
    summary = federated_summary(summary_rows(results))
    report.add_section(title, html, summary=summary, order=order)
