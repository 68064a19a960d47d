"""The HTML sections of the text commands, each sentence computed from the numbers beside it.

report.json carries the same figures; these put them in report.html, which was a title and a
model line for every text command.
"""

from __future__ import annotations

from types import SimpleNamespace

from markupsafe import escape

from poisonguard.report.evaluation import class_label, counted, evaluation_summary, trigger_word
from poisonguard.report.report import table


def trigger_words(trigger, classes=None) -> str:
    """What a text trigger inserts, where, and for which class, in words."""
    pieces = " or ".join(f"\u201c{p}\u201d" for p in trigger.pieces)
    where = trigger.position if isinstance(trigger.position, str) else f"at word {trigger.position}"
    return f"inserts {pieces} ({where}); target {class_label(int(trigger.target), classes)}"


def add_evaluation(report, ev: dict, *, title: str, trigger=None, order: int = 10, classes=None) -> None:
    """Clean accuracy and, with a trigger, its attack success rate on the held-out texts."""
    head = ["clean accuracy", "test texts"]
    row = [ev["clean_accuracy"], ev["n_clean"]]
    if trigger is not None:
        head += [f"attack success rate ({trigger_word(trigger)} trigger)", "triggered texts"]
        row += [ev["attack_success_rate"], ev["n_attack"]]
    html = table(head, [row])
    if trigger is not None:
        html += f"<p>The trigger {escape(trigger_words(trigger, classes))}.</p>"
    summary = evaluation_summary(SimpleNamespace(**ev), trigger_kind=trigger_word(trigger), kind="text")
    report.add_section(title, html, summary=summary, order=order)


def add_scan(report, verdict, words_of: dict[int, list[str]], classes) -> None:
    """The verdict's sentence and evidence (as an image scan shows them), then each found trigger."""
    from poisonguard.detect.report import verdict_section_html

    report.add_section("Verdict", verdict_section_html(verdict), summary=verdict.sentence, order=10)
    if words_of:
        rows = [[class_label(c, classes), " ".join(w)] for c, w in sorted(words_of.items())]
        report.add_section("Reconstructed triggers", table(["target class", "words"], rows),
                           summary=f"{counted(len(rows), 'trigger file')} written, trigger_<class>.json, for repair "
                                   "--from-scan.",
                           order=20)


def sanitize_sentence(verdict: str, flagged: int, n: int, targets, classes) -> str:
    if verdict != "poisoned":
        return f"The corpus looks clean: none of its {n} rows was flagged."
    names = ", ".join(class_label(int(c), classes) for c in targets) or "no single class"
    return f"The corpus looks poisoned: {flagged} of {n} rows flagged ({flagged / n:.1%}), labelled {names}."


MAX_CANDIDATES = 20  # word groups shown, highest flip share first (report.json keeps them all)


def add_sanitize(report, *, verdict: str, flagged: int, n: int, targets, methods, triggers, classes,
                 candidates=None) -> None:
    html = table(["rows", "flagged", "target classes", "methods"],
                 [[n, flagged, ", ".join(class_label(int(c), classes) for c in targets) or "none", ", ".join(methods)]])
    if triggers:
        html += table(["trigger words", "target class"],
                      [[" ".join(map(str, t["words"])), class_label(int(t["class"]), classes)] for t in triggers])
    if candidates is not None:  # the word filter's evidence: every group it tested, flagged or not
        top = sorted(candidates, key=lambda t: -t["flip_share"])[:MAX_CANDIDATES]
        html += (f"<p>Word groups found almost only in one class's rows and tested by inserting them into other "
                 f"classes' texts: {len(candidates)}"
                 + (f", the {len(top)} that flip most shown" if len(top) < len(candidates) else "") + ".</p>")
        if top:
            html += table(["words", "class", "rows", "share of other texts sent to the class", "flagged"],
                          [[" ".join(map(str, t["words"])), class_label(int(t["class"]), classes), t["rows"],
                            t["flip_share"], "yes" if t["flagged"] else ""] for t in top])
    report.add_section("Data sanitization", html, summary=sanitize_sentence(verdict, flagged, n, targets, classes),
                       order=10)


def add_repair(report, before: dict, after: dict, info: dict, *, unlearned: int, trigger=None) -> None:
    rows = [["before", before["clean_accuracy"], before["attack_success_rate"]],
            ["after", after["clean_accuracy"], after["attack_success_rate"]]]
    word = trigger_word(trigger)
    html = table(["model", "clean accuracy", f"attack success rate ({word} trigger)" if word else "attack success rate"],
                 rows)
    html += (f"<p>{counted(info['pruned_units'], 'hidden unit')} and {counted(info['pruned_words'], 'word')} pruned; "
             f"{counted(unlearned, 'phrase')} from the scan unlearned.</p>")
    summary = f"Fine-pruning: clean accuracy {before['clean_accuracy']:.1%} -> {after['clean_accuracy']:.1%}"
    if before["attack_success_rate"] is None:
        summary += " (no --trigger: attack success not measured)."
    else:
        summary += f"; attack success ({word} trigger) {before['attack_success_rate']:.1%} -> {after['attack_success_rate']:.1%}."
    report.add_section("Repair", html, summary=summary, order=10)
