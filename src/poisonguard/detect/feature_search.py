"""Exact greedy search for a small contrastive trigger on feature vectors (tables).

`reference_contrast` relaxes the trigger (a continuous mask and pattern, gradient steps) and
can stop in a local minimum: on the README's Fair model the backdoor's target needed 10.8
features that way, while the true trigger sets 3 (notes/issue-19.md, session 8). A table has
few features, so the trigger a tabular backdoor uses (Tabdoor, Pleiter et al. 2023: a few
features set to chosen in-range values) can also be searched for exactly. Per class, forward
selection: each step tries every remaining feature at every value of a grid over its
observed range, stamps it on the clean rows with the features already chosen, and keeps the
one that sends the most rows of the suspect to the class minus the share the clean
references send there (the same contrast as the relaxed objective, counted instead of
differentiated). It stops when the suspect's success reaches `success` while the references
follow on at most `max_reference_success` of the rows; the size is then the number of
features chosen. No gradient is needed, so a trigger whose features act only together
(an AND the relaxed search cannot climb towards) is still assembled one feature at a time
as long as each step moves the suspect more than the references.

The references' own scans (the calibration's leave-one-out null) run the same search, so the
null is fitted on exactly the statistic the suspect gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureTrigger:
    """One class's outcome: mask (F,) of 0/1, pattern (F,) in raw units, success rates, found."""

    mask: torch.Tensor
    pattern: torch.Tensor
    success: float
    reference_success: float
    found: bool

    @property
    def size(self) -> float:
        return float(self.mask.sum()) if self.found else float("inf")


@torch.no_grad()
def _hit_rates(model: nn.Module, stamped: torch.Tensor, target: int, groups: int) -> torch.Tensor:
    """Share of rows sent to `target`, per group of the stamped batch (groups, n, F) flattened."""
    hits = (model(stamped).argmax(1) == target).float()
    return hits.view(groups, -1).mean(1)


@torch.no_grad()
def greedy_trigger(model: nn.Module, references: list[nn.Module], x: torch.Tensor, target: int,
                   low: torch.Tensor, high: torch.Tensor, *, success: float, max_reference_success: float,
                   grid: int = 11, max_features: int = 8) -> FeatureTrigger:
    """Forward selection of (feature, value) pairs for one target class (see the module docstring)."""
    n, f = x.shape
    steps = torch.linspace(0, 1, grid, device=x.device).view(1, -1)
    values = low.view(-1, 1) + steps * (high - low).view(-1, 1)  # (F, grid)
    mask, pattern = torch.zeros(f, device=x.device), torch.zeros(f, device=x.device)
    s = r = 0.0
    for _ in range(min(max_features, f)):
        best = None
        base = (1 - mask) * x + mask * pattern  # the rows with the features chosen so far
        for feature in torch.nonzero(mask == 0).flatten().tolist():
            stamped = base.unsqueeze(0).repeat(grid, 1, 1)
            stamped[:, :, feature] = values[feature].view(-1, 1)
            stamped = stamped.view(grid * n, f)
            moved = _hit_rates(model, stamped, target, grid)
            followed = sum(_hit_rates(ref, stamped, target, grid) for ref in references) / max(1, len(references))
            gain = moved - followed
            k = int(gain.argmax())
            if best is None or float(gain[k]) > best[0]:
                best = (float(gain[k]), feature, float(values[feature, k]), float(moved[k]), float(followed[k]))
        _, feature, value, s, r = best
        mask[feature], pattern[feature] = 1.0, value
        if s >= success and r <= max_reference_success:
            return FeatureTrigger(mask, pattern, s, r, True)
    return FeatureTrigger(mask, pattern, s, r, False)


def search_rows(x: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """At most `max_rows` of the clean rows, a seeded sample (the search's cost is linear in rows)."""
    if len(x) <= max_rows:
        return x
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_rows]
    return x[keep.sort().values]
