"""Triggers and poisoned training data built from the attack options of `attack` and `train`."""

from __future__ import annotations

import argparse

import torch

from poisonguard.cli import options
from poisonguard.errors import UserError


def _parsed(parse, value, option: str):
    """An option given as text (a Namespace built in code) parsed as the command line would."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, (tuple, list)) else (float(value),)
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{option}: {exc}") from exc


def build_trigger(method: str, args, splits):
    """The trigger for a trigger attack, from the CLI options."""
    from poisonguard.attacks import badnets_trigger, blended_trigger, wanet_trigger

    shape = splits.input_shape
    if args.target >= splits.num_classes or args.target < -1:
        names = ", ".join(f"{i}={c}" for i, c in enumerate(splits.classes[:12]))
        raise UserError(f"--target {args.target} is not a class index of this {splits.num_classes}-class data "
                        f"(--target takes an index: {names}{' ...' if splits.num_classes > 12 else ''})")
    if args.target == -1 and method == "tabular_trigger":
        raise UserError("--target all (all-to-all) is for image triggers and label-flip; tabular-trigger needs one class")
    if splits.kind != "image" and method in ("badnets", "blended", "wanet"):
        raise UserError(f"the {method} attack stamps images; for a table use tabular-trigger or label-flip")
    if method == "badnets":
        color, position = _parsed(options.color, args.color, "--color"), args.position
        if isinstance(position, str) and "," in position:
            position = _parsed(options.position, position, "--position")
        return badnets_trigger(shape, target=args.target, size=args.patch_size, position=position,
                               color=color if len(color) > 1 else color[0])
    if method == "blended":
        image = None
        if args.blend_image:
            from poisonguard.data.images import decode_image, read_file

            name = f"--blend-image {args.blend_image}"
            arr = decode_image(read_file(args.blend_image, name), name, mode="L" if shape[0] == 1 else "RGB",
                               size=(shape[2], shape[1]))
            image = torch.from_numpy(arr.copy()).float() / 255
        return blended_trigger(shape, target=args.target, ratio=args.blend_ratio, image=image, seed=args.seed)
    if method == "tabular_trigger":
        from poisonguard.attacks.tabular import tabular_trigger

        features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
        rule = str(args.trigger_value).strip()
        if rule not in ("max", "min", "mode"):
            try:
                rule = [float(v) for v in rule.split(",")]
            except ValueError as exc:
                raise UserError(f"--trigger-value {args.trigger_value!r}: max, min, mode or numbers") from exc
        return tabular_trigger(splits.train, target=args.target, features=features, k=args.trigger_size, value=rule,
                               seed=args.seed)
    if method == "wanet":
        return wanet_trigger(shape, target=args.target, k=args.wanet_k, strength=args.wanet_strength, seed=args.seed)
    if method in ("rare_word", "insert_sentence"):  # text attacks reach here only with other data
        raise UserError(f"the {method.replace('_', '-')} attack inserts words into text; the data are {splits.kind} "
                        "(give a text corpus: --data corpus.csv --text-column T --label-column L)")
    raise UserError(f"unknown attack {method!r}")


def poison(method: str, args, splits):
    """(training data, trigger or None) for an attack named on the command line."""
    from poisonguard.attacks import flip_labels, poison_dataset

    method = method.replace("-", "_")
    check_rate(args.rate)
    if method == "label_flip":
        target = None if args.target == -1 else args.target
        return flip_labels(splits.train, rate=args.rate, target=target, source=args.source, seed=args.seed).data, None
    trigger = build_trigger(method, args, splits)
    return poison_dataset(splits.train, trigger, rate=args.rate, seed=args.seed).data, trigger



def check_rate(rate: float) -> None:
    """A poisoning rate of 0 writes a "backdoored" model and trigger with no poisoned sample."""
    if rate <= 0:
        raise UserError("--rate 0 poisons no sample: the model would be saved as backdoored without a backdoor; "
                        "give a share above 0 (e.g. 0.05)")
