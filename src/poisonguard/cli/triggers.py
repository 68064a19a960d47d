"""Triggers and poisoned training data built from the attack options of `attack` and `train`."""

from __future__ import annotations

import torch

from poisonguard.errors import UserError

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

