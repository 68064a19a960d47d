"""The foundation commands: attack, train, evaluate, checklist, demo."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from poisonguard.cli.inputs import (OUTPUTS, build_checked_model, check_finite_model, data_inputs, feature_record,
                                    file_inputs, guard_out, load_checked_model, load_checked_trigger, load_splits,
                                    model_inputs)
from poisonguard.cli.options import add_attack_options, add_common, add_data, add_fit_options, add_model, default_arch, fit_config, positive_int
from poisonguard.cli.triggers import poison
from poisonguard.errors import EXIT_FINDING, EXIT_INCOMPLETE, EXIT_OK, UserError, user_values
from poisonguard.report.evaluation import evaluation_section, trigger_figure

log = logging.getLogger(__name__)


def defense_options(defense, args):
    """The defence's typed options, filled from the command-line arguments of the same names."""
    names = [f.name for f in dataclasses.fields(defense.options)]
    with user_values():
        return defense.options(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def _train_and_save(args, splits, train_data, trigger, out: Path, report, *, command: str, defense=None):
    from poisonguard.defenses import TrainJob
    from poisonguard.models import save_model
    from poisonguard.train import fit

    arch = default_arch(args, splits)
    with user_values():
        config = fit_config(args, splits)
    start = time.perf_counter()
    if defense is None:
        model = fit(build_checked_model(arch, splits, seed=config.seed), train_data, config)
        saved, job = False, None
    else:
        build_checked_model(arch, splits, seed=config.seed)  # fail before training when the images do not fit
        job = TrainJob(options=defense_options(defense, args), splits=splits, train=train_data, arch=arch, config=config, out_dir=out,
                       report=report, trigger=trigger)
        model = defense.run(job)
        saved = job.saved
    try:
        check_finite_model(model, x=splits.test.x[:64])
    except UserError:
        for name in OUTPUTS["train"] if saved else ():  # what the defence saved of a diverged model
            (out / name).unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    ev = evaluation_section(report, model, splits, trigger, title="Trained model")
    _warn_if_majority_only(ev, splits)
    training = {"command": command, "data": splits.name, "epochs": config.epochs, "optimizer": config.optimizer,
                "batch_size": config.batch_size, "seed": args.seed, "seconds": round(seconds, 2),
                "attack": getattr(args, "attack_name", None),
                "rate": getattr(args, "rate", None) if getattr(args, "attack_name", None) else None,
                "defense": getattr(args, "defense", None)}
    target = getattr(trigger, "target", None)
    if target is not None and 0 <= target < splits.num_classes:  # the class --target's index named
        training.update(target=int(target), target_class=str(splits.classes[target]))
    privacy = job.extra.get("privacy") if job is not None else None
    if privacy is not None:  # DP-SGD trains with its own optimiser and batch, not the plain training's defaults
        training.update({k: privacy.extra[k] for k in ("optimizer", "batch_size") if k in privacy.extra})
    metrics = {"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate}
    if not saved:
        meta = save_model(model, out / "model.pt", arch=arch, classes=splits.classes, input_shape=splits.input_shape,
                          training=training, extra={**metrics, **feature_record(splits)})
        report.set("model", {"path": str(out / "model.pt"), "sha256": meta["sha256"], "num_classes": splits.num_classes,
                             "input_shape": list(splits.input_shape), "architecture": arch})
    if trigger is not None:
        from poisonguard.attacks import save_trigger

        save_trigger(trigger, out / "trigger.npz")
    report.set("evaluation", evaluation_line(ev, trigger))
    report.set("training", training)
    report.write(out)
    return model, ev


def cmd_attack(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.train_or_attack(args, command="attack", method=args.method)
    from poisonguard.report import Report

    out = guard_out(args.out, command="attack", force=args.force,
                    inputs=[*data_inputs(args.data), *file_inputs(("--blend-image", args.blend_image))])
    splits = load_splits(args.data, args.seed)
    train_data, trigger = poison(args.method, args, splits)
    args.attack_name = args.method
    report = Report("attack")
    _, ev = _train_and_save(args, splits, train_data, trigger, out, report, command="attack")
    print(json.dumps({"out": str(out), **evaluation_line(ev, trigger)}))
    return 0


def cmd_train(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.train_or_attack(args, command="train", method=args.poison)
    from poisonguard.defenses import load_defenses
    from poisonguard.report import Report

    out = guard_out(args.out, command="train", force=args.force,
                    inputs=[*data_inputs(args.data), *file_inputs(("--blend-image", args.blend_image))])
    splits = load_splits(args.data, args.seed)
    registry = load_defenses()
    name = args.defense
    if name in (None, "none"):
        implied = [n for n in registry.names() if any(getattr(args, o, None) is not None for o in registry.get(n).implied_by)]
        if len(implied) > 1:
            raise UserError(f"options given for several defences ({', '.join(implied)}); choose one with --defense")
        name = implied[0] if implied else None
    defense = registry.get(name) if name else None
    own = set(defense.implied_by) if defense else set()
    stray = sorted({(o, n) for n in registry.names() if n != name for o in registry.get(n).implied_by
                    if o not in own and getattr(args, o, None) is not None})
    if stray:  # e.g. --dp-epsilon beside --defense partition: it would be ignored without a word
        option, owner = stray[0]
        raise UserError(f"--{option.replace('_', '-')} is an option of --defense {owner}, not of --defense {name}; "
                        "give the options of one defence")
    args.defense = name
    if args.poison:
        train_data, trigger = poison(args.poison, args, splits)
        args.attack_name = args.poison
    else:
        train_data, trigger = splits.train, None
    report = Report("train")
    _, ev = _train_and_save(args, splits, train_data, trigger, out, report, command="train", defense=defense)
    print(json.dumps({"out": str(out), **evaluation_line(ev, trigger)}))
    return 0


def cmd_evaluate(args) -> int:
    from poisonguard.cli import text

    if text.wants_text(args):
        return text.evaluate(args)
    from poisonguard.train import evaluate

    out = None
    if args.out is not None:
        out = guard_out(args.out, command="evaluate", force=args.force,
                        inputs=[*model_inputs(args.model), *data_inputs(args.data), *file_inputs(("trigger", args.trigger))])
    splits = load_splits(args.data, args.seed, model=args.model)
    loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
    trigger = load_checked_trigger(args.trigger, splits)
    ev = evaluate(loaded.model, splits.test, trigger)
    if out is not None:
        from poisonguard.report import Report

        report = Report("evaluate")
        report.set("model", info)
        evaluation_section(report, loaded.model, splits, trigger, title="Evaluation")
        report.set("evaluation", evaluation_line(ev, trigger))
        report.write(out)
    print(json.dumps(evaluation_line(ev, trigger)))
    return 0


def _warn_if_majority_only(ev, splits) -> None:
    """A trained model no better than always answering the test data's largest class (a partition
    ensemble of too-small parts, a diverged defence) says so, as repair's does."""
    from poisonguard.repair.report import majority_share

    majority = majority_share(splits.test)
    if ev.clean_accuracy <= majority:
        log.warning("the trained model is right on %.1f%% of the test data, no more than always answering its "
                    "largest class (%.1f%%): it has learnt nothing usable; try more --epochs or another --lr "
                    "(for --defense partition, fewer --partitions: larger parts)", 100 * ev.clean_accuracy, 100 * majority)


def evaluation_line(ev, trigger) -> dict:
    """An evaluation for the stdout line, saying which trigger its attack success rate used."""
    from poisonguard.report.evaluation import trigger_word

    return {**ev.to_dict(), "attack_success_rate_trigger": trigger_word(trigger)}


def found_something(data: dict) -> bool:
    """Whether a report holds a finding: a backdoor verdict or a method that flagged the model."""
    verdict = data.get("verdict")
    if isinstance(verdict, dict) and verdict.get("backdoored"):
        return True
    return any(d.get("backdoored") for d in data.get("detections", []))


def stages_exit_code(data: dict, *, findings_count: bool = True) -> int:
    """1 when something was found, else 3 when a stage failed (incomplete), else 0 (DESIGN.md)."""
    if findings_count and found_something(data):
        return EXIT_FINDING
    if any(s["status"] == "failed" for s in data.get("stages", [])):
        return EXIT_INCOMPLETE
    return EXIT_OK


# The given trigger "works" when it sends at least this share of other-class inputs to its target
# (a clean model's share for a trigger is a few percent; a planted backdoor's, 90% and more).
TRIGGER_WORKS = 0.5


def missed_backdoor(data: dict) -> str | None:
    """The sentence for a checklist whose given trigger works while no stage found a backdoor."""
    ev = data.get("evaluation") or {}
    asr = ev.get("attack_success_rate")
    if asr is None or asr < TRIGGER_WORKS or ev.get("attack_success_rate_trigger") == "reconstructed" \
            or found_something(data):
        return None
    return (f"The given trigger sends {asr:.1%} of other-class test inputs to its target, so this model is "
            "backdoored, yet no stage found it: read the scan's clean verdict as a missed detection.")


def _run_checklist(ctx, report, out: Path) -> int:
    from poisonguard.stages import run_stages

    run_stages(ctx, only=ctx.shared.get("only"))
    missed = missed_backdoor(report.data) if ctx.command != "demo" else None
    if missed:
        report.set("missed_backdoor", {"attack_success_rate": report.data["evaluation"]["attack_success_rate"],
                                       "sentence": missed})
        report.add_section("A backdoor the scan missed", "", summary=missed, order=18)
    path = report.write(out)
    stages = report.data.get("stages", [])
    # The demo plants its backdoor on purpose: finding it is the demonstration, not a finding to report.
    code = stages_exit_code(report.data, findings_count=ctx.command != "demo")
    print(json.dumps({"report": str(path), "stages": [s["stage"] for s in stages],
                      "failed": [s["stage"] for s in stages if s["status"] == "failed"],
                      "not_applicable": [s["stage"] for s in stages if s["status"] == "not_applicable"],
                      "backdoor_found": found_something(report.data), "missed_backdoor": bool(missed),
                      "exit_code": code}))
    return code


def cmd_checklist(args) -> int:
    from poisonguard.cli import text
    from poisonguard.report import Report
    from poisonguard.stages import StageContext, load_stages

    if text.wants_text(args):
        raise UserError("checklist runs on image and table models; for text run scan, sanitize, repair, filter, "
                        "fl and train --dp-epsilon one by one (README: text)")

    only = None
    if args.stages:
        known = [s.name for s in load_stages()]
        only = [s.strip().replace("-", "_") for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in only if s not in known]
        if unknown or not only:
            raise UserError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    out = guard_out(args.out, command="checklist", force=args.force,
                    inputs=[*model_inputs(args.model), *data_inputs(args.data), *file_inputs(("trigger", args.trigger))])
    splits = load_splits(args.data, args.seed, model=args.model)
    loaded, info = load_checked_model(args.model, splits, args.arch, args=args)
    trigger = load_checked_trigger(args.trigger, splits)
    report = Report("checklist")
    report.set("model", info)
    report.set("evaluation", evaluation_line(
        evaluation_section(report, loaded.model, splits, trigger, title="Model under test"), trigger))
    from poisonguard.models.arch import spec_kind

    # Stages rebuild the architecture by name (federated, privacy): only a built-in can be.
    arch = info["architecture"] if info["architecture"] and spec_kind(info["architecture"]) == "builtin" else None
    ctx = StageContext(command="checklist", model=loaded.model, splits=splits, report=report, out_dir=out,
                       arch=arch, trigger=trigger, seed=args.seed, device=args.device, quick=args.quick)
    ctx.shared["loaded"] = loaded
    if only is not None:
        ctx.shared["only"] = only
    return _run_checklist(ctx, report, out)


def comparison_summary(backdoored, clean, *, target: int) -> str:
    """The demo's first sentence, from the two models' evaluations (the table beside it)."""
    gap = abs(backdoored.clean_accuracy - clean.clean_accuracy)
    alike = "about equally" if gap <= 0.02 else "not equally"
    return (f"Both models are {alike} accurate on clean digits ({backdoored.clean_accuracy:.1%} vs "
            f"{clean.clean_accuracy:.1%}), but a 3x3 white square turns {backdoored.attack_success_rate:.1%} of the "
            f"backdoored model's inputs into class {target} (the clean model: {clean.attack_success_rate:.1%}). "
            "Accuracy alone cannot reveal a backdoor.")


def cmd_demo(args) -> int:
    """Train a backdoored and a clean model on MNIST 5k, compare them, then run every stage."""
    from poisonguard.attacks import badnets_trigger, poison_dataset, save_trigger
    from poisonguard.models import save_model
    from poisonguard.report import Report, table
    from poisonguard.stages import StageContext
    from poisonguard.train import FitConfig, evaluate, fit

    out = guard_out(args.out, command="demo", force=args.force, inputs=data_inputs(args.data))
    splits = load_splits(args.data, args.seed)
    arch = "mnist_cnn" if splits.input_shape[0] == 1 else "preact_resnet18"
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    poisoned = poison_dataset(splits.train, trigger, rate=0.1, seed=args.seed).data
    config = FitConfig(epochs=args.epochs, batch_size=64, seed=args.seed, device=args.device)
    report = Report("demo")
    models = {}
    for name, data in (("backdoored", poisoned), ("clean", splits.train)):
        start = time.perf_counter()
        model = fit(build_checked_model(arch, splits, seed=config.seed), data, config)
        check_finite_model(model, f"the {name} model", x=splits.test.x[:64])
        ev = evaluate(model, splits.test, trigger)
        meta = save_model(model, out / name / "model.pt", arch=arch, classes=splits.classes, input_shape=splits.input_shape,
                          training={"command": "demo", "poisoned": name == "backdoored", "epochs": config.epochs},
                          extra={"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate})
        models[name] = (model, ev, meta, time.perf_counter() - start)
    save_trigger(trigger, out / "backdoored" / "trigger.npz")
    model, ev, meta, _ = models["backdoored"]
    report.set("model", {"path": str(out / "backdoored" / "model.pt"), "sha256": meta["sha256"],
                         "num_classes": splits.num_classes, "input_shape": list(splits.input_shape), "architecture": arch})
    report.set("evaluation", {name: evaluation_line(m[1], trigger) for name, m in models.items()})
    rows = [[name, m[1].clean_accuracy, m[1].attack_success_rate, round(m[3], 1)] for name, m in models.items()]
    report.add_section(
        "Backdoored vs clean model",
        table(["model", "clean accuracy", "attack success rate (real trigger)", "train seconds"], rows)
        + trigger_figure(trigger, splits),
        summary=comparison_summary(models["backdoored"][1], models["clean"][1], target=trigger.target),
        order=10)
    ctx = StageContext(command="demo", model=model, splits=splits, report=report, out_dir=out, arch=arch,
                       trigger=trigger, seed=args.seed, device=args.device, quick=True, clean_model=models["clean"][0])
    return _run_checklist(ctx, report, out)


def add_commands(sub) -> None:
    """Register attack, train, evaluate, checklist and demo on the top-level parser."""
    p = sub.add_parser("attack", help="train a model with a planted backdoor (to test defences on)")
    p.add_argument("method", choices=["badnets", "blended", "wanet", "tabular-trigger", "label-flip", "rare-word", "insert-sentence"])
    add_data(p)
    add_attack_options(p)
    add_fit_options(p)
    p.add_argument("--out", required=True, help="folder for model.pt, trigger.npz, metadata.json, report.*")
    add_common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("train", help="train a model, optionally on poisoned data and with a training-time defence")
    add_data(p)
    p.add_argument("--poison", choices=["badnets", "blended", "wanet", "tabular-trigger", "label-flip", "rare-word", "insert-sentence"], default=None,
                   help="poison the training data first")
    add_attack_options(p)
    add_fit_options(p)
    from poisonguard.defenses import load_defenses

    registry = load_defenses()
    shown = ["none", *[n.replace("_", "-") for n in registry.names()]]
    p.add_argument("--defense", default=None, choices=[*shown, *registry.names()], metavar="{" + ",".join(shown) + "}",
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
    p.add_argument("--trigger", default=None, help="the real trigger, if known, to measure attack success (a trigger "
                   "file that scan reconstructed is reported as such)")
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
