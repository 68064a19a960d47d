"""The `poisonguard` command line: a thin layer over the library.

Foundation commands live here (attack, train, evaluate, demo, checklist); each defence
family adds its own commands from `poisonguard/<family>/cli.py` (`add_commands(subparsers)`).
A user's mistake prints one line and exits with code 2; nothing the user gave is overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from poisonguard import __version__, utils
from poisonguard.errors import UserError
from poisonguard.registry import import_plugins

log = logging.getLogger("poisonguard")

CLI_MODULES = (
    "poisonguard.detect.cli",
    "poisonguard.repair.cli",
    "poisonguard.certify.cli",
    "poisonguard.privacy.cli",
    "poisonguard.federated.cli",
)


# ---------------------------------------------------------------- shared argument helpers

def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def add_data(parser: argparse.ArgumentParser, *, required: bool = True, allow_none: bool = False) -> None:
    extra = " or 'none' (data-free methods)" if allow_none else ""
    parser.add_argument("--data", required=required, default=None if required else "mnist5k",
                        help=f"mnist5k, cifar10, a CIFAR archive or batches folder, an image folder, .zip or .npz{extra}")


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file: state dict / safetensors (+ metadata.json or --arch), TorchScript, .pt2")
    parser.add_argument("--arch", default=None, help="architecture of a bare state dict")


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def out_dir(path: str, *inputs: str | Path | None) -> Path:
    """The output folder, refusing any place where an output would replace an input file."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    for item in inputs:
        if item is None:
            continue
        item = Path(item).expanduser()
        if item.exists() and item.resolve().parent == out.resolve():
            raise UserError(f"--out {out} holds the input {item.name}; choose another folder so it is not overwritten")
    return out


# ---------------------------------------------------------------- loading what the user gave

def load_splits(spec: str, seed: int):
    from poisonguard.data import load_data

    splits = load_data(spec, seed=seed)
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise UserError(f"data set {spec!r} is empty")
    return splits


def load_checked_model(path: str, splits, arch: str | None):
    """Load a model safely and check it is a classifier for this data; return (LoadedModel, info)."""
    from poisonguard.models import check_classifier, load_model

    loaded = load_model(path, arch=arch, num_classes=splits.num_classes, input_shape=splits.input_shape)
    if loaded.input_shape is not None and tuple(loaded.input_shape) != tuple(splits.input_shape):
        raise UserError(f"the model takes inputs {tuple(loaded.input_shape)} but the data has {splits.input_shape}")
    check_classifier(loaded.model, splits.input_shape, splits.num_classes)
    info = {"path": str(path), "sha256": loaded.sha256, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "format": loaded.format,
            "architecture": loaded.metadata.get("architecture")}
    return loaded, info


def load_checked_trigger(path: str | None, splits):
    if path is None:
        return None
    from poisonguard.attacks import check_trigger_fits, load_trigger

    trigger = load_trigger(path)
    check_trigger_fits(trigger, splits.input_shape, splits.num_classes)
    return trigger


def parse_target(text: str) -> int:
    from poisonguard.attacks import ALL_TO_ALL

    if text.lower() in ("all", "all-to-all", "all_to_all"):
        return ALL_TO_ALL
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"target must be a class index or 'all', got {text!r}") from exc


# ---------------------------------------------------------------- attack / train

def add_attack_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("attack")
    g.add_argument("--target", type=parse_target, default=0, help="target class, or 'all' for all-to-all (y -> y+1)")
    g.add_argument("--rate", type=probability, default=0.1, help="share of training images poisoned (default 0.1)")
    g.add_argument("--patch-size", type=positive_int, default=3, help="BadNets patch side in pixels")
    g.add_argument("--position", default="bottom-right", help="BadNets patch position: bottom-right, top-left, center, ... or ROW,COL")
    g.add_argument("--color", default="1.0", help="BadNets patch colour: one value or one per channel, comma-separated, in [0, 1]")
    g.add_argument("--blend-ratio", type=probability, default=0.15, help="Blended: weight of the key image")
    g.add_argument("--blend-image", default=None, help="Blended: key image file (default: seeded uniform noise)")
    g.add_argument("--wanet-k", type=positive_int, default=4, help="WaNet control grid size")
    g.add_argument("--wanet-strength", type=float, default=0.5, help="WaNet warping strength s")
    g.add_argument("--source", type=int, default=None, help="label-flip: flip only this class")


def add_fit_options(parser: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--arch", default=None, help="architecture (default: mnist_cnn for 1 channel, preact_resnet18 for 3)")
    g.add_argument("--epochs", type=positive_int, default=epochs)
    g.add_argument("--batch-size", type=positive_int, default=None, help="default 64 (1 channel) or 128")
    g.add_argument("--lr", type=float, default=None, help="default 1e-3 for adam, 0.1 for sgd")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam (1 channel) or sgd")
    g.add_argument("--augment", choices=["auto", "none", "crop", "crop_flip"], default="auto")


def fit_config(args, splits):
    from poisonguard.train import FitConfig

    small = splits.input_shape[0] == 1
    return FitConfig(epochs=args.epochs, batch_size=args.batch_size or (64 if small else 128), lr=args.lr,
                     optimizer=args.optimizer or ("adam" if small else "sgd"), augment=args.augment,
                     seed=args.seed, device=args.device)


def default_arch(args, splits) -> str:
    return args.arch or ("mnist_cnn" if splits.input_shape[0] == 1 else "preact_resnet18")


def build_trigger(method: str, args, splits):
    """The trigger for a trigger attack, from the CLI options."""
    from PIL import Image

    from poisonguard.attacks import badnets_trigger, blended_trigger, wanet_trigger

    shape = splits.input_shape
    if args.target >= splits.num_classes or args.target < -1:
        raise UserError(f"target {args.target} is not a class of this {splits.num_classes}-class data")
    if method == "badnets":
        position = args.position
        if "," in position:
            position = tuple(int(v) for v in position.split(","))
        color = tuple(float(v) for v in str(args.color).split(","))
        return badnets_trigger(shape, target=args.target, size=args.patch_size, position=position,
                               color=color if len(color) > 1 else color[0])
    if method == "blended":
        image = None
        if args.blend_image:
            try:
                with Image.open(args.blend_image) as im:
                    im = im.convert("L" if shape[0] == 1 else "RGB").resize((shape[2], shape[1]))
                    arr = torch.tensor(list(im.getdata()), dtype=torch.float32) / 255
            except OSError as exc:
                raise UserError(f"cannot read blend image {args.blend_image}: {exc}") from exc
            image = arr.view(shape[1], shape[2], -1).permute(2, 0, 1)
        return blended_trigger(shape, target=args.target, ratio=args.blend_ratio, image=image, seed=args.seed)
    if method == "wanet":
        return wanet_trigger(shape, target=args.target, k=args.wanet_k, strength=args.wanet_strength, seed=args.seed)
    raise UserError(f"unknown attack {method!r}")


def poison(method: str, args, splits):
    """(training data, trigger or None) for an attack named on the command line."""
    from poisonguard.attacks import flip_labels, poison_dataset

    method = method.replace("-", "_")
    if method == "label_flip":
        target = None if args.target == -1 else args.target
        return flip_labels(splits.train, rate=args.rate, target=target, source=args.source, seed=args.seed).data, None
    trigger = build_trigger(method, args, splits)
    return poison_dataset(splits.train, trigger, rate=args.rate, seed=args.seed).data, trigger


def evaluation_section(report, model, splits, trigger, *, title: str, order: int = 10):
    """Evaluate, add a before-anything section with the trigger shown, and return the Evaluation."""
    from poisonguard.report import table
    from poisonguard.train import evaluate

    ev = evaluate(model, splits.test, trigger)
    html = table(["clean accuracy", "attack success rate"], [[ev.clean_accuracy, ev.attack_success_rate]])
    if trigger is not None:
        html += trigger_figure(trigger, splits)
    summary = f"Clean accuracy {ev.clean_accuracy:.1%}" + (
        f"; the trigger makes {ev.attack_success_rate:.1%} of other-class test images go to the target." if trigger else ".")
    report.add_section(title, html, summary=summary, order=order)
    return ev


def trigger_figure(trigger, splits) -> str:
    from poisonguard.attacks import PatchTrigger
    from poisonguard.report import img
    from poisonguard.report.plots import image_grid

    examples = splits.test.x[:4]
    stamped = trigger.apply(examples)
    if isinstance(trigger, PatchTrigger):
        row = [trigger.mask, trigger.pattern, *stamped]
        titles = ["mask", "pattern", *["triggered"] * len(stamped)]
    else:
        row = [*examples[:2], *stamped[:2], (stamped[0] - examples[0]).abs() * 5]
        titles = ["clean", "clean", "warped", "warped", "|diff| x5"]
    return img(image_grid([row], col_titles=titles), "trigger")


def _train_and_save(args, splits, train_data, trigger, out: Path, report, *, command: str, defense=None):
    from poisonguard.defenses import TrainJob
    from poisonguard.models import build_model, save_model
    from poisonguard.train import fit

    arch = default_arch(args, splits)
    config = fit_config(args, splits)
    start = time.perf_counter()
    if defense is None:
        model = fit(build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, seed=config.seed),
                    train_data, config)
        saved = False
    else:
        job = TrainJob(args=args, splits=splits, train=train_data, arch=arch, config=config, out_dir=out,
                       report=report, trigger=trigger)
        model = defense.run(job)
        saved = job.saved
    seconds = time.perf_counter() - start
    ev = evaluation_section(report, model, splits, trigger, title="Trained model")
    training = {"command": command, "data": splits.name, "epochs": config.epochs, "optimizer": config.optimizer,
                "batch_size": config.batch_size, "seed": args.seed, "seconds": round(seconds, 2),
                "attack": getattr(args, "attack_name", None), "rate": getattr(args, "rate", None),
                "defense": getattr(args, "defense", None)}
    metrics = {"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate}
    if not saved:
        meta = save_model(model, out / "model.pt", arch=arch, classes=splits.classes, input_shape=splits.input_shape,
                          training=training, extra=metrics)
        report.set("model", {"path": str(out / "model.pt"), "sha256": meta["sha256"], "num_classes": splits.num_classes,
                             "input_shape": list(splits.input_shape), "architecture": arch})
    if trigger is not None:
        from poisonguard.attacks import save_trigger

        save_trigger(trigger, out / "trigger.npz")
    report.set("evaluation", ev)
    report.set("training", training)
    report.write(out)
    return model, ev


def cmd_attack(args) -> int:
    from poisonguard.report import Report

    out = out_dir(args.out)
    splits = load_splits(args.data, args.seed)
    train_data, trigger = poison(args.method, args, splits)
    args.attack_name = args.method
    report = Report("attack")
    _, ev = _train_and_save(args, splits, train_data, trigger, out, report, command="attack")
    print(json.dumps({"out": str(out), **ev.to_dict()}))
    return 0


def cmd_train(args) -> int:
    from poisonguard.defenses import load_defenses
    from poisonguard.report import Report

    out = out_dir(args.out)
    splits = load_splits(args.data, args.seed)
    registry = load_defenses()
    name = args.defense
    if name in (None, "none"):
        implied = [n for n in registry.names() if any(getattr(args, o, None) is not None for o in registry.get(n).implied_by)]
        if len(implied) > 1:
            raise UserError(f"options given for several defences ({', '.join(implied)}); choose one with --defense")
        name = implied[0] if implied else None
    defense = registry.get(name) if name else None
    args.defense = name
    if args.poison:
        train_data, trigger = poison(args.poison, args, splits)
        args.attack_name = args.poison
    else:
        train_data, trigger = splits.train, None
    report = Report("train")
    _, ev = _train_and_save(args, splits, train_data, trigger, out, report, command="train", defense=defense)
    print(json.dumps({"out": str(out), **ev.to_dict()}))
    return 0


# ---------------------------------------------------------------- evaluate / checklist / demo

def cmd_evaluate(args) -> int:
    from poisonguard.train import evaluate

    splits = load_splits(args.data, args.seed)
    loaded, info = load_checked_model(args.model, splits, args.arch)
    trigger = load_checked_trigger(args.trigger, splits)
    ev = evaluate(loaded.model, splits.test, trigger)
    if args.out:
        from poisonguard.report import Report

        out = out_dir(args.out, args.model, args.trigger)
        report = Report("evaluate")
        report.set("model", info)
        evaluation_section(report, loaded.model, splits, trigger, title="Evaluation")
        report.set("evaluation", ev)
        report.write(out)
    print(json.dumps(ev.to_dict()))
    return 0


def _run_checklist(ctx, report, out: Path) -> int:
    from poisonguard.stages import run_stages

    ok = run_stages(ctx, only=ctx.shared.get("only"))
    path = report.write(out)
    failed = [s["stage"] for s in report.data.get("stages", []) if s["status"] != "ok"]
    print(json.dumps({"report": str(path), "stages": [s["stage"] for s in report.data.get("stages", [])], "failed": failed}))
    return 0 if ok else 1


def cmd_checklist(args) -> int:
    from poisonguard.report import Report
    from poisonguard.stages import StageContext

    out = out_dir(args.out, args.model, args.trigger)
    splits = load_splits(args.data, args.seed)
    loaded, info = load_checked_model(args.model, splits, args.arch)
    trigger = load_checked_trigger(args.trigger, splits)
    report = Report("checklist")
    report.set("model", info)
    report.set("evaluation", evaluation_section(report, loaded.model, splits, trigger, title="Model under test"))
    ctx = StageContext(command="checklist", model=loaded.model, splits=splits, report=report, out_dir=out,
                       arch=info["architecture"], trigger=trigger, seed=args.seed, device=args.device, quick=args.quick)
    if args.stages:
        ctx.shared["only"] = [s.strip() for s in args.stages.split(",")]
    return _run_checklist(ctx, report, out)


def cmd_demo(args) -> int:
    """Train a backdoored and a clean model on MNIST 5k, compare them, then run every stage."""
    from poisonguard.attacks import badnets_trigger, poison_dataset, save_trigger
    from poisonguard.models import build_model, save_model
    from poisonguard.report import Report, table
    from poisonguard.stages import StageContext
    from poisonguard.train import FitConfig, evaluate, fit

    out = out_dir(args.out)
    splits = load_splits(args.data, args.seed)
    arch = "mnist_cnn" if splits.input_shape[0] == 1 else "preact_resnet18"
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    poisoned = poison_dataset(splits.train, trigger, rate=0.1, seed=args.seed).data
    config = FitConfig(epochs=args.epochs, batch_size=64, seed=args.seed, device=args.device)
    report = Report("demo")
    models = {}
    for name, data in (("backdoored", poisoned), ("clean", splits.train)):
        start = time.perf_counter()
        model = fit(build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, seed=config.seed),
                    data, config)
        ev = evaluate(model, splits.test, trigger)
        meta = save_model(model, out / name / "model.pt", arch=arch, classes=splits.classes, input_shape=splits.input_shape,
                          training={"command": "demo", "poisoned": name == "backdoored", "epochs": config.epochs},
                          extra={"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate})
        models[name] = (model, ev, meta, time.perf_counter() - start)
    save_trigger(trigger, out / "backdoored" / "trigger.npz")
    model, ev, meta, _ = models["backdoored"]
    report.set("model", {"path": str(out / "backdoored" / "model.pt"), "sha256": meta["sha256"],
                         "num_classes": splits.num_classes, "input_shape": list(splits.input_shape), "architecture": arch})
    report.set("evaluation", {name: m[1] for name, m in models.items()})
    rows = [[name, m[1].clean_accuracy, m[1].attack_success_rate, round(m[3], 1)] for name, m in models.items()]
    report.add_section(
        "Backdoored vs clean model",
        table(["model", "clean accuracy", "attack success rate", "train seconds"], rows) + trigger_figure(trigger, splits),
        summary=(f"Both models are equally accurate on clean digits ({models['backdoored'][1].clean_accuracy:.1%} vs "
                 f"{models['clean'][1].clean_accuracy:.1%}), but a 3x3 white square turns "
                 f"{ev.attack_success_rate:.1%} of the backdoored model's inputs into class 0 "
                 f"(the clean model: {models['clean'][1].attack_success_rate:.1%}). Accuracy alone cannot reveal a backdoor."),
        order=10)
    ctx = StageContext(command="demo", model=model, splits=splits, report=report, out_dir=out, arch=arch,
                       trigger=trigger, seed=args.seed, device=args.device, quick=True, clean_model=models["clean"][0])
    return _run_checklist(ctx, report, out)


# ---------------------------------------------------------------- parser and entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poisonguard", description="Detect, remove, certify and train against backdoors and data poisoning.")
    parser.add_argument("--version", action="version", version=f"poisonguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("attack", help="train a model with a planted backdoor (to test defences on)")
    p.add_argument("method", choices=["badnets", "blended", "wanet", "label-flip"])
    add_data(p)
    add_attack_options(p)
    add_fit_options(p)
    p.add_argument("--out", required=True, help="folder for model.pt, trigger.npz, metadata.json, report.*")
    add_common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("train", help="train a model, optionally on poisoned data and with a training-time defence")
    add_data(p)
    p.add_argument("--poison", choices=["badnets", "blended", "wanet", "label-flip"], default=None, help="poison the training data first")
    add_attack_options(p)
    add_fit_options(p)
    from poisonguard.defenses import load_defenses

    registry = load_defenses()
    p.add_argument("--defense", default=None, choices=["none", *[n.replace("_", "-") for n in registry.names()], *registry.names()],
                   help="training-time defence")
    for name in registry.names():
        registry.get(name).add_arguments(p.add_argument_group(f"defence {name}"))
    p.add_argument("--out", required=True)
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="clean accuracy and (with --trigger) attack success rate of a model")
    add_model(p)
    add_data(p)
    p.add_argument("--trigger", default=None, help="trigger .npz to measure the attack success rate")
    p.add_argument("--out", default=None, help="also write report.json and report.html here")
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("checklist", help="run every available defence stage on a model: one report card")
    add_model(p)
    add_data(p)
    p.add_argument("--trigger", default=None, help="the real trigger, if known, to measure attack success")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run")
    p.add_argument("--quick", action="store_true", help="short settings for every stage")
    p.add_argument("--out", default="poisonguard-checklist")
    add_common(p)
    p.set_defaults(func=cmd_checklist)

    p = sub.add_parser("demo", help="train a backdoored and a clean model on MNIST 5k and run the whole checklist")
    add_data(p, required=False)
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--out", default="poisonguard-demo")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    for module in import_plugins(CLI_MODULES):
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    utils.QUIET = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if utils.QUIET else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"poisonguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poisonguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
