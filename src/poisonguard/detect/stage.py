"""The `scan` stage of `demo` and `checklist`: the scan verdict on the model (and the demo's clean model).

The stage runs `scan_verdict` (Neural Cleanse and data-free DeepInspect at the demo's
budget; the full default set otherwise), uncalibrated on images: training reference models
does not fit the demo's time budget, and the verdict says so. A table gets `scan`'s tabular
default instead (`detect.scan.defaults_for`): reference_contrast against clean references
trained on a quarter of the rows, calibrated on them, since a two-class model can be judged
only that way and a table's references train in seconds. The clean comparison model of the
demo is scanned the same way, so the report shows the verdict on both. `ctx.shared["scan"]`
is the Detection whose verdict flags the prime target (restricted to the verdict's flags,
with its masks), `ctx.shared["verdict"]` the Verdict, and `trigger_<class>.npz` is written
for each flagged class so the repair stage can unlearn that trigger.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from poisonguard.data import per_class_subset
from poisonguard.detect.report import add_to_report, add_verdict, write_triggers
from poisonguard.detect.scan import defaults_for
from poisonguard.detect.verdict import DEFAULT_METHODS, QUICK_VERDICT_METHODS, scan_verdict
from poisonguard.report.evaluation import trigger_word
from poisonguard.stages import StageContext, register_stage

log = logging.getLogger(__name__)

# Quick (demo) mode: NC with fewer, shorter epochs and DeepInspect keep the stage near 20 s
# per model on 2 CPU cores; FeatureRE joins outside quick mode.
QUICK_OPTIONS = {"neural_cleanse": {"epochs": 12, "early_stop_patience": 4, "patience": 2}}


def _with_truth(det, true_target):
    """The Detection with the true target's outcome in `extra` (a new object: results stay frozen)."""
    if true_target is None:
        return det
    return replace(det, extra={**det.extra, "true_target": int(true_target),
                               "true_target_found": int(true_target) in det.flagged_classes})


def shared_detection(verdict, detections):
    """The Detection repair should use: the first with masks that flags a verdict target."""
    for det in detections:
        flagged = tuple(e["class"] for e in verdict.method_rows(det.method) if e["flagged"])
        if flagged and det.masks is not None:
            order = sorted(flagged, key=lambda c: verdict.targets.index(c) if c in verdict.targets else len(verdict.targets))
            return replace(det, backdoored=True, flagged_classes=tuple(order))
    return replace(detections[0], backdoored=False, flagged_classes=())


def _plan(ctx: StageContext, clean) -> dict:
    """scan_verdict's keywords for this stage: images uncalibrated at the stage's budget, tables as `scan` does."""
    defaults = defaults_for(ctx.splits.kind)
    data_info = {"clean_fraction": defaults["clean_fraction"]}
    if ctx.splits.kind != "tabular":
        return {"methods": QUICK_VERDICT_METHODS if ctx.quick else DEFAULT_METHODS,
                "options": QUICK_OPTIONS if ctx.quick else {}, "data_info": data_info}
    from poisonguard.detect.calibration import calibrate, reference_architecture, train_references, weights_metadata

    loaded = ctx.shared.get("loaded")  # the checklist's model file; the demo's models are built-ins by name
    meta = weights_metadata(loaded) if loaded is not None else {"architecture": ctx.arch}
    arch = reference_architecture(meta, ctx.splits.input_shape, ctx.model)
    n, methods = defaults["reference_models"], list(defaults["methods"])
    references = train_references(clean, architecture=arch, n_models=n, seed=ctx.seed, device=ctx.device)
    calibration = calibrate(clean, architecture=arch, methods=methods, n_models=n, seed=ctx.seed,
                            device=ctx.device, models=references)
    return {"methods": methods, "calibration": calibration, "references": references, "data_info": data_info}


def _scan(ctx: StageContext, model, clean, plan: dict):
    return scan_verdict(model, clean, seed=ctx.seed, device=ctx.device, input_shape=ctx.splits.input_shape,
                        num_classes=ctx.splits.num_classes, classes=list(ctx.splits.classes),
                        on_skip=lambda name, exc: log.warning("scan stage: %s skipped: %s", name, exc), **plan)


@register_stage("scan", order=20)
def scan_stage(ctx: StageContext) -> None:
    clean = per_class_subset(ctx.splits.train, fraction=defaults_for(ctx.splits.kind)["clean_fraction"], seed=ctx.seed)
    plan = _plan(ctx, clean)
    verdict = _scan(ctx, ctx.model, clean, plan)
    detections = list(verdict.detections)
    # known only when the caller gave the attack's trigger: a scan's own reconstruction would grade itself
    true_target = getattr(ctx.trigger, "target", None) if trigger_word(ctx.trigger) != "reconstructed" else None
    detections = [_with_truth(d, true_target) for d in detections]
    add_verdict(ctx.report, verdict, list(ctx.splits.classes), title="Verdict: the model under examination", order=19)
    ctx.shared["verdict"] = verdict
    ctx.shared["scan"] = shared_detection(verdict, detections)
    examples = ctx.splits.test.x[: ctx.splits.num_classes]
    taken: set[int] = set()
    paths = []
    for order, det in enumerate(detections):
        flagged = [e["class"] for e in verdict.method_rows(det.method) if e["flagged"]]
        paths += write_triggers(det, ctx.out_dir, taken=taken, classes=flagged)
        add_to_report(ctx.report, det, examples, list(ctx.splits.classes), order=20 + order, verdict=verdict)
    if paths:
        ctx.shared["scan_triggers"] = paths
    clean_model = getattr(ctx, "clean_model", None)
    if clean_model is not None:
        clean_verdict = _scan(ctx, clean_model, clean, plan)
        ctx.shared["clean_verdict"] = clean_verdict
        ctx.report.set("clean_model_verdict", clean_verdict.to_dict())
        from poisonguard.detect.report import verdict_section_html

        ctx.report.add_section("Verdict: the clean comparison model", verdict_section_html(clean_verdict),
                               summary=clean_verdict.sentence, order=19)
