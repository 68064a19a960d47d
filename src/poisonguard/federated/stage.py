"""The `federated` stage of demo/checklist: FedAvg vs a robust rule under model replacement."""

from __future__ import annotations


from poisonguard.data import Splits, per_class_subset
from poisonguard.stages import NotApplicable, StageContext, register_stage

FOREIGN = ("this stage federates the model under test through the tool's own architecture registry; "
           "{why}, so it would have to train a different model instead")


@register_stage("federated", order=60)
def federated_stage(ctx: StageContext) -> None:
    """Ten clients, two of them boosting a backdoored update (Bagdasaryan et al., 2020): what
    FedAvg lets through and what FLAME stops, a few rounds from a trained model."""
    from poisonguard.federated.aggregators import Aggregator
    from poisonguard.federated.attacks import make_attack
    from poisonguard.federated.report import federated_section
    from poisonguard.federated.simulate import Simulator, flat_params

    if ctx.arch is None:
        raise NotApplicable(FOREIGN.format(why="the model's architecture is not a built-in one (a TorchScript, ONNX or "
                                               "torch.export file, or a library's or your own --arch)"))
    splits = ctx.splits
    if ctx.quick:  # half the data keeps the demo stage near 20 s on two cores
        splits = Splits(splits.name, per_class_subset(splits.train, fraction=0.5, seed=ctx.seed), splits.test)
    sim = Simulator(clients=10, malicious=2, rounds=2 if ctx.quick else 5, arch=ctx.arch, seed=ctx.seed,
                    device=ctx.device)
    if flat_params(ctx.model).shape != flat_params(sim.build_model(splits)).shape:
        raise NotApplicable(FOREIGN.format(why=f"its parameters do not fit the registered {ctx.arch!r}"))
    # Federate on from a trained model (where model replacement strikes): the demo's clean one, else
    # a few attack-free FedAvg rounds. Never the model under test: a backdoor it already holds
    # (tabular-trigger seed 0 is the stage's own trigger) read as the attackers' getting through.
    warmup = 0 if ctx.clean_model is not None else (2 if ctx.quick else 5)
    initial = flat_params(ctx.clean_model).cpu() if ctx.clean_model is not None else sim.pretrain(splits, warmup)
    results = []
    for name in ("fedavg", "flame"):
        attack = make_attack("model_replacement", input_shape=splits.input_shape, num_classes=splits.num_classes,
                             data=splits.train, seed=ctx.seed)
        results.append(sim.run(splits, Aggregator(name, f=sim.malicious, seed=ctx.seed), attack, initial=initial))
    fedavg, robust = results
    ctx.report.set("federated", {**robust.to_dict(), "baseline": fedavg.to_dict(),
                                 "start": "the clean model" if warmup == 0 else f"{warmup} attack-free FedAvg rounds"})
    federated_section(ctx.report, results, title="Federated learning: a malicious client's backdoor vs aggregation")
    ctx.shared["federated"] = results
