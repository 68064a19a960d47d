"""Feature scaling under differential privacy, for models that standardise their own inputs.

The built-in `mlp` standardises raw feature vectors with statistics fitted on the training
rows. Fitted exactly, those statistics would publish the private rows outside DP-SGD's
guarantee; left unfitted, features in raw units (years, dollars, counts) swamp the clipped
gradients and the model learns little more than the majority class. So DP-SGD spends a
stated share of its budget on them first:

- one noisy histogram per feature over a fixed, data-independent grid of bins: every row adds
  1 to one bin of each of its F features, so the L2 sensitivity of all F histograms together
  is sqrt(F), and the Gaussian mechanism (Dwork & Roth, 2014, Thm. A.1: sigma = sqrt(F) *
  sqrt(2 ln(1.25 / delta)) / epsilon, for epsilon < 1) releases them at once;
- from each noisy histogram, the quartiles (linear within a bin): centre = median, scale =
  interquartile range / 1.349 (the normal's), a robust stand-in for the mean and standard
  deviation; bins under 3 sigma count as empty (post-processing), and a feature whose
  quartiles share a bin (a rare 0/1 column) keeps unit scale.

Why one joint Gaussian release (measured on Fair's table, 18 features, epsilon 0.3): a
per-feature, per-quantile exponential mechanism splits epsilon 36 ways, and at 0.008 per query
the many grid values beyond the data outweigh the right one (scales of 1e5-1e7 came out for
features spreading 1-7); the joint histogram's noise grows only with sqrt(F).
The statistics' (epsilon, delta) add to DP-SGD's by basic composition (Thm. 3.16 there).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn

from poisonguard.train import unfitted_scalers

log = logging.getLogger(__name__)

STATS_EPSILON_SHARE = 0.1  # share of the run's epsilon spent on the input statistics (at most 0.9)
STATS_DELTA_SHARE = 0.1    # and of its delta
IQR_TO_SIGMA = 1.349  # interquartile range of a standard normal
NOISE_FLOOR = 3.0  # noisy counts under this many sigmas are dropped
MIN_KEPT_SHARE = 0.5  # a feature's histogram must keep this share of the rows to be trusted
MAX_SPURIOUS_SHARE = 0.1  # and a bin of pure noise at the floor may weigh at most this share of them
MECHANISM = ("Gaussian-mechanism histograms of every feature on a fixed grid (L2 sensitivity sqrt(F)); "
             "centre = median, scale = interquartile range / 1.349")


def bin_edges() -> torch.Tensor:
    """0 and +-{1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8} x 10^k for k = -3..7: fixed before seeing any data."""
    steps = torch.tensor([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0], dtype=torch.float64)
    magnitudes = (steps[None, :] * 10.0 ** torch.arange(-3, 8, dtype=torch.float64)[:, None]).reshape(-1)
    return torch.cat([-magnitudes.flip(0), torch.zeros(1, dtype=torch.float64), magnitudes])


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """Noise of the classic Gaussian mechanism for (epsilon, delta)-DP, epsilon in (0, 1)."""
    if not 0 < epsilon < 1:
        raise ValueError(f"the Gaussian mechanism's bound needs epsilon in (0, 1), got {epsilon:g}")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def noisy_histograms(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """(F, B) counts of each feature's values per bin, plus N(0, sigma^2) noise each.

    Bin 0 holds values below the first edge, bin i values in [edge i-1, edge i), the last bin
    values at or above the last edge: every value falls in exactly one bin.
    """
    edges = bin_edges()
    x = x.double().reshape(len(x), -1)
    index = torch.bucketize(x, edges, right=True)  # (N, F) in 0..len(edges)
    counts = torch.zeros(x.shape[1], len(edges) + 1, dtype=torch.float64)
    counts.scatter_add_(1, index.T.contiguous(), torch.ones_like(index.T, dtype=torch.float64))
    noisy = counts + sigma * torch.randn(counts.shape, generator=generator, dtype=torch.float64)
    # Post-processing (free): a bin under 3 sigma is taken as empty. Clamping at 0 alone would
    # leave every empty bin ~0.4 sigma of mass, which over hundreds of bins outweighs the data.
    return torch.where(noisy > NOISE_FLOOR * sigma, noisy, torch.zeros_like(noisy))


def histogram_quantile(counts: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, bin) of the q-quantile of each histogram (F, B), each (F,): linear within the bin.

    The two open end bins are treated as one grid step wide, so a value there stays finite.
    """
    edges = bin_edges()
    left = torch.cat([edges[:1] * 2, edges])        # each bin's lower edge
    right = torch.cat([edges, edges[-1:] * 2])      # and upper edge
    total = counts.sum(1, keepdim=True).clamp(min=1e-9)
    cum = counts.cumsum(1) / total
    pick = torch.searchsorted(cum, torch.full((len(counts), 1), q, dtype=torch.float64)).clamp(max=counts.shape[1] - 1)
    before = torch.where(pick > 0, cum.gather(1, (pick - 1).clamp(min=0)), torch.zeros_like(pick, dtype=torch.float64))
    share = counts.gather(1, pick) / total
    within = ((q - before) / share.clamp(min=1e-12)).clamp(0, 1)
    pick = pick.squeeze(1)
    return left[pick] + within.squeeze(1) * (right[pick] - left[pick]), pick


def private_scaling(x: torch.Tensor, *, epsilon: float, delta: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre, scale, resolved), each (F,), of the rows x (N, F) under (epsilon, delta)-DP.

    `resolved` is False for a feature whose noisy histogram kept under half the rows above the
    noise floor, or when a bin of pure noise that passes the floor would weigh more than a tenth
    of the rows (455 rows of 18 features at epsilon 0.3: the floor is 225 rows). Its quartiles
    would be grid ends or noise (centres of 1.6e8 and 55,000 for values near 500), so it is
    left unscaled (centre 0, scale 1) instead. The row count is public (DP-SGD's sampling rate
    uses it).
    """
    features = x.reshape(len(x), -1).shape[1]
    sigma = gaussian_sigma(math.sqrt(features), epsilon, delta)
    counts = noisy_histograms(x, sigma, generator)
    (low, low_bin), (centre, _), (high, high_bin) = (histogram_quantile(counts, q) for q in (0.25, 0.5, 0.75))
    scale = (high - low) / IQR_TO_SIGMA
    # Quartiles in one bin: the spread is below what the grid resolves (a rare 0/1 column whose
    # quartiles are both 0); unit scale then, not a sliver that would blow the feature up.
    known = (high_bin != low_bin) & (scale > 0)
    # One empty bin in ~700 passes the floor by chance (about 0.3 per feature on this grid) with a
    # count near the floor: trusted only where such a bin weighs little beside the rows.
    resolved = (counts.sum(1) >= MIN_KEPT_SHARE * len(x)) & (NOISE_FLOOR * sigma <= MAX_SPURIOUS_SHARE * len(x))
    centre = torch.where(resolved, centre, torch.zeros_like(centre))
    return centre, torch.where(known & resolved, scale, torch.ones_like(scale)), resolved


def with_private_input_stats(model: nn.Module, x: torch.Tensor, *, epsilon: float, delta: float,
                             seed: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """A copy of `model` whose input scaling is fitted on x under (epsilon, delta)-DP, and what
    was spent; (model itself, None) when nothing in it needs statistics."""
    if not unfitted_scalers(model):
        return model, None
    model = copy.deepcopy(model)
    scalers = unfitted_scalers(model)
    generator = torch.Generator().manual_seed(seed + 7)
    unresolved = 0
    for scaler in scalers:  # one release each: the budget is split between them
        centre, scale, resolved = private_scaling(x, epsilon=epsilon / len(scalers), delta=delta / len(scalers),
                                                  generator=generator)
        scaler.set_statistics(centre, scale)
        unresolved = max(unresolved, int((~resolved).sum()))
    features = int(x.reshape(len(x), -1).shape[1])
    if unresolved:
        log.warning("DP input scaling: %d of %d features could not be measured under the noise (%d rows at epsilon "
                    "%.2g for the statistics) and are left in raw units; the model may learn little. More rows or a "
                    "larger --dp-epsilon help.", unresolved, features, len(x), epsilon)
    return model, {"epsilon": float(epsilon), "delta": float(delta), "mechanism": MECHANISM,
                   "features": features, "unresolved_features": unresolved, "composition": "basic: added to DP-SGD's"}
