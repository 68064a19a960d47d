"""The `certify` stage of demo and checklist: a randomized-smoothing certificate for the model."""

from __future__ import annotations

import dataclasses

from poisonguard.certify.sections import smoothing_section, trigger_coverage
from poisonguard.certify.smoothing import STANDARDISED, RandomizedSmoothing, smoothing_space
from poisonguard.stages import StageContext, register_stage

QUICK = {"sigma": 0.25, "n0": 64, "n": 500, "max_examples": 60}
FULL = {"sigma": 0.25, "n0": 100, "n": 10_000, "max_examples": 500}


@register_stage("certify", order=40)
def certify_stage(ctx: StageContext) -> None:
    """Certify evenly spaced test images of ctx.model (not modified); quick: n = 500, 60 images.

    With a known trigger, the report compares each certified radius with the trigger's L2 size.
    """
    settings = QUICK if ctx.quick else FULL
    method = RandomizedSmoothing(alpha=0.001, seed=ctx.seed, device=ctx.device, **settings)
    model, test, scale = smoothing_space(ctx.model, ctx.splits)  # a table: standardised units, as `certify`
    cert = method.certify(model, test)
    if scale is not None:
        cert = dataclasses.replace(cert, extra={**cert.extra, "input_space": STANDARDISED})
    if ctx.trigger is not None:
        coverage = trigger_coverage(cert, ctx.trigger, ctx.splits.test, scale=scale)
        cert = dataclasses.replace(cert, extra={**cert.extra, "trigger": coverage})
    ctx.report.set("certification", cert)
    ctx.shared["certify"] = cert
    smoothing_section(ctx.report, cert, model=ctx.report.data.get("model"))
