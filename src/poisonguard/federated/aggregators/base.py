"""The aggregator registry, input checks shared by every rule, and Gram-matrix distances.

Every rule is a plain function `rule(updates, weights=None, *, <hyperparameters>, info=None)`
over a (clients n, parameters d) tensor of client updates (local model minus global model)
and optional non-negative client weights (n,); it returns the aggregated update (d,). Rules
fill the optional `info` dict with what they decided (selected clients, clipping norm, ...).
`Aggregator` (in `poisonguard.federated.aggregators`) is the orchestration around them:
hyperparameter checks, NaN/Inf exclusion, NNM pre-aggregation, per-round state.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from poisonguard.registry import Registry


@dataclass(frozen=True)
class AggregatorSpec:
    """A registered rule and what it needs from the caller beyond the updates.

    Attributes:
        fn: the plain tensor function.
        needs: extra call-time inputs: "generator" (noise), "root_update" (FLTrust's server
            update), "center" (the previous round's aggregate, for centered clipping).
        summary: one line for `--help` and reports.
    """

    fn: Callable[..., torch.Tensor]
    needs: tuple[str, ...] = ()
    summary: str = ""

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword-only hyperparameters and their defaults (call-time inputs excluded)."""
        sig = inspect.signature(self.fn)
        skip = {"info", *self.needs}
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip}


AGGREGATORS: Registry[AggregatorSpec] = Registry("aggregator")


def register_aggregator(name: str, *, needs: tuple[str, ...] = (), summary: str = ""):
    """Decorator: register a plain aggregation function under `name`."""

    def decorator(fn):
        AGGREGATORS.register(name)(AggregatorSpec(fn, needs, summary or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return decorator


def check_updates(updates: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (n, d) update matrix and (n,) weights; return them with weights normalised.

    Raises:
        ValueError: not a non-empty 2-D float tensor, or weights of the wrong shape, negative,
            non-finite or all zero.
    """
    if not isinstance(updates, torch.Tensor) or updates.ndim != 2:
        shape = tuple(updates.shape) if isinstance(updates, torch.Tensor) else type(updates).__name__
        raise ValueError(f"updates must be a (clients, parameters) tensor, got {shape}")
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise ValueError(f"updates must be non-empty, got shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got {updates.dtype}")
    n = updates.shape[0]
    if weights is None:
        return updates, torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
    weights = torch.as_tensor(weights, dtype=updates.dtype, device=updates.device)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) for {n} clients, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return updates, weights / weights.sum()


def check_f(name: str, f: int) -> None:
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ValueError(f"{name}: f (number of malicious clients tolerated) must be a non-negative integer, got {f!r}")


def runs_on_numpy(x: torch.Tensor) -> bool:
    """Whether `x` can be handed to NumPy/SciPy kernels as it is (a CPU float tensor, no autograd)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x @ x.T. On a CPU, BLAS's symmetric rank-k update (syrk) computes only one triangle:
    about half the work of the general product, which is most of Krum's time."""
    if not runs_on_numpy(x):
        return x @ x.T
    from scipy.linalg.blas import dsyrk, ssyrk

    syrk = ssyrk if x.dtype == torch.float32 else dsyrk
    # A C-ordered (n, d) array is BLAS's column-major (d, n): trans=1 gives (n, n) = x x^T.
    upper = torch.from_numpy(syrk(1.0, x.contiguous().numpy().T, trans=1))
    return upper.triu() + upper.triu(1).T


def pairwise_sq_distances(x: torch.Tensor, *, centre: bool = False) -> torch.Tensor:
    """Squared Euclidean distances between rows, (n, d) -> (n, n), from one Gram matrix.

    ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b needs one (n, d) x (d, n) matmul, which BLAS runs
    near peak speed, instead of n^2 passes over d. The formula loses precision when the rows'
    norms dwarf their distances (e.g. whole models that share the global weights); client
    *updates* are not like that, so rows are only centred on request (`centre=True`), which
    costs two more passes over the data and leaves the distances unchanged.
    """
    if centre:
        x = x - x.mean(0, keepdim=True)
    gram = _gram(x)
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0)
    dist.fill_diagonal_(0)
    return dist


def weighted_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of rows weighted by `weights` / their sum: (n, d), (n,) -> (d,)."""
    return (weights / weights.sum()) @ x
