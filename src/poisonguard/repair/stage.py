"""The `repair` stage of `demo` and `checklist`.

checklist: when the scan stage flagged the model, unlearn its reconstructed triggers
(Neural Cleanse's mitigation); otherwise run the trigger-agnostic default. The repaired
model is saved to OUT/repaired/model.<ext> in the input's format (model.pt for demo).
demo: run every method with short settings and compare them before/after.
"""

from __future__ import annotations

import logging

from poisonguard.attacks import PatchTrigger
from poisonguard.data import per_class_subset
from poisonguard.repair.base import REPAIRERS
from poisonguard.repair.report import repair_section
from poisonguard.stages import StageContext, register_stage

log = logging.getLogger(__name__)

# Trigger-agnostic method for models no scan flagged (best of benchmarks/repair_mnist.py).
DEFAULT_METHOD = "refit"
CLEAN_FRACTION = 0.05
QUICK = {"fine_pruning": {"epochs": 8}, "refit": {"epochs": 8, "decay_every": 2},
         "wild": {"epochs": 8}, "unlearn": {"epochs": 8, "reverse_steps": 60}}


def scan_triggers(detection) -> list[PatchTrigger]:
    """PatchTriggers for the classes a `results.Detection` flagged (masks (K, H, W), patterns (K, C, H, W))."""
    if detection is None or not getattr(detection, "backdoored", False):
        return []
    if detection.masks is None or detection.patterns is None:
        return []
    out = []
    for k in detection.flagged_classes:
        mask = detection.masks[k].detach().float().cpu().clamp(0, 1)
        pattern = detection.patterns[k].detach().float().cpu().clamp(0, 1)
        out.append(PatchTrigger(mask, pattern, int(k)))
    return out


@register_stage("repair", order=30)
def repair_stage(ctx: StageContext) -> None:
    clean = per_class_subset(ctx.splits.train, fraction=CLEAN_FRACTION, seed=ctx.seed)
    scanned = scan_triggers(ctx.shared.get("scan"))
    trigger = ctx.trigger if ctx.trigger is not None else (scanned[0] if scanned else None)
    if ctx.command == "demo":
        methods = REPAIRERS.names()
    else:
        methods = ["unlearn" if scanned else DEFAULT_METHOD]
    results = []
    for name in methods:
        kwargs = dict(QUICK.get(name, {})) if ctx.quick else {}
        if name == "unlearn" and scanned:
            kwargs["triggers"] = scanned
        repairer = REPAIRERS.get(name)(seed=ctx.seed, device=ctx.device, **kwargs)
        results.append(repairer.repair(ctx.model, clean, trigger=trigger, test=ctx.splits.test))
    for r in results:
        r.extra["why"] = ("the scan flagged classes " + ", ".join(str(t.target) for t in scanned)
                          if scanned and r.method == "unlearn" else
                          "demo: every method" if ctx.command == "demo" else "no scan flagged the model: trigger-agnostic default")
        ctx.report.append("repairs", r)
    ctx.shared["repair"] = results
    loaded = ctx.shared.get("loaded")  # the checklist's LoadedModel: write the repair back in its format
    if ctx.command == "checklist" and (loaded is not None or ctx.arch):
        from poisonguard.models import save_model

        extra = {"clean_accuracy": results[0].after.clean_accuracy,
                 "attack_success_rate": results[0].after.attack_success_rate}
        training = {"command": "checklist", "method": results[0].method}
        if loaded is not None:
            loaded.save_like(results[0].model, ctx.out_dir / "repaired", classes=ctx.splits.classes,
                             input_shape=ctx.splits.input_shape, training=training, extra=extra)
        else:
            save_model(results[0].model, ctx.out_dir / "repaired" / "model.pt", arch=ctx.arch, classes=ctx.splits.classes,
                       input_shape=ctx.splits.input_shape, training=training, extra=extra)
    title, html, summary = repair_section(results, splits=ctx.splits, trigger=trigger)
    if scanned and ctx.trigger is None:
        html = "<p>Attack success measured with the scan's reconstructed trigger.</p>" + html
    ctx.report.add_section(title, html, summary=summary, order=30)
