"""Robust aggregation rules: plain tensor functions, a registry, and `Aggregator` around them.

    from poisonguard.federated.aggregators import AGGREGATORS, Aggregator, krum
    krum(updates, f=2)                               # plain function: (n, d) -> (d,)
    agg = Aggregator("nnm+multi_krum", f=2, seed=0)  # checked, NaN-safe, stateful wrapper
    result = agg(updates, weights)                   # AggregationResult(update, excluded, info)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from poisonguard.federated.aggregators.base import (
    AGGREGATORS, AggregatorSpec, check_updates, pairwise_sq_distances, register_aggregator,
)
# Importing each rule registers it; the plain functions shadow the modules of the same name.
from poisonguard.federated.aggregators.bulyan import bulyan
from poisonguard.federated.aggregators.centered_clipping import centered_clipping
from poisonguard.federated.aggregators.fedavg import fedavg
from poisonguard.federated.aggregators.flame import flame
from poisonguard.federated.aggregators.fltrust import fltrust
from poisonguard.federated.aggregators.geometric_median import geometric_median
from poisonguard.federated.aggregators.krum import krum
from poisonguard.federated.aggregators.krum import multi_krum
from poisonguard.federated.aggregators.median import median
from poisonguard.federated.aggregators.nnm import nnm
from poisonguard.federated.aggregators.norm_bound import norm_bound
from poisonguard.federated.aggregators.trimmed_mean import trimmed_mean
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
    "centered_clipping", "norm_bound", "fltrust", "flame",
    "AGGREGATORS", "AggregationResult", "Aggregator", "AggregatorSpec", "check_updates", "nnm",
    "pairwise_sq_distances", "register_aggregator", "aggregator_names",
]

NNM_PREFIX = "nnm+"


def aggregator_names() -> list[str]:
    """Registered rule names (each also usable as `nnm+<name>`)."""
    return AGGREGATORS.names()


@dataclass(frozen=True)
class AggregationResult:
    """One aggregation: the (d,) update, clients left out for NaN/Inf, and what the rule decided.

    `info["selected"]` (when the rule selects) indexes the original client order.
    """

    update: torch.Tensor
    excluded: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


class Aggregator:
    """A registered rule with checked hyperparameters, NaN/Inf exclusion and per-round state.

    Args:
        name: a registered rule, optionally prefixed `nnm+` for nearest-neighbour mixing first.
        f: malicious clients tolerated; passed to rules that take it and to NNM.
        seed: seeds the rule's noise (norm_bound, flame).
        **hparams: the rule's own keyword-only hyperparameters (e.g. `m=5`, `sigma=0.01`).

    Raises:
        UserError: unknown rule; ValueError: unknown or invalid hyperparameter.
    """

    def __init__(self, name: str, *, f: int | None = None, seed: int = 0, **hparams: Any) -> None:
        key = AGGREGATORS.normalise(name)
        self.use_nnm = key.startswith(NNM_PREFIX)
        self.rule = key[len(NNM_PREFIX):] if self.use_nnm else key
        self.spec: AggregatorSpec = AGGREGATORS.get(self.rule)
        allowed = self.spec.hyperparameters()
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise ValueError(f"{self.rule}: unknown hyperparameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(allowed)) or 'none'}")
        if f is not None and (not isinstance(f, int) or isinstance(f, bool) or f < 0):
            raise ValueError(f"f (malicious clients tolerated) must be a non-negative integer, got {f!r}")
        self.hparams = dict(hparams)
        if f is not None and "f" in allowed:
            self.hparams["f"] = f
        self.f = f if f is not None else int(self.hparams.get("f", 0) or 0)
        self.name = (NNM_PREFIX if self.use_nnm else "") + self.rule
        self.generator = torch.Generator().manual_seed(seed)
        self.center: torch.Tensor | None = None  # previous aggregate, for centered clipping

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"Aggregator({self.name!r}{', ' + args if args else ''})"

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 root_update: torch.Tensor | None = None) -> AggregationResult:
        """Aggregate (n, d) updates (or a list of equally shaped tensors) into one (d,) update.

        Clients whose update holds NaN or Inf are excluded and listed in `excluded`.

        Raises:
            ValueError: mismatched shapes, no finite update left, or a rule's bound violated
                (e.g. Krum's n > 2f + 2).
        """
        updates = stack_updates(updates)
        n = updates.shape[0]
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=updates.dtype, device=updates.device)
            if weights.shape != (n,):
                raise ValueError(f"weights must have shape ({n},) for {n} clients, got {tuple(weights.shape)}")
        finite = torch.isfinite(updates).all(dim=1)
        excluded = tuple(int(i) for i in torch.nonzero(~finite).flatten())
        keep = torch.nonzero(finite).flatten()
        if excluded:
            log.warning("%s: excluded %d client update(s) with NaN/Inf: %s", self.name, len(excluded), list(excluded))
            if len(keep) == 0:
                raise ValueError("every client update contains NaN or Inf; nothing to aggregate")
            updates = updates[keep]
            weights = None if weights is None else weights[keep]
        if self.use_nnm:
            updates = nnm(updates, f=self.f)
        kwargs: dict[str, Any] = dict(self.hparams)
        if "generator" in self.spec.needs:
            kwargs["generator"] = self.generator
        if "root_update" in self.spec.needs:
            kwargs["root_update"] = root_update
        if "center" in self.spec.needs and self.center is not None:
            kwargs["center"] = self.center
        info: dict[str, Any] = {}
        update = self.spec.fn(updates, weights, info=info, **kwargs)
        if "selected" in info and excluded:
            info["selected"] = [int(keep[i]) for i in info["selected"]]
        if "center" in self.spec.needs:
            self.center = update.detach().clone()
        return AggregationResult(update, excluded, info)


def stack_updates(updates: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A (n, d) tensor from a tensor or a list of per-client tensors (each flattened).

    Raises:
        ValueError: clients' updates of different shapes.
    """
    if isinstance(updates, torch.Tensor):
        check_updates(updates)
        return updates
    updates = list(updates)
    if not updates:
        raise ValueError("no client updates to aggregate")
    shapes = {tuple(u.shape) for u in updates}
    if len(shapes) > 1:
        raise ValueError(f"client updates have mismatched shapes: {sorted(shapes)}")
    return torch.stack([u.reshape(-1) for u in updates])


def make_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """`Aggregator(name, **kwargs)` with a ValueError turned into a UserError (for the CLI)."""
    try:
        return Aggregator(name, **kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
