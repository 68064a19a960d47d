"""A Flower ServerApp/ClientApp pair that trains mnist_cnn with a poisonguard robust strategy.

Run it in Flower's simulation engine on one machine:

    PYTHONPATH=src python examples/flower_robust/app.py --nodes 10 --rounds 3 --aggregator flame

or as a real deployment (SuperLink + SuperNodes) with `flwr run examples/flower_robust`, which
reads `pyproject.toml` here (`serverapp = "app:server"`, `clientapp = "app:client"`); each
SuperNode then sets `--node-config "partition-id=<i> num-partitions=<n>"`.
"""

from __future__ import annotations

import argparse

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from poisonguard.data import load_data
from poisonguard.federated.flower import RobustStrategy
from poisonguard.federated.simulate import split_clients
from poisonguard.models import build_model
from poisonguard.train import accuracy, fit

client = ClientApp()
server = ServerApp()


def _model(splits):
    return build_model("mnist_cnn", num_classes=splits.num_classes, input_shape=splits.input_shape, seed=0)


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on this node's share of MNIST 5k (a real client would load its own data)."""
    splits = load_data("mnist5k")
    pid = int(context.node_config.get("partition-id", 0))
    parts = int(context.node_config.get("num-partitions", 10))
    idx = split_clients(splits.train.y.numpy(), parts, seed=0)[pid]
    model = _model(splits)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    fit(model, splits.train.subset(idx), epochs=1, batch_size=32, lr=0.02, optimizer="sgd", seed=pid, device="cpu")
    reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(idx)})})
    return Message(reply, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    splits = load_data("mnist5k")
    model = _model(splits)
    strategy = RobustStrategy(str(cfg.get("aggregator", "multi_krum")), f=int(cfg.get("f", 1)), fraction_evaluate=0.0)

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": accuracy(model, splits.test)})

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(cfg.get("num-server-rounds", 3)), evaluate_fn=evaluate)
    print(result)


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--aggregator", default="multi_krum")
    args = p.parse_args()

    @server.main()  # the same main, with the command line as its run config
    def _main(grid: Grid, context: Context) -> None:
        context.run_config.update({"aggregator": args.aggregator, "num-server-rounds": args.rounds})
        main(grid, context)

    run_simulation(server_app=server, client_app=client, num_supernodes=args.nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
