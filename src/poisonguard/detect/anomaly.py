"""Outlier tests on per-class trigger sizes (plain tensor functions).

Neural Cleanse (Wang et al., 2019) scores each class by how far its reversed-trigger size
lies from the median, in units of the median absolute deviation scaled by the consistency
constant 1.4826 (so it estimates a normal standard deviation); a class whose index exceeds
2 on the small side (> 95% under normality) is flagged. DeepInspect (Chen et al., 2019)
uses the double MAD: the deviation of the lower half only, since a backdoor can only make
a trigger *smaller* and the upper tail of the distribution is irrelevant and skewed.
"""

from __future__ import annotations

import torch

CONSISTENCY = 1.4826
THRESHOLD = 2.0


def _as_vector(values) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() < 3:
        raise ValueError(f"an anomaly index needs at least 3 classes, got {v.numel()}")
    if not torch.isfinite(v).all():
        raise ValueError("trigger sizes must be finite")
    return v


def _median(v: torch.Tensor) -> torch.Tensor:
    """The textbook median (mean of the two middle values for even counts), as NC's numpy code."""
    return v.quantile(0.5)


def mad_anomaly_index(values) -> torch.Tensor:
    """Neural Cleanse's anomaly index |v - median| / (1.4826 * MAD), shape (K,) like `values`.

    Args:
        values: (K,) per-class trigger sizes (mask L1 norms).
    Returns:
        (K,) float64 anomaly indices; 0 everywhere when all values are equal.
    """
    v = _as_vector(values)
    med = _median(v)
    mad = CONSISTENCY * _median((v - med).abs())
    if mad <= 0:
        # Fall back to the mean absolute deviation; identical values mean no anomaly at all.
        mad = CONSISTENCY * (v - med).abs().mean()
        if mad <= 0:
            return torch.zeros_like(v)
    return (v - med).abs() / mad


def dmad_anomaly_index(values) -> torch.Tensor:
    """Double-MAD index of the small side (DeepInspect): (median - v) / (1.4826 * lower MAD).

    Values above the median get index 0 (they can never indicate a backdoor).
    Args:
        values: (K,) per-class perturbation magnitudes.
    Returns:
        (K,) float64 indices.
    """
    v = _as_vector(values)
    med = _median(v)
    mad = _lower_half_scale(v, med)
    if mad <= 0:
        return torch.zeros_like(v)
    return ((med - v) / mad).clamp_min(0)


def _lower_half_scale(v: torch.Tensor, med: torch.Tensor) -> torch.Tensor:
    """The consistency-scaled MAD of the values at or below the median (their mean deviation when that is 0)."""
    lower = v[v <= med]
    mad = CONSISTENCY * _median((lower - med).abs())
    return mad if mad > 0 else CONSISTENCY * (lower - med).abs().mean()


def flag_small(values, index: torch.Tensor, threshold: float = THRESHOLD) -> list[int]:
    """Classes whose index exceeds `threshold` and whose value lies below the median."""
    v = _as_vector(values)
    med = _median(v)
    return [int(i) for i in torch.nonzero((index > threshold) & (v < med)).flatten()]


def reference_index(values, reference, reference_sd=None, *, floor: float = 0.25) -> torch.Tensor:
    """Per-class statistic against clean references: large = smaller than on clean models.

    `reference` (K,) mean log sizes of the same classes on clean reference models and
    `reference_sd` (K,) their spread (floored at `floor`, so a few references promise no
    more than a 1.28x (e^0.25) per-class precision). d_k = reference_k - log v_k says how much
    smaller class k is on this model than on the references.

    - Two classes: exp(d_k / sd_k). No class is there to compare with.
    - Three or more: exp((d_k - m_k) / max(sd_k, S_k)), where m_k and S_k are the median and the
      consistency-scaled MAD of the other classes' d. A model trained on other rows, or by
      another recipe, sits apart from references that share one sample and one recipe at every
      class; a backdoor makes one class stand out. Centring on the other classes removes the
      first and keeps the second. Ours; chosen on the session-13 tuning tables (digits and fair's
      marriage rating) and measured on held-out ones (notes/issue-19.md).

    The verdict models the log of the largest index over classes with a log-normal fitted on the
    references' leave-one-out indices (`calibration.fit_null`).
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(v).all():
        raise ValueError("trigger sizes must be finite")
    ref = torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
    if ref.shape != v.shape:
        raise ValueError(f"reference has {ref.numel()} classes, the sizes {v.numel()}")
    sd = torch.full_like(ref, floor) if reference_sd is None else torch.as_tensor(reference_sd, dtype=torch.float64).reshape(-1)
    sd = sd.clamp_min(floor)
    d = ref - v.clamp_min(1e-12).log()
    if len(d) < 3:
        return (d / sd).exp()
    index = torch.empty_like(d)
    for k in range(len(d)):
        others = torch.cat([d[:k], d[k + 1:]])
        centre = _median(others)
        spread = CONSISTENCY * _median((others - centre).abs())
        index[k] = ((d[k] - centre) / torch.maximum(sd[k], spread)).exp()
    return index


def _log_minus_reference(values, reference) -> torch.Tensor:
    """Log sizes, minus the references' mean log sizes of the same classes when given."""
    v = _as_vector(values).clamp_min(1e-12).log()
    if reference is None:
        return v
    ref = torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
    if ref.shape != v.shape:
        raise ValueError(f"reference has {ref.numel()} classes, the sizes {v.numel()}")
    return v - ref


# The lower half of K log sizes holds ceil(K/2) of them; for K = 3 or 4 the smallest class's
# index is bounded by 2 / CONSISTENCY = 1.35 whatever the sizes (K = 3: exactly 1.35, since the
# scale is half the gap it divides), so below 5 classes the statistic can flag nothing.
LOWER_MAD_MIN_CLASSES = 5


def log_lower_mad_index(values, reference=None, *, signed: bool = False) -> torch.Tensor:
    """The verdict's default statistic: the small-side double-MAD index of log sizes.

    Two changes to Neural Cleanse's MAD, each from the literature and chosen on the tuning
    zoo (benchmarks/detect_verdict.py): the scale is the deviation of the *lower* half only
    (DeepInspect's double MAD; TrojanZoo's `normalize_mad(side='double')`), so the wide
    spread of large clean masks does not hide a small one, and the sizes are compared in
    log space, where "5x smaller" means the same for a class of size 50 as of size 150.
    `reference` (K,) are log sizes of the same classes on clean reference models: they are
    subtracted first, so a naturally easy class (a thin digit) is not taken for a target.

    Args:
        values: (K,) positive per-class trigger sizes.
        reference: optional (K,) mean log sizes of the same classes on clean models.
        signed: keep negative indices (classes above the median), as calibration needs.
    Returns:
        (K,) float64 indices, large = suspiciously small trigger.
    """
    v = _log_minus_reference(values, reference)
    med = _median(v)
    mad = _lower_half_scale(v, med)
    if mad <= 0:
        return torch.zeros_like(v)
    index = (med - v) / mad
    return index if signed else index.clamp_min(0)


def trimmed_loo_index(values, reference=None, *, signed: bool = False) -> torch.Tensor:
    """The verdict's default statistic: each class's log size against the OTHER classes, studentised.

    t_k = (mean(T_k) - log v_k) / sd(T_k), T_k = the log sizes of the other classes without
    their smallest (with at least 5 classes) and their largest (with at least 7): the
    externally studentised (leave-one-out) deviation of outlier tests (Grubbs; the deleted
    residual of regression diagnostics), trimmed so that a second small class (a second
    target, an easy class the references missed) cannot inflate the scale, nor a class the
    references found harder than the suspect does (the upper tail says nothing about a
    backdoor, and reference subtraction skews it: DeepInspect's reason for its double MAD).
    Why not the lower-half MAD (`log_lower_mad_index`, the
    default up to calibration version 4): its scale comes from the ~K/2 classes below the
    median, so for ten classes it rests on five values, and a target that moves below the
    median joins them and widens it. The null of its largest value is heavy-tailed (98.3%
    quantile 7.1 for ten iid normal classes) and a target 5 spreads below the others is found
    22% of the time; this statistic's quantile is also 7.1 (its scale rests on seven classes,
    and none of them is the target) and it finds the same target 56% of the time
    (benchmarks/results/issue-16.md, session 6). Log sizes, minus `reference` (mean log sizes of the
    same classes on clean reference models) when given, as for the MAD index.

    Args:
        values: (K >= 3,) positive per-class trigger sizes.
        reference: optional (K,) mean log sizes of the same classes on clean models.
        signed: keep negative indices (classes above the others), as calibration needs.
    Returns:
        (K,) float64 indices, large = suspiciously small trigger.
    """
    v = _log_minus_reference(values, reference)
    index = trimmed_loo_index_rows(v.unsqueeze(0))[0]
    return index if signed else index.clamp_min(0)


TRIM_LOW_FROM = 5  # classes from which the smallest other class is left out of the scale
TRIM_HIGH_FROM = 7  # ... and the largest one too


def trimmed_loo_index_rows(values: torch.Tensor) -> torch.Tensor:
    """`trimmed_loo_index(..., signed=True)` of every row of (N, K) values already in log space.

    O(K) per row from sums (the calibration simulates 20,000 rows; a 1,000-class model must
    not cost K^2). Rows whose trimmed spread is zero get index 0.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() != 2 or v.shape[1] < 3:
        raise ValueError(f"expected (N, K >= 3) values, got shape {tuple(v.shape)}")
    v = v - v.mean(1, keepdim=True)  # sums of squares without cancellation
    k = v.shape[1]
    total, squares = v.sum(1, keepdim=True), v.pow(2).sum(1, keepdim=True)
    out_sum, out_sq, n = total - v, squares - v.pow(2), k - 1
    for largest, from_k in ((False, TRIM_LOW_FROM), (True, TRIM_HIGH_FROM)):
        if k < from_k:
            continue
        two = v.topk(2, dim=1, largest=largest)
        is_extreme = torch.zeros_like(v, dtype=torch.bool).scatter_(1, two.indices[:, :1], True)
        drop = torch.where(is_extreme, two.values[:, 1:], two.values[:, :1])  # the extreme of the OTHER classes
        out_sum, out_sq, n = out_sum - drop, out_sq - drop.pow(2), n - 1
    mean = out_sum / n
    var = ((out_sq - n * mean.pow(2)) / (n - 1)).clamp_min(0)
    sd = var.sqrt()
    return torch.where(sd > 1e-12, (mean - v) / sd.clamp_min(1e-300), torch.zeros_like(v))


def lower_mad_index_rows(values: torch.Tensor) -> torch.Tensor:
    """`log_lower_mad_index(..., signed=True)` of every row of (N, K) values already in log space.

    The same statistic, vectorised for the calibration's simulated null (thousands of
    synthetic clean models at once). Rows whose lower-half MAD is zero get index 0.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() != 2 or v.shape[1] < 3:
        raise ValueError(f"expected (N, K >= 3) values, got shape {tuple(v.shape)}")
    med = v.quantile(0.5, dim=1, keepdim=True)
    dev = (med - v).where(v <= med, torch.full_like(v, float("nan")))
    mad = CONSISTENCY * dev.nanquantile(0.5, dim=1, keepdim=True)
    return torch.where(mad > 0, (med - v) / mad.clamp_min(1e-300), torch.zeros_like(v))


# The verdict's robust statistics by name, as (N, K) log-space row functions: the simulated null
# and the suspect's index must be the same statistic.
INDEX_ROWS = {"robust": trimmed_loo_index_rows, "lower_mad": lower_mad_index_rows}


def robust_index(statistic: str, values, reference=None, *, signed: bool = False) -> torch.Tensor:
    """The verdict statistic `statistic` ("robust": `trimmed_loo_index`; "lower_mad": `log_lower_mad_index`)."""
    if statistic == "lower_mad":
        return log_lower_mad_index(values, reference, signed=signed)
    if statistic == "robust":
        return trimmed_loo_index(values, reference, signed=signed)
    raise ValueError(f"no robust statistic {statistic!r}; choose from {sorted(INDEX_ROWS)}")
