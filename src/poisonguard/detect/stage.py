"""The `scan` stage of `demo` and `checklist`: Neural Cleanse, then data-free DeepInspect.

The two rest on different evidence (NC: the smallest mask that flips clean images;
DeepInspect: the smallest perturbation a generator needs on inputs synthesised from the
model alone), and on small models one can miss what the other finds, so both report.
`ctx.shared["scan"]` is NC's Detection when NC flags the model, else DeepInspect's when it
does (masks and patterns on it), and `trigger_<class>.npz` is written for each flagged
class, so the repair stage can unlearn that trigger.
"""

from __future__ import annotations

import logging

from poisonguard.data import per_class_subset
from poisonguard.detect.deepinspect import DeepInspect
from poisonguard.detect.neural_cleanse import NeuralCleanse
from poisonguard.detect.report import add_to_report, write_triggers
from poisonguard.errors import UserError
from poisonguard.stages import StageContext, register_stage

log = logging.getLogger(__name__)


@register_stage("scan", order=20)
def scan_stage(ctx: StageContext) -> None:
    clean = per_class_subset(ctx.splits.train, fraction=0.05, seed=ctx.seed)
    # Quick (demo) mode: fewer, shorter epochs keep the stage near 20 s on 2 CPU cores.
    options = {"epochs": 12, "early_stop_patience": 4, "patience": 2} if ctx.quick else {}
    detections = [NeuralCleanse(seed=ctx.seed, device=ctx.device, **options).detect(ctx.model, clean)]
    try:
        detections.append(DeepInspect(seed=ctx.seed, device=ctx.device).detect(
            ctx.model, None, input_shape=ctx.splits.input_shape, num_classes=ctx.splits.num_classes))
    except UserError as exc:  # e.g. a model the inversion cannot handle: keep NC's verdict
        log.warning("scan stage: DeepInspect skipped: %s", exc)
    ctx.shared["scan"] = next((d for d in detections if d.backdoored), detections[0])
    examples = ctx.splits.test.x[: ctx.splits.num_classes]
    true_target = getattr(ctx.trigger, "target", None)  # known only when the caller gave the real trigger
    taken: set[int] = set()
    paths = []
    for order, det in enumerate(detections):
        paths += write_triggers(det, ctx.out_dir, taken=taken)
        if true_target is not None:
            det.extra["true_target"] = int(true_target)
            det.extra["true_target_found"] = true_target in det.flagged_classes
        add_to_report(ctx.report, det, examples, list(ctx.splits.classes), order=20 + order)
    if paths:
        ctx.shared["scan_triggers"] = paths
