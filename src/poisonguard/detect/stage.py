"""The `scan` stage of `demo` and `checklist`: Neural Cleanse on the model under test.

It shares the Detection as `ctx.shared["scan"]` (masks and patterns on it) and writes
`trigger_<class>.npz` for each flagged class, so the repair stage can unlearn that trigger.
"""

from __future__ import annotations

from poisonguard.data import per_class_subset
from poisonguard.detect.neural_cleanse import NeuralCleanse
from poisonguard.detect.report import add_to_report, write_triggers
from poisonguard.stages import StageContext, register_stage


@register_stage("scan", order=20)
def scan_stage(ctx: StageContext) -> None:
    clean = per_class_subset(ctx.splits.train, fraction=0.05, seed=ctx.seed)
    # Quick (demo) mode: fewer, shorter epochs keep the stage near 20 s on 2 CPU cores.
    options = {"epochs": 12, "early_stop_patience": 4, "patience": 2} if ctx.quick else {}
    det = NeuralCleanse(seed=ctx.seed, device=ctx.device, **options).detect(ctx.model, clean)
    ctx.shared["scan"] = det
    paths = write_triggers(det, ctx.out_dir)
    if paths:
        ctx.shared["scan_triggers"] = paths
    if ctx.trigger is not None and getattr(ctx.trigger, "target", None) is not None:
        found = ctx.trigger.target in det.flagged_classes
        det.extra["true_target"] = int(ctx.trigger.target)
        det.extra["true_target_found"] = bool(found)
    examples = ctx.splits.test.x[: ctx.splits.num_classes]
    add_to_report(ctx.report, det, examples, list(ctx.splits.classes), order=20)
