"""One verdict over several detectors: calibrated per-class statistics, combined p-values.

Each detector reports a per-class trigger size (Neural Cleanse: mask L1; DeepInspect: the
generated perturbation; FeatureRE: the feature-space mask). The verdict turns the sizes of
one method into one-sided indices with `trimmed_loo_index` (large = a suspiciously small
trigger: the class's log size below the other classes', studentised by their spread; the
lower-half MAD of calibration versions 2-4 stays one option away, `statistic="lower_mad"`,
and the reason for the change is in that function's docstring). Calibrated on clean
reference models (`calibration.py`), the null of a clean
model's LARGEST index is simulated: the references give each class's mean log size (subtracted
first) and its relative spread, and 20,000 synthetic clean models drawn from those spreads give
the law of the statistic itself, small-sample noise of its scale included (`simulated_maxima`).
Each class gets a p-value per method (the Monte Carlo one under that law). Without references
the log-normal priors `UNCALIBRATED_NULL` (log max ~ N(mu, s), measured on the tuning zoo)
hold, with the normal quantile, and the verdict says it is uncalibrated. References of another
architecture than the suspect's (a built-in standing in) judge each method by up to three
tests, each at 1/T of the rate (`stand_in_tests`, `stand_in_rows`): against them, on the
suspect's own sizes with those priors, and (Neural Cleanse) by its smallest trigger's gap
(`gap.py`). The methods' p-values of a class are combined by min(Bonferroni, Fisher) (`combine.py`), cut so that all
methods together keep the stated false-positive rate `fpr`: a class is a target when one
method alone passes its threshold (the one every chart draws, its index at the level cut / M)
or when the methods' evidence together passes the cut. `score` is 1 minus the model's
combined p-value.

`statistic="paper"` keeps each paper's own rule instead: the method's anomaly index against
its threshold (2), flagged as the paper says; the score is then uncalibrated.

    from poisonguard.detect.verdict import scan_verdict
    verdict = scan_verdict(model, clean_data, fpr=0.05)   # verdict.to_dict(), verdict.detections
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from poisonguard.data import ImageData
from poisonguard.detect import combine
from poisonguard.detect.anomaly import reference_index, robust_index
from poisonguard.detect.calibration import judged_per_class
from poisonguard.errors import UserError
from poisonguard.results import Detection, _ToDict

DEFAULT_METHODS = ("neural_cleanse", "deepinspect", "feature_re")
# Tables: NC's smallest trigger is a natural route on clean models too (notes/issue-19.md);
# the reference-contrast inversion is the one that separates, and it is judged calibrated.
TABULAR_METHODS = ("reference_contrast",)
# The demo's budget (and the tests'): the two methods that fit about 20 s per model on 2 cores.
QUICK_VERDICT_METHODS = ("neural_cleanse", "deepinspect")
STATISTICS = ("robust", "lower_mad", "paper")
_NORMAL = NormalDist()
# Null of a clean model's LARGEST index, per method: log(max index) ~ Normal(mu, s). Without
# reference models these priors hold, measured on the clean models of the MNIST tuning zoo
# (benchmarks/detect_verdict.py, tuning seeds only; never the report seeds).
# The default statistic (`trimmed_loo_index`, calibration version 5): the 4 clean tuning models
# of the zoo as rebuilt in session 6 (mnist_cnn x 2, lenet5, resnet20; seed 10), largest index:
UNCALIBRATED_NULL = {
    "neural_cleanse": {"mu": 1.10, "s": 0.21},  # 3.13, 3.96, 2.50, 2.65
    "tabor": {"mu": 1.08, "s": 0.29},  # 2.53, 4.10, 2.46 (resnet20 not scanned)
    "deepinspect": {"mu": 0.78, "s": 0.29},  # 2.49, 1.45, 2.21, 2.83
    "feature_re": {"mu": 2.53, "s": 1.67},  # 24.8, 94.6, 4.4, 2.4 (a naturally easy class "8" again)
}
# `--statistic lower_mad` (`log_lower_mad_index`, the default up to calibration version 4):
LOWER_MAD_NULL = {
    # 3 clean tuning models (mnist_cnn x 2, lenet5; seed 10): largest NC index 2.1, 1.8, 1.0.
    "neural_cleanse": {"mu": 0.44, "s": 0.39},
    "tabor": {"mu": 0.44, "s": 0.39},  # not measured apart: TABOR shares NC's engine and statistic
    # Same models: largest DeepInspect index 1.5, 0.9, 1.9.
    "deepinspect": {"mu": 0.31, "s": 0.38},
    # The 3 clean tuning models of seed 10, rescanned in session 2 (lr 0.01, 200 steps): largest
    # FeatureRE index 1.6, 6.8, 32.4 (a naturally easy class, "8", stands out against ~200
    # near-equal sizes): a wide prior, so uncalibrated FeatureRE decides only on extreme evidence.
    "feature_re": {"mu": 1.96, "s": 1.5},
}
DEFAULT_NULL = {"mu": 0.44, "s": 0.39}
MIN_S = 0.25  # a handful of references cannot promise a tighter null than this


def uncalibrated_null(method: str, statistic: str = "robust") -> dict:
    """The prior null of `method`'s largest index under `statistic` (no reference models)."""
    priors = LOWER_MAD_NULL if statistic == "lower_mad" else UNCALIBRATED_NULL
    return priors.get(method, DEFAULT_NULL)


def index_threshold(null: dict, fpr: float, n_methods: int, *, n_refs: int | None = None,
                    statistic: str = "robust") -> float:
    """The index above which one method alone flags a class (what the charts draw).

    The (1 - fpr / n_methods) quantile of the null; `judge` passes the combined cut
    `combine.level(fpr, M)` as `fpr`, so the bar is the one-method part of min(Bonferroni, Fisher).

    `n_refs`: judge against the mean of this many references instead of the null's own
    (the calibration's leave-one-out check uses R - 1).
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    level = 1 - fpr / max(1, n_methods)
    maxima = _maxima(null, n_refs, statistic)
    if maxima is not None:
        return float(maxima.quantile(level))
    return math.exp(null["mu"] + _spread(null) * _quantile(null, level))


def _maxima(null: dict, n_refs: int | None = None, statistic: str = "robust"):
    """The simulated law of a clean model's largest index (calibration version 2), else None."""
    if "scales" not in null:
        return None
    from poisonguard.detect.calibration import simulated_maxima

    return simulated_maxima(tuple(float(v) for v in null["scales"]), int(n_refs or null["n"]), statistic=statistic)


def _spread(null: dict) -> float:
    """s widened for a new model's prediction interval when the null was fitted on n references."""
    n = null.get("n")
    return max(null["s"], MIN_S) * (math.sqrt(1 + 1 / n) if n else 1.0)


def _quantile(null: dict, level: float) -> float:
    """Student t with n - 1 degrees of freedom for a fitted null (a prediction interval), normal for a prior."""
    n = null.get("n")
    if not n:
        return _NORMAL.inv_cdf(level)
    from scipy.stats import t

    return float(t.ppf(level, n - 1))


def class_p_values(index: torch.Tensor, null: dict, statistic: str = "robust") -> list[float]:
    """P(a clean model's largest index >= this class's index), per class.

    Simulated null: the Monte Carlo p-value (1 + #{draws >= index}) / (draws + 1).
    """
    maxima = _maxima(null, statistic=statistic)
    if maxima is not None:
        x = torch.as_tensor(index, dtype=torch.float64).reshape(-1)
        above = len(maxima) - torch.searchsorted(maxima, x, right=False)
        return [float(v) for v in (above + 1).double() / (len(maxima) + 1)]
    z = [(math.log(max(float(v), 1e-9)) - null["mu"]) / _spread(null) for v in index]
    if not null.get("n"):
        return [1 - _NORMAL.cdf(v) for v in z]
    from scipy.stats import t

    return [float(p) for p in t.sf(z, null["n"] - 1)]


def method_families(methods: list[str]) -> list[str]:
    """Each method's family (`family` on its detector class; its own name otherwise)."""
    from poisonguard.detect import DETECTORS

    return [getattr(DETECTORS.get(m), "family", DETECTORS.normalise(m)) if m in DETECTORS else m for m in methods]


def method_bars(methods: list[str], fpr: float) -> tuple[list[str], float, list[int]]:
    """(families, the cut on the combined statistic, per method the count its own level divides the cut by).

    One method alone passes the cut when (families x its family's size) x p <= cut, so its
    chart's threshold is `index_threshold(null, cut, bar)` (the verdict and the calibration's
    leave-one-out check both draw it so).
    """
    families = method_families(methods)
    n_families = len(set(families))
    return families, combine.level(fpr, n_families), [n_families * families.count(f) for f in families]


def _combined(evidence: list[dict], methods: list[str], families: list[str]) -> dict[int, float]:
    """Per class, the combined statistic of the methods' p-values (a method without a row for the class: 1).

    Methods of one family (NC and TABOR share an engine) enter as one p-value, their smallest
    times their number (Bonferroni holds whatever their dependence); Fisher then combines families.
    """
    classes = sorted({e["class"] for e in evidence})
    p = np.ones((len(classes), len(methods)))
    for e in evidence:
        p[classes.index(e["class"]), methods.index(e["method"])] = e["p_value"]
    groups = [[j for j, f in enumerate(families) if f == fam] for fam in dict.fromkeys(families)]
    per_family = np.stack([np.minimum(1.0, len(g) * p[:, g].min(1)) for g in groups], axis=1)
    return dict(zip(classes, combine.statistic(per_family).tolist()))


def evidence_rows(det: Detection, index: torch.Tensor, rows: list[int], null: dict, cut: float, bar: int,
                  statistic: str) -> list[dict]:
    """One evidence row per class: the statistic, the method's own threshold at the cut, its p-value."""
    if statistic == "paper":
        threshold, hits = det.threshold, set(det.flagged_classes)
    else:
        threshold = index_threshold(null, cut, bar, statistic=statistic)
        hits = {c for c, v in zip(rows, index.tolist()) if v > threshold}
    return [{"method": det.method, "class": int(c), "statistic": round(float(v), 6), "threshold": round(float(threshold), 6),
             "flagged": c in hits, "p_value": round(float(p), 8)}
            for c, v, p in zip(rows, index.tolist(), class_p_values(index, null, statistic))]


# References that are another architecture than the suspect's (a built-in standing in for a user's
# architecture, or for a graph file's unknown one) share the data's class difficulties only in
# part: subtracting their class offsets hid Neural Cleanse targets that were the suspect's smallest
# class by 4.5-7x (benchmarks/results/issue-16.md, session 18). Each method is then judged by
# up to three tests, each at 1/T of the rate (a union bound keeps the stated one):
# - against the references (as for any calibration);
# - on the suspect's own sizes with the uncalibrated priors, Neural Cleanse and TABOR only
#   (`OWN_SIZES_METHODS`; session 19, for every method: chosen on user
#   architectures' seeds 4-6; on the 24 suspects judged after, 6/24 -> 12/24 found, 0/24 clean
#   flagged either way). The priors were measured on MNIST; where they flag one of this data's
#   clean references (e.g. a class every model finds easy), this test is not used (`own_sizes_hold`);
# - the smallest trigger's gap to the second smallest (`gap.py`, after K-Arm), for the methods
#   with a measured gap prior (Neural Cleanse), its null updated with the references' own gaps,
#   not used where it flags a clean reference (`gap_holds`) (session 20: chosen on
#   seeds 4-12, judged on fresh seeds 13-15; figures in results/issue-16.md).
# The own-sizes test stands on the smallest class marking the target: Neural Cleanse's did in 30 of
# 30 backdoored user-architecture models (seeds 4-12), DeepInspect's in few; DeepInspect's test
# found none of them and flagged two clean models on seeds 13-15 (session 20). TABOR shares NC's engine.
OWN_SIZES_METHODS = ("neural_cleanse", "tabor")
# Each test as the report names it: the verdict's sentence, the note under a chart, report.json.
STAND_IN_TEST_WORDS = {
    "against_references": "against the stand-in references",
    "own_sizes": "on its own trigger sizes (uncalibrated priors)",
    "smallest_gap": "by how far its smallest trigger is below the next (calibrated)",
}


def own_sizes_hold(method: str, null: dict, cut: float, bar: int, statistic: str) -> bool:
    """Whether the own-sizes stand-in test (a method's own sizes under the priors) passes every clean
    reference of the calibration (`null["sizes"]`) at the threshold it would judge the suspect by
    (`bar`: the count the cut is divided by, the tests included)."""
    threshold = index_threshold(uncalibrated_null(method, statistic), cut, bar, statistic=statistic)
    return all(float(robust_index(statistic, sizes).max()) <= threshold for sizes in null.get("sizes", []))


def gap_holds(method: str, null: dict, cut: float, bar: int) -> bool:
    """Whether the gap test passes every clean reference of the calibration at the threshold it
    would judge the suspect by, twice: under the prior alone (measured on MNIST: where it flags a
    reference, e.g. a class every model of this data finds far easier, the gap says nothing about
    a backdoor) and under the law the verdict uses, leave-one-out (the other references' gaps and
    the reference's own spacings), so the calibration's leave-one-out check holds for it too."""
    from poisonguard.detect import gap

    refs = null.get("sizes", [])
    for i, sizes in enumerate(refs):
        g = float(gap.gap_index(sizes).max())
        for law in (gap.gap_null(method), gap.gap_null(method, refs[:i] + refs[i + 1:], sizes)):
            if g > gap.gap_threshold(law, cut / bar):
                return False
    return True


def stand_in_tests(method: str, null: dict, cut: float, bar: int, statistic: str) -> tuple[str, ...]:
    """The tests a method is judged by when its references stand in for another architecture.

    Each further test is kept only where it passes every clean reference at the threshold of the
    final count of tests (dropping one raises the others' level, so the check is repeated).
    """
    from poisonguard.detect import gap

    holds = {"own_sizes": lambda share: own_sizes_hold(method, null, cut, share, statistic),
             "smallest_gap": lambda share: gap_holds(method, null, cut, share)}
    extra = (["own_sizes"] if method in OWN_SIZES_METHODS else []) + (["smallest_gap"] if method in gap.PRIORS else [])
    while True:
        kept = [t for t in extra if holds[t]((1 + len(extra)) * bar)]
        if kept == extra:
            return ("against_references", *extra)
        extra = kept


def stand_in_rows(det: Detection, index: torch.Tensor, rows: list[int], null: dict, cut: float, bar: int,
                  statistic: str, tests: tuple[str, ...]) -> list[dict]:
    """Evidence rows of a method judged by several stand-in tests (`stand_in_tests`), each at 1/T of the rate.

    A class's p-value is min(1, T min over tests of p); `statistic` is the largest of each test's
    value over its own threshold (so `threshold` is 1 and the chart reads one number), and every
    test's figures are kept in the row.
    """
    from poisonguard.detect import gap

    share = len(tests) * bar
    judged = []
    for name in tests:
        if name == "smallest_gap":
            law = gap.gap_null(det.method, null.get("sizes", []), det.mask_l1)
            values = gap.gap_index(det.mask_l1)
            threshold, ps = gap.gap_threshold(law, cut / share), gap.gap_p_values(values, law)
        else:
            values, law = (index, null) if name == "against_references" else (
                robust_index(statistic, det.mask_l1), uncalibrated_null(det.method, statistic))
            threshold, ps = index_threshold(law, cut, share, statistic=statistic), class_p_values(values, law, statistic)
        judged.append((name, values.tolist(), threshold, ps))
    out = []
    for i, c in enumerate(rows):
        strength = max(values[i] / threshold for _, values, threshold, _ in judged)
        p = min(1.0, len(tests) * min(ps[i] for *_, ps in judged))
        row = {"method": det.method, "class": int(c), "statistic": round(float(strength), 6), "threshold": 1.0,
               "flagged": strength > 1, "p_value": round(float(p), 8)}
        for name, values, threshold, _ in judged:
            row[name] = {"index": round(float(values[i]), 6), "threshold": round(float(threshold), 6)}
        out.append(row)
    return out


@dataclass(frozen=True)
class Verdict(_ToDict):
    """The scan's answer (report.json["verdict"]).

    evidence: one entry per method and class: method, class, statistic (the one-sided index
    the charts show), threshold, flagged (statistic above threshold), agreed (the method's
    call on this class matches the verdict's), p_value.
    """

    backdoored: bool
    targets: tuple[int, ...]
    score: float
    false_positive_rate: float
    evidence: tuple[dict, ...]
    statistic: str = "robust"
    calibrated: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    # How the methods' p-values were combined: the rule, the cut and each class's statistic.
    combination: dict[str, Any] = field(default_factory=dict)
    sentence: str = ""
    disagreements: tuple[str, ...] = ()
    # The Detections the verdict rests on (masks, triggers); kept for Python callers, not in the JSON.
    detections: tuple = field(default=(), metadata={"json": False}, compare=False)

    def method_rows(self, method: str) -> list[dict]:
        return [e for e in self.evidence if e["method"] == method]


def method_index(det: Detection, statistic: str, reference=None, reference_sd=None) -> tuple[torch.Tensor, list[int]]:
    """The per-class statistic the verdict uses for `det` and the classes of its rows.

    A null fitted per class (`reference_sd`: two classes, or a method in
    `calibration.PER_CLASS_NULL`) judges each class against the same class on the references
    (`reference_index`). With fewer than 3 classes there is no spread across classes to compare
    with, so a verdict needs the calibration.
    """
    classes = list(det.extra.get("targets") or range(len(det.anomaly_index)))
    if statistic == "paper":
        return torch.tensor(det.anomaly_index, dtype=torch.float64), classes
    if reference is not None and reference_sd is not None:
        return reference_index(det.mask_l1, reference, reference_sd), classes
    if len(det.mask_l1) < 3:
        raise UserError(f"{det.method}: a {len(det.mask_l1)}-class model can be judged only against clean reference "
                        "models (--calibration auto): no statistic across two classes can single one out")
    return robust_index(statistic, det.mask_l1, reference), classes


def check_lower_mad_classes(num_classes: int, remedy: str = "use --statistic robust") -> None:
    """UserError when the lower-half MAD index cannot flag `num_classes` classes (`LOWER_MAD_MIN_CLASSES`)."""
    from poisonguard.detect.anomaly import LOWER_MAD_MIN_CLASSES

    if num_classes < LOWER_MAD_MIN_CLASSES:
        raise UserError(f"the lower-half MAD index cannot flag a model of {num_classes} classes (below "
                        f"{LOWER_MAD_MIN_CLASSES} its largest value is at most 1.35, whatever the trigger sizes): "
                        f"{remedy}")


def judge(detections: list[Detection], *, fpr: float = 0.05, statistic: str = "robust",
          calibration=None, classes=None, data: dict | None = None) -> Verdict:
    """Combine detections into a Verdict (pure: only the detections' numbers are read)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not detections:
        raise ValueError("a verdict needs at least one detection")
    index_threshold(DEFAULT_NULL, fpr, 1)  # checks fpr
    if statistic == "lower_mad":
        check_lower_mad_classes(min(len(d.mask_l1) for d in detections))
    methods = [d.method for d in detections]
    families, cut, bars = method_bars(methods, fpr)  # the cut on the combined statistic (`combine.py`)
    if statistic == "paper":
        cut = fpr
    evidence, flagged_by = [], {}
    for det, bar in zip(detections, bars):
        null = calibration.null_for(det.method) if calibration is not None and statistic != "paper" else None
        index, rows = method_index(det, statistic, null.get("reference") if null else None,
                                   null.get("reference_sd") if null else None)
        tests = (stand_in_tests(det.method, null, cut, bar, statistic) if null is not None
                 and getattr(calibration, "stand_in", False) and not judged_per_class(det.method, len(rows)) else ())
        if len(tests) > 1:
            mine = stand_in_rows(det, index, rows, null, cut, bar, statistic, tests)
        else:
            mine = evidence_rows(det, index, rows, null or uncalibrated_null(det.method, statistic), cut, bar, statistic)
        flagged_by[det.method] = {e["class"] for e in mine if e["flagged"]}
        evidence += mine
    combined = _combined(evidence, methods, families)
    targets = set().union(*flagged_by.values())
    if statistic != "paper":
        targets |= {c for c, t in combined.items() if t <= cut}
    # Targets ordered by their strongest evidence (smallest combined statistic) so targets[0] is the prime suspect.
    targets = sorted(targets, key=lambda c: (combined[c], c))
    for e in evidence:
        e["agreed"] = e["flagged"] == (e["class"] in targets)
    p = combine.p_value(min(combined.values()), len(set(families)))
    backdoored = bool(targets)
    if statistic == "paper":
        # The papers' rules give a yes/no only; the score keeps the uncalibrated p-value.
        p = min(p, 0.5) if backdoored else max(p, 0.5)
    verdict = Verdict(
        backdoored=backdoored, targets=tuple(targets), score=round(1 - p, 6), false_positive_rate=float(fpr),
        evidence=tuple(evidence), statistic=statistic, calibrated=calibration is not None and statistic != "paper",
        calibration=calibration.summary() if calibration is not None else {"calibrated": False},
        methods=tuple(methods), data=dict(data or {}),
        combination={"rule": "min(Bonferroni, Fisher) per class", "cut": round(float(cut), 8),
                     "statistic": {str(c): round(float(t), 8) for c, t in sorted(combined.items())},
                     # Under --statistic paper each paper's rule picks the targets; the score still reads T.
                     "decides_targets": statistic != "paper"})
    from poisonguard.detect.report import disagreement_notes, verdict_text  # words live with the report

    return replace(verdict, sentence=verdict_text(verdict, classes),
                   disagreements=tuple(disagreement_notes(verdict, classes)))


def detector_keywords(name: str) -> set[str]:
    """The keyword hyperparameters detector `name` accepts (NC and TABOR: also InversionConfig's fields)."""
    import dataclasses
    import inspect

    from poisonguard.detect import DETECTORS
    from poisonguard.detect.engine import InversionConfig

    params = inspect.signature(DETECTORS.get(name).__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        names |= {f.name for f in dataclasses.fields(InversionConfig)}
    return names - {"seed", "device"}


def route_options(methods, options: dict | None) -> dict[str, dict]:
    """Per-method options from a mix of shared keywords and per-method dicts.

    `{"epochs": 5, "deepinspect": {"steps": 100}}` gives NC (and TABOR) epochs=5 and
    DeepInspect steps=100: a shared keyword goes only to the methods that take it
    (DeepInspect has no `epochs`); one that no selected method takes is a UserError.
    """
    from poisonguard.detect import DETECTORS

    names = [DETECTORS.normalise(m) for m in methods]
    out: dict[str, dict] = {n: {} for n in names}
    for key, value in (options or {}).items():
        if DETECTORS.normalise(key) in DETECTORS:
            method = DETECTORS.normalise(key)
            if not isinstance(value, dict):
                raise UserError(f"options for {method} must be a dict of its hyperparameters, got {value!r}")
            unknown = set(value) - detector_keywords(method)
            if unknown:
                raise UserError(f"{method} has no option {', '.join(sorted(unknown))}")
            if method in out:
                out[method].update(value)
            continue
        takers = [n for n in names if key in detector_keywords(n)]
        if not takers:
            raise UserError(f"no selected method ({', '.join(names)}) has an option {key!r}")
        for n in takers:
            out[n].setdefault(key, value)
    return out


def run_detectors(model: nn.Module, data: ImageData | None, methods, *, seed: int = 0, device: str = "auto",
                  input_shape=None, num_classes: int | None = None, options: dict | None = None,
                  on_skip=None, references=None) -> list[Detection]:
    """Run each method (data-free ones only when `data` is None); a method that cannot run is skipped.

    `references`: clean reference models for the methods that contrast with them (reference_contrast).
    """
    from poisonguard.detect import DETECTORS

    detections, why = [], []
    for name in methods:
        cls = DETECTORS.get(name)
        if data is None and cls.needs_data:
            continue
        detector = cls(seed=seed, device=device, **(options or {}).get(DETECTORS.normalise(name), {}))
        try:
            if data is not None and data.kind not in getattr(cls, "kinds", ("image",)):
                raise UserError(f"{name} works on images only, not on {data.kind} data")
            if getattr(cls, "needs_references", False):
                detections.append(detector.detect(model, data, references=references))
            elif cls.needs_data:
                detections.append(detector.detect(model, data))
            else:
                detections.append(detector.detect(model, data, input_shape=input_shape, num_classes=num_classes))
        except UserError as exc:
            if on_skip is None or len(methods) == 1:
                raise
            why.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            on_skip(name, exc)
    if not detections:
        raise UserError("no detection method could run on this model and data"
                        + (f" ({'; '.join(why)})" if why else " (every method needs data, and --data is none)"))
    return detections


def scan_verdict(model: nn.Module, data: ImageData | None, *, methods=DEFAULT_METHODS, fpr: float = 0.05,
                 statistic: str = "robust", calibration=None, seed: int = 0, device: str = "auto",
                 input_shape=None, num_classes: int | None = None, options: dict | None = None,
                 classes=None, data_info: dict | None = None, on_skip=None, references=None) -> Verdict:
    """Run the detectors and judge; `verdict.detections` holds the Detections it rests on.

    `data` is the defender's clean data (None: data-free methods only, uncalibrated unless a
    data-free calibration is given); `calibration` a `Calibration` from `calibration.py`.
    """
    detections = run_detectors(model, data, methods, seed=seed, device=device, input_shape=input_shape,
                               num_classes=num_classes, options=options, on_skip=on_skip, references=references)
    info = {"clean_images": 0 if data is None else len(data), "kind": "image" if data is None else data.kind,
            **(data_info or {})}
    verdict = judge(detections, fpr=fpr, statistic=statistic, calibration=calibration, classes=classes, data=info)
    return replace(verdict, detections=tuple(detections))

