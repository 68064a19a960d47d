"""Flower strategies: every aggregator end to end in Flower's simulation engine (one Ray start)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from poisonguard.federated.aggregators import aggregator_names  # noqa: E402

N_NODES = 7
RESULTS: dict[str, np.ndarray] = {}


def _apps():
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    from poisonguard.federated.flower import RobustStrategy

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        # Node 0 boosts its update 100x (model replacement); the rest move by about +1.
        step = 100.0 if pid == 0 else 1.0 + 0.01 * pid
        new = ArrayRecord([a + step for a in arrays])
        return Message(RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        start = ArrayRecord([np.zeros(4, dtype=np.float32), np.zeros((2, 3), dtype=np.float32)])
        common = dict(fraction_evaluate=0.0, min_available_nodes=N_NODES, min_train_nodes=N_NODES)
        for name in [*aggregator_names(), "nnm+median"]:
            strategy = RobustStrategy(name, f=1, root_update_fn=lambda a: ArrayRecord([x + 1.0 for x in a.to_numpy_ndarrays()]),
                                      **common) if name == "fltrust" else RobustStrategy(name, f=1, **common)
            result = strategy.start(grid=grid, initial_arrays=start, num_rounds=1)
            RESULTS[name] = np.concatenate([a.ravel() for a in result.arrays.to_numpy_ndarrays()])
        wrapped = DifferentialPrivacyServerSideFixedClipping(RobustStrategy("multi_krum", f=1, **common),
                                                             noise_multiplier=0.0, clipping_norm=1e4,
                                                             num_sampled_clients=N_NODES)
        result = wrapped.start(grid=grid, initial_arrays=start, num_rounds=2)
        RESULTS["dp(multi_krum)"] = np.concatenate([a.ravel() for a in result.arrays.to_numpy_ndarrays()])

    return server, client


@pytest.mark.slow
def test_every_aggregator_in_flower_simulation():
    from flwr.simulation import run_simulation

    server, client = _apps()
    run_simulation(server_app=server, client_app=client, num_supernodes=N_NODES,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert set(RESULTS) == {*aggregator_names(), "nnm+median", "dp(multi_krum)"}
    assert RESULTS["fedavg"].mean() > 10  # (100 + 6 * ~1) / 7: the boosted node wins
    for name, value in RESULTS.items():
        if name == "fedavg":
            continue
        expected = 2.0 if name == "dp(multi_krum)" else 1.0  # two rounds for the DP-wrapped run
        assert np.all(np.abs(value - expected) < 0.2 * expected), (name, value)


def test_strategy_aggregates_replies_without_the_engine():
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from poisonguard.federated.flower import RobustStrategy, arrays_to_flat

    start = ArrayRecord([np.zeros(3, dtype=np.float32)])
    strategy = RobustStrategy("median", fraction_evaluate=0.0)
    strategy.current_arrays = start
    replies = []
    for value in (1.0, 2.0, float("nan"), 50.0, 3.0):
        ask = Message(RecordDict({"arrays": start}), dst_node_id=1, message_type="train")
        replies.append(Message(RecordDict({"arrays": ArrayRecord([np.full(3, value, dtype=np.float32)]),
                                           "metrics": MetricRecord({"num-examples": 5})}), reply_to=ask))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert torch.allclose(arrays_to_flat(arrays, list(arrays.keys()), [(3,)]), torch.full((3,), 2.5))
    assert metrics["poisonguard-excluded"] == 1
    bad = Message(RecordDict({"arrays": ArrayRecord([np.zeros(4, dtype=np.float32)]),
                              "metrics": MetricRecord({"num-examples": 5})}),
                  reply_to=Message(RecordDict({"arrays": start}), dst_node_id=1, message_type="train"))
    with pytest.raises(ValueError, match="shape"):
        strategy.aggregate_train(2, [replies[0], bad])
