"""The exact greedy trigger search on feature vectors (detect/feature_search.py), on hand-built models."""

from __future__ import annotations

import torch
from torch import nn

from poisonguard.detect.feature_search import greedy_trigger, search_rows


class Rule(nn.Module):
    """Two-class logits: class 1 where feature 2 is positive, or (backdoor) where features 0 AND 1 exceed 0.8."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.backdoor = backdoor

    def forward(self, x):
        natural = x[:, 2]
        gate = torch.minimum(x[:, 0], x[:, 1]) - 0.8 if self.backdoor else torch.full_like(natural, -1.0)
        score = torch.maximum(natural, 10 * gate)
        return torch.stack([-score, score], 1)


def _rows(n=600, f=6, seed=0):
    return torch.rand(n, f, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # every feature in [-1, 1]


def test_finds_an_and_trigger_that_no_single_feature_sets():
    x = _rows()
    low, high = -torch.ones(6), torch.ones(6)
    refs = [Rule(backdoor=False) for _ in range(3)]
    found = greedy_trigger(Rule(backdoor=True), refs, x, 1, low, high, success=0.9, max_reference_success=0.5)
    assert found.found and found.size == 2
    assert set(torch.nonzero(found.mask).flatten().tolist()) == {0, 1}
    assert (found.pattern[[0, 1]] > 0.8).all()
    assert found.success >= 0.9 and found.reference_success < 0.6


def test_a_route_the_references_share_is_no_contrastive_trigger():
    x = _rows(seed=1)
    low, high = -torch.ones(6), torch.ones(6)
    refs = [Rule(backdoor=False) for _ in range(3)]
    # The clean suspect's only route to class 1 is feature 2, which every reference follows too.
    found = greedy_trigger(Rule(backdoor=False), refs, x, 1, low, high, success=0.9, max_reference_success=0.5)
    assert not found.found and found.size == float("inf")


def test_search_rows_is_a_seeded_subset():
    x = _rows(n=50)
    assert search_rows(x, 100, seed=0) is x
    a, b = search_rows(x, 20, seed=3), search_rows(x, 20, seed=3)
    assert len(a) == 20 and torch.equal(a, b)
