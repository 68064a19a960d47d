"""`poisonguard fl simulate` and `poisonguard fl compare`: federated attacks vs aggregation rules."""

from __future__ import annotations

import argparse
import json

from poisonguard.errors import UserError
from poisonguard.utils import check_option_types, parse_options


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    from poisonguard.cli.options import add_common, add_data, positive_float, positive_int

    add_data(p, required=False)
    g = p.add_argument_group("federation")
    g.add_argument("--clients", type=positive_int, default=20, help="number of clients N (default 20)")
    g.add_argument("--malicious", type=int, default=0, help="malicious clients M (ids 0..M-1; default 0)")
    g.add_argument("--rounds", type=positive_int, default=10, help="attacked rounds R (default 10)")
    g.add_argument("--warmup", type=int, default=0,
                   help="attack-free FedAvg rounds first (a converging model, where model replacement strikes)")
    g.add_argument("--dirichlet", type=positive_float, default=None, metavar="ALPHA",
                   help="non-IID Dirichlet(ALPHA) split (default: IID)")
    g.add_argument("--sample-fraction", type=float, default=1.0, help="share of clients sampled per round")
    g.add_argument("--local-epochs", type=positive_int, default=1)
    g.add_argument("--batch-size", type=positive_int, default=32)
    g.add_argument("--lr", type=positive_float, default=None,
                   help="local SGD learning rate (momentum 0.9; default 0.02, 0.2 for text)")
    g.add_argument("--arch", default=None,
                   help="model (default mnist_cnn for 1 channel, lenet5 for 3, mlp for tables, text_cnn for text)")
    g.add_argument("--f", type=int, default=None, help="malicious clients the rule tolerates (default: --malicious)")
    g.add_argument("--agg-opt", action="append", metavar="NAME=VALUE", help="aggregator hyperparameter, repeatable")
    g.add_argument("--attack-opt", action="append", metavar="NAME=VALUE",
                   help="attack option (boost, poison_rate, target, scale, sigma, epsilon, backdoor, z), repeatable")
    g.add_argument("--vmap", choices=["auto", "on", "off"], default="auto",
                   help="train clients together with torch.func.vmap (auto: on CUDA only)")
    add_common(p)


# Local SGD rates: text embeddings learn slowly at the images' rate (Fortunes' 6 topics, text_cnn,
# 10 rounds, seed 0: lr 0.02 -> 24% test accuracy, the majority share; 0.2 -> 44%; 1.0 -> 23%).
DEFAULT_LR = {"image": 0.02, "tabular": 0.02, "text": 0.2}


def _simulator(args, splits):
    from poisonguard.federated.simulate import Simulator

    if args.malicious < 0 or args.malicious > args.clients:
        raise UserError(f"--malicious must lie in [0, --clients={args.clients}], got {args.malicious}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be non-negative, got {args.warmup}")
    from poisonguard.cli.inputs import check_trainable

    check_trainable(args.arch)  # the clients train it: a built-in, as train's
    return Simulator(clients=args.clients, malicious=args.malicious, rounds=args.rounds, dirichlet=args.dirichlet,
                     sample_fraction=args.sample_fraction, local_epochs=args.local_epochs,
                     batch_size=args.batch_size, lr=args.lr or DEFAULT_LR[splits.kind], arch=args.arch, vectorize={'auto': None, 'on': True, 'off': False}[args.vmap],
                     seed=args.seed, device=args.device)


def _check_model(sim, splits) -> None:
    """The federation's model must take these images (1x1 images and mnist_cnn: one line, not a traceback)."""
    import warnings

    from poisonguard.cli.inputs import check_model_fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sim.build_model(splits)
    check_model_fits(model, f"architecture {sim.arch!r}" if sim.arch else "the default model", splits)


def _names(text: str, known: list[str], kind: str) -> list[str]:
    names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
    for name in names:
        base = name[4:] if name.startswith("nnm+") else name
        if base not in known:
            raise UserError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    if not names:
        raise UserError(f"give at least one {kind}")
    return names


def _check_attack_options(items: list[str] | None, attacks: list[str]) -> None:
    """Unknown --attack-opt names would be ignored by the attacks: refuse them instead."""
    import inspect

    from poisonguard.federated.attacks import FL_ATTACKS

    given = parse_options(items)
    known: dict[str, inspect.Parameter] = {}
    for name in attacks:
        for cls in FL_ATTACKS.get(name).__mro__:  # a subclass may pass **options on to its base
            if "__init__" in vars(cls):
                params = inspect.signature(vars(cls)["__init__"]).parameters.values()
                known.update({p.name: p for p in params if p.kind is p.KEYWORD_ONLY
                              and p.name not in ("input_shape", "num_classes")})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"--attack-opt {', '.join(unknown)}: not an option of {', '.join(attacks)} "
                        f"(known: {', '.join(sorted(known)) or 'none'})")
    check_option_types(given, known, "--attack-opt")


def _splits(args):
    """The federation's data: images or a table as loaded everywhere; text as token ids, over a
    vocabulary built from the training part (a real federation agrees on one in advance)."""
    from poisonguard.cli import text
    from poisonguard.cli.inputs import load_splits

    if not text.wants_text(args):
        return load_splits(args.data, args.seed)
    from poisonguard.data.dataset import Splits
    from poisonguard.data.text import encode

    corpus = text.load_corpus(args)
    tok = text.fitted_tokenizer(args, corpus.train)
    return Splits(corpus.name, encode(corpus.train, tok), encode(corpus.test, tok))


def cmd_simulate(args) -> int:
    from poisonguard.cli.inputs import data_inputs, guard_out
    from poisonguard.federated.aggregators import aggregator_names, make_aggregator
    from poisonguard.federated.attacks import attack_names, make_attack
    from poisonguard.federated.report import federated_section
    from poisonguard.report import Report

    _names(args.aggregator, aggregator_names(), "aggregator")
    _names(args.attack, attack_names(), "attack")
    _check_attack_options(args.attack_opt, [args.attack])
    out = guard_out(args.out, command="fl-simulate", force=args.force, inputs=data_inputs(args.data))
    splits = _splits(args)
    sim = _simulator(args, splits)
    _check_model(sim, splits)
    f = args.malicious if args.f is None else args.f
    agg_options = parse_options(args.agg_opt)
    from poisonguard.federated.aggregators import AGGREGATORS

    import inspect

    rule = args.aggregator.strip().lower().replace("-", "_").removeprefix("nnm+")
    check_option_types(agg_options, inspect.signature(AGGREGATORS.get(rule).fn).parameters, "--agg-opt")
    aggregator = make_aggregator(args.aggregator, f=f, seed=args.seed, **agg_options)
    attack = make_attack(args.attack, input_shape=splits.input_shape, num_classes=splits.num_classes, data=splits.train,
                         **parse_options(args.attack_opt))
    initial = sim.pretrain(splits, args.warmup) if args.warmup else None
    try:
        result = sim.run(splits, aggregator, attack, initial=initial)
    except ValueError as exc:  # a rule's bound (e.g. Krum's n > 2f + 2) for this federation
        raise UserError(str(exc)) from exc
    report = Report("fl")
    report.set("data", splits.name)
    report.set("federated", result)
    federated_section(report, [result])
    path = report.write(out)
    last = result.rounds[-1]
    print(json.dumps({"report": str(path), "aggregator": result.aggregator, "attack": result.attack,
                      "clean_accuracy": last.clean_accuracy, "attack_success_rate": last.attack_success_rate}))
    return 0


def cmd_compare(args) -> int:
    from poisonguard.cli.inputs import data_inputs, guard_out
    from poisonguard.federated.aggregators import aggregator_names
    from poisonguard.federated.attacks import attack_names
    from poisonguard.federated.report import federated_section, summary_rows
    from poisonguard.federated.simulate import run_table
    from poisonguard.report import Report

    if args.agg_opt or args.f is not None:
        raise UserError("compare runs every rule with its defaults and f = --malicious; use 'fl simulate' for --agg-opt/--f")
    aggs = _names(args.aggregators, aggregator_names(), "aggregator")
    attacks = _names(args.attacks, attack_names(), "attack")
    _check_attack_options(args.attack_opt, attacks)
    out = guard_out(args.out, command="fl-compare", force=args.force, inputs=data_inputs(args.data))
    splits = _splits(args)
    sim = _simulator(args, splits)
    _check_model(sim, splits)
    results = run_table(splits, sim, aggs, attacks, warmup_rounds=args.warmup,
                        attack_options=parse_options(args.attack_opt))
    failed = [r for r in results if not r.rounds]
    if len(failed) == len(results):  # nothing was measured: a table of gaps is not a result
        raise UserError("no aggregator could run in this federation: "
                        + "; ".join(f"{r.aggregator} vs {r.attack}: {r.extra.get('error')}" for r in failed))
    report = Report("fl")
    report.set("data", splits.name)
    report.set("federated", {"table": results})
    federated_section(report, results)
    path = report.write(out)
    print(json.dumps({"report": str(path), "table": summary_rows(results), "failed_runs": len(failed)}))
    return 0


def add_commands(sub) -> None:
    from poisonguard.federated.aggregators import aggregator_names
    from poisonguard.federated.attacks import attack_names

    fl = sub.add_parser("fl", help="federated learning: attacks by malicious clients vs robust aggregation")
    fl_sub = fl.add_subparsers(dest="fl_command", required=True, metavar="SUBCOMMAND")

    p = fl_sub.add_parser("simulate", help="simulate federated training with malicious clients and one aggregator")
    p.add_argument("--attack", default="none", help=f"one of: {', '.join(attack_names())}")
    p.add_argument("--aggregator", default="fedavg",
                   help=f"one of: {', '.join(aggregator_names())} (prefix nnm+ for nearest-neighbour mixing)")
    p.add_argument("--out", default="poisonguard-fl")
    _add_sim_options(p)
    p.set_defaults(func=cmd_simulate)

    p = fl_sub.add_parser("compare", help="every aggregator against every attack: one table")
    p.add_argument("--aggregators", default="fedavg,median,trimmed_mean,multi_krum,norm_bound,flame")
    p.add_argument("--attacks", default="none,model_replacement,alie")
    p.add_argument("--out", default="poisonguard-fl-compare")
    _add_sim_options(p)
    p.set_defaults(func=cmd_compare)
