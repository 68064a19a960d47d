"""The `repair` stage of `demo` and `checklist`.

checklist: when the scan stage flagged the model, unlearn its reconstructed triggers
(Neural Cleanse's mitigation); otherwise run the trigger-agnostic default. A table gets
`repair`'s tabular default, `retrain` on a quarter of the rows, either way (unlearning left
28% attack success on Fair where retraining left 5%: notes/issue-19.md).
demo: run every registered method with its defaults (what `poisonguard repair` runs) and
compare them before/after.
The repaired model (checklist: the one method run; demo: the one the summary names) is saved
to OUT/repaired/model.<ext> in the input's format (checklist), or OUT/repaired/model.pt when
only the built-in architecture is known (demo).
"""

from __future__ import annotations

import dataclasses
import logging

from poisonguard.data import per_class_subset
from poisonguard.repair.base import REPAIRERS
from poisonguard.repair.report import best_repair, repair_section
from poisonguard.repair.unlearning import detection_triggers
from poisonguard.stages import StageContext, register_stage

log = logging.getLogger(__name__)

# Trigger-agnostic method for models no scan flagged (best of benchmarks/repair_mnist.py).
DEFAULT_METHOD = "refit"
TABLE_METHOD = "retrain"  # as `poisonguard repair` on a table
# checklist --quick: a shorter reconstruction when unlearning has no scan triggers to use.
QUICK = {"unlearn": {"reverse_epochs": 20}}


def scan_triggers(detection) -> list:
    """PatchTriggers for the classes a `results.Detection` flagged (none unless it says backdoored)."""
    if detection is None or not getattr(detection, "backdoored", False):
        return []
    return detection_triggers(detection)


def _why(method: str, scanned: list, command: str) -> str:
    if scanned and method == "unlearn":
        return "the scan flagged classes " + ", ".join(str(t.target) for t in scanned)
    if method == TABLE_METHOD and command != "demo":
        return "a table: the architecture trained anew on the clean rows, whatever the scan found"
    return "demo: every method" if command == "demo" else "no scan flagged the model: trigger-agnostic default"


@register_stage("repair", order=30)
def repair_stage(ctx: StageContext) -> None:
    from poisonguard.detect.scan import defaults_for

    tabular = ctx.splits.kind == "tabular"
    # the defender's clean share, as scan's and repair's: 5% of images, a quarter of a table's rows
    clean = per_class_subset(ctx.splits.train, fraction=defaults_for(ctx.splits.kind)["clean_fraction"], seed=ctx.seed)
    scanned = scan_triggers(ctx.shared.get("scan"))
    trigger = ctx.trigger if ctx.trigger is not None else (scanned[0] if scanned else None)
    reconstructed_by = "scan" if ctx.trigger is None and trigger is not None else None
    if ctx.command == "demo":
        from poisonguard.repair.base import applies_to

        methods = [n for n in REPAIRERS.names() if applies_to(n, ctx.splits.kind)]
    elif tabular:
        methods = [TABLE_METHOD]
    else:
        methods = ["unlearn" if scanned else DEFAULT_METHOD]
    results, failed = [], []
    for name in methods:
        kwargs = dict(QUICK.get(name, {})) if ctx.quick and ctx.command != "demo" else {}
        if name == "unlearn" and scanned:
            kwargs.update(triggers=scanned, triggers_source="scan")
        try:
            repairer = REPAIRERS.get(name)(seed=ctx.seed, device=ctx.device, **kwargs)
            r = repairer.repair(ctx.model, clean, trigger=trigger, test=ctx.splits.test,
                                trigger_reconstructed_by=reconstructed_by)
        except Exception as exc:  # one broken method must not hide the others' results
            log.exception("repair method %s failed", name)
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        r = dataclasses.replace(r, extra={**r.extra, "why": _why(name, scanned, ctx.command)})
        ctx.report.append("repairs", r)
        results.append(r)
    ctx.shared["repair"] = results
    if results:
        best = best_repair(results)
        training = {"command": ctx.command, "method": best.method}
        from poisonguard.cli.inputs import feature_record

        extra = {"clean_accuracy": best.after.clean_accuracy, "attack_success_rate": best.after.attack_success_rate,
                 **feature_record(ctx.splits)}
        loaded = ctx.shared.get("loaded")  # the checklist's LoadedModel: write the repair back in its format
        saved_to = None
        if loaded is not None:
            meta = loaded.save_like(best.model, ctx.out_dir / "repaired", classes=ctx.splits.classes,
                                    input_shape=ctx.splits.input_shape, training=training, extra=extra)
            saved_to = meta["path"]
        elif ctx.arch:
            from poisonguard.models import save_model

            saved_to = ctx.out_dir / "repaired" / "model.pt"
            meta = save_model(best.model, saved_to, arch=ctx.arch, classes=ctx.splits.classes,
                              input_shape=ctx.splits.input_shape, training=training, extra=extra)
        if saved_to is not None:
            ctx.report.set("repaired_model", {"path": str(saved_to), "sha256": meta["sha256"], "method": best.method})
        title, html, summary = repair_section(results, splits=ctx.splits, trigger=trigger, saved_to=saved_to)
        ctx.report.add_section(title, html, summary=summary, order=30)
    if failed:
        raise RuntimeError("repair methods failed: " + "; ".join(failed))
