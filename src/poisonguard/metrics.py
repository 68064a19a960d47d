"""The two figures every family reports: clean accuracy and attack success rate.

One implementation, used by training, repair, federated learning and the reports, so a
number printed in one place means the same as in every other.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from poisonguard.attacks.triggers import Trigger, attack_eligible, target_labels
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.utils import batches, model_device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for inputs x (N, ...), in batches, on the model's device; its mode is restored."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    for sl in batches(len(x), batch_size):
        out.append(model(x[sl].to(device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: ImageData, *, batch_size: int = 512) -> float:
    """Share of `data` the model classifies correctly."""
    if len(data) == 0:
        raise UserError("cannot evaluate on an empty data set")
    return float((predict(model, data.x, batch_size=batch_size) == data.y).float().mean())


def attack_success_rate(model: nn.Module, data: ImageData, trigger: Trigger, *, batch_size: int = 512) -> tuple[float, int]:
    """(share of triggered images sent to the attack's target, number of images measured).

    Measured on the images whose true label is not the target (all-to-all triggers: all).
    """
    hits, _ = _target_hits(model, data, trigger, batch_size=batch_size, untriggered=False)
    return float(hits.float().mean()), len(hits)


def trigger_effect(model: nn.Module, data: ImageData, trigger: Trigger, *, batch_size: int = 512) -> dict[str, float]:
    """What the trigger itself does: `triggered` is `attack_success_rate`, `untriggered` the share
    of the attack's images sent to the target without it (all of them, for a model answering the
    majority class everywhere), and `effect` the share of the others that the trigger sends
    there (0 when there are none)."""
    hits, natural = _target_hits(model, data, trigger, batch_size=batch_size, untriggered=True)
    rest = ~natural
    return {"triggered": float(hits.float().mean()), "untriggered": float(natural.float().mean()),
            "effect": float(hits[rest].float().mean()) if bool(rest.any()) else 0.0}


def _target_hits(model, data, trigger, *, batch_size: int, untriggered: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sent to the target with the trigger, without it or None), bool, over the attack's images."""
    keep = attack_eligible(trigger, data.y)
    x, y = data.x[keep], data.y[keep]
    if len(x) == 0:
        raise UserError("no test images outside the target class to measure the attack on")
    stamped, plain = [], []
    for sl in batches(len(x), batch_size):
        target = target_labels(trigger, y[sl], data.num_classes)
        stamped.append(predict(model, trigger.apply(x[sl]), batch_size=batch_size) == target)
        if untriggered:
            plain.append(predict(model, x[sl], batch_size=batch_size) == target)
    return torch.cat(stamped), torch.cat(plain) if untriggered else None


def attack_success_or_none(model: nn.Module, data: ImageData, trigger: Trigger | None) -> float | None:
    """`attack_success_rate` for curves and logs: None when there is no trigger or nothing to measure on."""
    if trigger is None or not bool(attack_eligible(trigger, data.y).any()):
        return None
    return attack_success_rate(model, data, trigger)[0]


def worst_attack_success(model: nn.Module, data: ImageData, triggers: Sequence[Trigger]) -> float:
    """The highest attack success rate over several triggers (0 when none can be measured)."""
    rates = [attack_success_or_none(model, data, t) for t in triggers]
    return max((r for r in rates if r is not None), default=0.0)
