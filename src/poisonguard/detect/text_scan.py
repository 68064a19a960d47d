"""The text scan's calibrated verdict: trigger inversion on the suspect and on clean reference models.

Text tasks often have few classes and natural one-word shortcuts (a topic word flips a weak
model's inputs to its class), so a statistic across the suspect's classes alone cannot tell a
backdoor from an easy class. As `scan` does for images (`detect/calibration.py`), the
defender's clean data trains `n_models` clean reference models of the suspect's architecture
and tokenizer; the inversion runs on each, and the verdict (`detect/verdict.py`, `judge`)
subtracts every class's mean log size on the references and compares the suspect's largest
index with the references' leave-one-out null.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from poisonguard.data.text import encode
from poisonguard.detect.calibration import Calibration, fit_null, settings_key
from poisonguard.detect import text_ngram  # noqa: F401  (registers text_ngram)
from poisonguard.detect.text_inversion import TEXT_DETECTORS
from poisonguard.detect.verdict import LOWER_MAD_NULL, judge
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

# One relaxed slot finds a rare word (DBS); the exact n-gram search finds a sentence trigger's
# phrase, which the relaxed 4-slot `text_phrase` (the default until session 8, still registered:
# `--method text_inversion,text_phrase`) missed (notes/issue-19-text.md, Session 8).
METHODS = ("text_inversion", "text_ngram")
MIN_SIGMA = 0.1  # a handful of references cannot promise a spread of log sizes tighter than this
# Priors of a clean text model's largest index (log(max) ~ N(mu, s)) for the uncalibrated
# verdict, kept beside the text methods (verdict.py reads LOWER_MAD_NULL by method name).
# Set from the clean text_cnn models of the tuning seeds 10-12 of benchmarks/text_checklist.py
# (never its report seeds 0-2); see notes/issue-19-text.md.
TEXT_PRIORS = {"text_inversion": {"mu": 0.44, "s": 0.39}, "text_phrase": {"mu": 0.44, "s": 0.39},
               "text_ngram": {"mu": 0.44, "s": 0.39}}  # text_ngram's: the same, not measured for it
for _name, _prior in TEXT_PRIORS.items():
    LOWER_MAD_NULL.setdefault(_name, _prior)


def _detect(model, data, options: dict, seed: int, device: str, embedding, method: str = METHODS[0]):
    det = TEXT_DETECTORS.get(method)(seed=seed, device=device, **options.get(method, {}))
    return det.detect(model, data.x, data.y, num_classes=data.num_classes, embedding=embedding,
                      vocab=data.meta.vocab if data.meta is not None else None)


def calibrate_text(tm, clean, *, n_models: int = 4, epochs: int = 10, seed: int = 0, device: str = "auto",
                   options: dict | None = None, methods=METHODS, inputs=None) -> Calibration:
    """Train `n_models` clean models like the suspect on `clean` (a TextCorpus) and fit the null.

    The inversion runs on `inputs` (a TextCorpus; default `clean`), the texts the suspect's scan
    inverts on, so references and suspect are measured alike. The references are the suspect's
    own architecture over its own tokenizer: a built-in one rebuilt by name, a user's own
    (`--arch file.py:build`, typed on this command line) rebuilt by the same code and arguments.
    """
    from poisonguard.models.text import DEFAULT_TEXT_ARCH, TEXT_ARCHITECTURES, text_recipe
    from poisonguard.train import fit

    recipe = text_recipe(tm.arch)
    start = time.perf_counter()
    data = encode(clean, tm.tokenizer)
    probe = encode(inputs if inputs is not None else clean, tm.tokenizer)
    sizes = {m: [] for m in methods}
    for r in range(n_models):
        ref = _fresh_like(tm, seed + 1000 + r)
        fit(ref.model, data, epochs=epochs, batch_size=64, augment="none", seed=seed + 1000 + r, device=device,
            **recipe)
        for m in methods:
            sizes[m].append(list(_detect(ref.model, probe, options or {}, seed, device, ref.embedding_module, m).mask_l1))
        log.info("text calibration: reference %d/%d", r + 1, n_models)
    settings = {"arch": tm.arch, "n": n_models, "epochs": epochs, "seed": seed, "clean": len(clean), **recipe}
    source = f"the suspect's own architecture ({tm.arch}) re-initialised and trained on the clean data"
    if tm.arch not in TEXT_ARCHITECTURES:  # a user's code: its own training recipe is unknown here
        source += (f" with the {DEFAULT_TEXT_ARCH} recipe (Adam {recipe['lr']:g}, {epochs} epochs), which may train it less "
                   "sharply than its owner did; a sharper suspect's classes then look small")
    return Calibration(key=settings_key(settings), architecture=tm.arch, source=source, n_models=n_models,
                       clean_images=len(clean), seconds=round(time.perf_counter() - start, 2),
                       methods={m: fit_null(s) for m, s in sizes.items()}, settings=settings)


def _fresh_like(tm, seed: int):
    """A new, seeded TextModel of `tm`'s architecture, tokenizer and classes."""
    from poisonguard.models.text import TEXT_ARCHITECTURES
    from poisonguard.models.text_files import TextModel, new_text_model

    if tm.arch in TEXT_ARCHITECTURES:
        return new_text_model(tm.arch, tm.tokenizer, tm.classes, seed=seed, **tm.arch_kwargs)
    from poisonguard.models.arch import _call, _load_callable

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _call(_load_callable(tm.arch), tm.arch, dict(tm.arch_kwargs))
    return TextModel(model, tm.tokenizer, tm.classes, tm.arch, tm.embedding, dict(tm.arch_kwargs))


def reference_index(sizes: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-class one-sided indices of a model's sizes (K,) against R reference models' sizes (R, K).

    index_c = (mean_r log ref_rc - log size_c) / sigma: how many reference spreads the class's
    trigger is smaller than on clean models. sigma is the robust spread (1.4826 x MAD) of the
    references' own leave-one-out residuals pooled over classes, floored at MIN_SIGMA: with
    few classes a spread across the suspect's classes (the MAD index) is carried by the outlier
    itself, while the references give every class its own clean baseline.
    """
    logs = refs.clamp_min(1e-12).log()
    r = len(logs)
    resid = torch.cat([logs[i] - logs[[j for j in range(r) if j != i]].mean(0) for i in range(r)])
    sigma = max(float(1.4826 * (resid - resid.median()).abs().median()), MIN_SIGMA)
    return (logs.mean(0) - sizes.clamp_min(1e-12).log()) / sigma, sigma


def calibrated_text_verdict(dets, calibration: Calibration, *, fpr: float, classes=None, data=None):
    """The verdict from per-class reference indices; Bonferroni over classes and methods.

    Under the null an index is about standard normal, so a class is flagged above the normal
    quantile at 1 - fpr / (K x M); the score is 1 minus the smallest Bonferroni p-value.
    """
    from statistics import NormalDist

    from poisonguard.detect.report import disagreement_notes, verdict_text
    from poisonguard.detect.verdict import Verdict

    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    k, m = len(dets[0].mask_l1), len(dets)
    normal = NormalDist()
    threshold = normal.inv_cdf(1 - fpr / (k * m))
    evidence, hits, best_p = [], set(), {}
    for det in dets:
        null = calibration.null_for(det.method)
        if null is None:
            raise UserError(f"the calibration has no references for {det.method}")
        index, _ = reference_index(torch.tensor(det.mask_l1, dtype=torch.float64),
                                   torch.tensor(null["sizes"], dtype=torch.float64))
        for c, v in enumerate(index.tolist()):
            p = min(1.0, k * m * (1 - normal.cdf(v)))
            flagged = v > threshold
            if flagged:
                hits.add(c)
            best_p[c] = min(best_p.get(c, 1.0), p)
            evidence.append({"method": det.method, "class": c, "statistic": round(v, 6), "threshold": round(threshold, 6),
                             "flagged": flagged, "p_value": round(p, 8)})
    targets = sorted(hits, key=lambda c: (best_p[c], c))
    for e in evidence:
        e["agreed"] = e["flagged"] == (e["class"] in targets)
    verdict = Verdict(backdoored=bool(targets), targets=tuple(targets), score=round(1 - min(best_p.values()), 6),
                      false_positive_rate=float(fpr), evidence=tuple(evidence), statistic="reference",
                      calibrated=True, calibration=calibration.summary(), methods=tuple(d.method for d in dets),
                      data=dict(data or {}))
    return replace(verdict, sentence=verdict_text(verdict, classes), disagreements=tuple(disagreement_notes(verdict, classes)))


def text_scan_verdict(tm, clean, *, calibration: Calibration | None = None, fpr: float = 0.05, seed: int = 0,
                      device: str = "auto", options: dict | None = None, methods=METHODS):
    """Invert a trigger per class on the suspect `tm` (TextModel) with `clean` (TextCorpus) and judge."""
    data = encode(clean, tm.tokenizer)
    dets = [_detect(tm.model, data, options or {}, seed, device, tm.embedding_module, m) for m in methods]
    info = {"clean_images": len(clean), "clean_texts": len(clean), "kind": "text"}
    if calibration is not None:
        verdict = calibrated_text_verdict(dets, calibration, fpr=fpr, classes=tm.classes, data=info)
    else:  # uncalibrated: the lower-half MAD index across the suspect's classes, the statistic the priors above were set on
        verdict = judge(dets, fpr=fpr, statistic="lower_mad", classes=tm.classes, data=info)
    return replace(verdict, detections=tuple(dets))
