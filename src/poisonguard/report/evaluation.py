"""Report sections the foundation commands and several stages share: a model's evaluation and
a picture of its trigger."""

from __future__ import annotations

def evaluation_summary(ev, *, trigger_kind: str | None = "real") -> str:
    """The sentence beside an evaluation table, from the same Evaluation."""
    text = f"Clean accuracy {ev.clean_accuracy:.1%}"
    if ev.attack_success_rate is None:
        return text + "."
    return text + (f"; the {trigger_kind} trigger makes {ev.attack_success_rate:.1%} of other-class test images "
                   "go to the target.")


def evaluation_section(report, model, splits, trigger, *, title: str, order: int = 10, trigger_kind: str = "real"):
    """Evaluate, add a before-anything section with the trigger shown, and return the Evaluation.

    `trigger_kind` says what the trigger is ("real": the attack's own; "reconstructed").
    """
    from poisonguard.report import table
    from poisonguard.train import evaluate

    ev = evaluate(model, splits.test, trigger)
    html = table(["clean accuracy", f"attack success rate ({trigger_kind} trigger)" if trigger else "attack success rate"],
                 [[ev.clean_accuracy, ev.attack_success_rate]])
    if trigger is not None:
        html += trigger_figure(trigger, splits)
    report.add_section(title, html, summary=evaluation_summary(ev, trigger_kind=trigger_kind), order=order)
    return ev


def trigger_figure(trigger, splits) -> str:
    from poisonguard.attacks import PatchTrigger
    from poisonguard.report import img
    from poisonguard.report.plots import image_grid

    examples = splits.test.x[:4]
    stamped = trigger.apply(examples)
    if isinstance(trigger, PatchTrigger):
        row = [trigger.mask, trigger.pattern, *stamped]
        titles = ["mask", "pattern", *["triggered"] * len(stamped)]
    else:
        row = [*examples[:2], *stamped[:2], (stamped[0] - examples[0]).abs() * 5]
        titles = ["clean", "clean", "warped", "warped", "|diff| x5"]
    return img(image_grid([row], col_titles=titles), "trigger")

