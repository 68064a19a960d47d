"""Every poisonguard aggregator as a Flower strategy of the Message API (flwr >= 1.22).

    from poisonguard.federated.flower import RobustStrategy
    strategy = RobustStrategy("multi_krum", f=2, fraction_evaluate=0.0)
    # composes with Flower's DP wrappers, which wrap rather than subclass:
    strategy = DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=1.0,
                                                          clipping_norm=5.0, num_sampled_clients=10)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

Flower is an optional extra (`pip install poisonguard[fl]`); this module is the only one
that imports it, and nothing in poisonguard imports this module unless asked to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from poisonguard.federated.aggregators import Aggregator

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("poisonguard.federated.flower needs Flower: pip install 'poisonguard[fl]'") from exc

log = logging.getLogger(__name__)

__all__ = ["RobustStrategy", "arrays_to_flat", "flat_to_arrays"]


def arrays_to_flat(record: ArrayRecord, keys: list[str], shapes: list[tuple[int, ...]]) -> torch.Tensor:
    """One client's ArrayRecord as a flat float32 vector in the order of `keys`.

    Raises:
        ValueError: names or shapes differ from the global model's.
    """
    if list(record.keys()) != keys:
        raise ValueError(f"client arrays {list(record.keys())} do not match the global model's {keys}")
    parts = []
    for key, shape in zip(keys, shapes):
        value = record[key].numpy()
        if tuple(value.shape) != shape:
            raise ValueError(f"client array {key!r} has shape {tuple(value.shape)}, the global model {shape}")
        parts.append(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(-1))
    return torch.cat(parts)


def flat_to_arrays(flat: torch.Tensor, template: ArrayRecord) -> ArrayRecord:
    """A flat vector back into an ArrayRecord with the template's names, shapes and dtypes."""
    out, start = {}, 0
    for key in template.keys():
        ref = template[key].numpy()
        out[key] = Array(flat[start:start + ref.size].numpy().reshape(ref.shape).astype(ref.dtype))
        start += ref.size
    return ArrayRecord(out)


class RobustStrategy(FedAvg):
    """FedAvg's sampling and messaging with a poisonguard aggregation rule on the updates.

    Clients reply with their trained arrays (as for FedAvg); the strategy turns them into
    updates (reply minus the arrays it sent), aggregates them with the rule and returns the
    sent arrays plus the aggregate. Replies with NaN/Inf are excluded (logged and counted in
    the metric `poisonguard-excluded`); replies whose arrays do not match raise ValueError.

    Args:
        aggregator: a registered rule name (optionally `nnm+<rule>`) or an `Aggregator`.
        f: malicious clients tolerated (rules that take it, and NNM).
        root_update_fn: FLTrust only: `fn(arrays) -> ArrayRecord`, the server's model after
            training on its clean root set from `arrays`.
        aggregator_options: the rule's own hyperparameters.
        seed: seeds the rule's noise.
        **kwargs: FedAvg's arguments (fraction_train, min_available_nodes, ...).
    """

    def __init__(self, aggregator: str | Aggregator, *, f: int | None = None,
                 root_update_fn: Callable[[ArrayRecord], ArrayRecord] | None = None,
                 aggregator_options: dict[str, Any] | None = None, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aggregator = aggregator if isinstance(aggregator, Aggregator) else \
            Aggregator(aggregator, f=f, seed=seed, **(aggregator_options or {}))
        if "root_update" in self.aggregator.spec.needs and root_update_fn is None:
            raise ValueError(f"{self.aggregator.name} needs root_update_fn (the server's root-set training)")
        self.root_update_fn = root_update_fn
        self.current_arrays: ArrayRecord | None = None

    def __repr__(self) -> str:
        return f"RobustStrategy({self.aggregator!r})"

    def summary(self) -> None:
        log.info("poisonguard robust aggregation: %r", self.aggregator)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays  # updates are measured from what this round sends
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self.current_arrays is None:
            return None, None
        contents = [msg.content for msg in valid]
        keys = list(self.current_arrays.keys())
        shapes = [tuple(self.current_arrays[k].numpy().shape) for k in keys]
        start = arrays_to_flat(self.current_arrays, keys, shapes)
        client_flat = []
        for content in contents:
            record = content[self.arrayrecord_key] if self.arrayrecord_key in content.array_records \
                else next(iter(content.array_records.values()))
            client_flat.append(arrays_to_flat(record, keys, shapes))
        updates = torch.stack(client_flat) - start
        weights = torch.tensor([float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents])
        root_update = None
        if self.root_update_fn is not None:
            root_update = arrays_to_flat(self.root_update_fn(self.current_arrays), keys, shapes) - start
        result = self.aggregator(updates, weights, root_update=root_update)
        arrays = flat_to_arrays(start + result.update, self.current_arrays)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        metrics["poisonguard-excluded"] = len(result.excluded)
        if result.excluded:
            log.warning("round %d: excluded %d replies with NaN/Inf", server_round, len(result.excluded))
        return arrays, metrics
