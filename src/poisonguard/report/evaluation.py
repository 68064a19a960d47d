"""Report sections the foundation commands and several stages share: a model's evaluation and
a picture of its trigger."""

from __future__ import annotations

INPUT_WORDS = {"image": "images", "tabular": "rows", "text": "texts"}


def counted(n: int, noun: str) -> str:
    """"1 input", "3 inputs": a count with its noun in the right number (regular plurals)."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def class_label(c: int, classes=None) -> str:
    """"class 3", or "class 3 ('cat')" where the class has a name other than its index."""
    name = str(classes[c]) if classes and 0 <= c < len(classes) else str(c)
    return f"class {c}" + (f" ('{name}')" if name != str(c) else "")


# What an attack success rate's trigger is, by the trigger's origin (attacks.triggers.ORIGINS).
TRIGGER_WORDS = {"attack": "real", "reconstructed": "reconstructed"}


def trigger_word(trigger) -> str | None:
    """"real" (the attack's own trigger), "reconstructed" (a detector's), "given" (a file that
    does not say who made it, so no report may call it the attack's); None without a trigger."""
    if trigger is None:
        return None
    return TRIGGER_WORDS.get(getattr(trigger, "origin", None), "given")


def evaluation_summary(ev, *, trigger_kind: str | None = "real", kind: str = "image", all_to_all: bool = False) -> str:
    """The sentence beside an evaluation table, from the same Evaluation; `kind` is the data's
    (image, tabular, text) and `all_to_all` an attack that sends each class to the next."""
    text = f"Clean accuracy {ev.clean_accuracy:.1%}"
    if ev.attack_success_rate is None:
        return text + "."
    inputs = INPUT_WORDS.get(kind, "inputs")
    if all_to_all:
        return text + (f"; the {trigger_kind} trigger makes {ev.attack_success_rate:.1%} of test {inputs} go to "
                       "the next class (all-to-all).")
    return text + (f"; the {trigger_kind} trigger makes {ev.attack_success_rate:.1%} of other-class test {inputs} "
                   "go to the target.")


def evaluation_section(report, model, splits, trigger, *, title: str, order: int = 10):
    """Evaluate, add a before-anything section with the trigger shown, and return the Evaluation.

    The trigger's origin says what it is (`trigger_word`: real, reconstructed or given).
    """
    from poisonguard.report import table
    from poisonguard.train import evaluate

    trigger_kind = trigger_word(trigger)

    ev = evaluate(model, splits.test, trigger)
    html = table(["clean accuracy", f"attack success rate ({trigger_kind} trigger)" if trigger else "attack success rate"],
                 [[ev.clean_accuracy, ev.attack_success_rate]])
    if trigger is not None:
        html += trigger_figure(trigger, splits)
    from poisonguard.attacks import ALL_TO_ALL

    all_to_all = trigger is not None and getattr(trigger, "target", None) == ALL_TO_ALL
    summary = evaluation_summary(ev, trigger_kind=trigger_kind, kind=getattr(splits, "kind", "image"), all_to_all=all_to_all)
    report.add_section(title, html, summary=summary, order=order)
    return ev


def feature_trigger_table(mask, pattern, feature_names=None, *, threshold: float = 0.05) -> str:
    """A feature-vector trigger as a table: each feature the mask touches, its weight and value (raw units)."""
    from poisonguard.report import table

    rows = []
    for i in sorted(range(len(mask)), key=lambda j: -float(mask[j])):
        if float(mask[i]) < threshold:
            break
        name = feature_names[i] if feature_names is not None and i < len(feature_names) else f"feature {i}"
        rows.append([name, round(float(mask[i]), 3), round(float(pattern[i]), 4)])
    return table(["feature", "mask", "value set"], rows or [["(no feature above mask 0.05)", "", ""]])


def trigger_figure(trigger, splits) -> str:
    from poisonguard.attacks import PatchTrigger
    from poisonguard.report import img
    from poisonguard.report.plots import image_grid

    if splits.kind == "tabular":
        names = getattr(splits.meta, "feature_names", None)
        return feature_trigger_table(trigger.mask, trigger.pattern, names)

    examples = splits.test.x[:4]
    stamped = trigger.apply(examples)
    if isinstance(trigger, PatchTrigger):
        row = [trigger.mask, trigger.pattern, *stamped]
        titles = ["mask", "pattern", *["triggered"] * len(stamped)]
    else:
        row = [*examples[:2], *stamped[:2], (stamped[0] - examples[0]).abs() * 5]
        titles = ["clean", "clean", "warped", "warped", "|diff| x5"]
    return img(image_grid([row], col_titles=titles), "trigger")

