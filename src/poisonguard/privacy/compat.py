"""Make a model trainable with per-sample gradients: Opacus's `ModuleValidator.fix`, reported.

BatchNorm mixes samples inside a batch, so one sample's gradient depends on the others and
per-sample clipping bounds nothing; Opacus swaps it for GroupNorm (and LSTM/GRU/attention
for DP versions). Layers that keep state in buffers and have no fix cannot be made private.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from poisonguard.errors import UserError

log = logging.getLogger(__name__)


def _trainable_modules(model: nn.Module):
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            yield name, module


def make_dp_compatible(model: nn.Module) -> tuple[nn.Module, list[dict[str, str]]]:
    """A fixed copy of `model` in train mode and the list of replaced layers.

    Returns:
        (model copy, fixes) where each fix is {"layer": name, "from": old type, "to": new type}.

    Raises:
        UserError: naming the first layer Opacus can neither handle nor replace.
    """
    from opacus.validators import ModuleValidator

    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or not isinstance(model, nn.Module):
        raise UserError("DP training needs a plain PyTorch module (an architecture name), "
                        f"not a compiled {type(model).__name__}")
    original = copy.deepcopy(model).train()
    before = {name: type(m).__name__ for name, m in original.named_modules()}
    fixed = ModuleValidator.fix(original).train()
    fixes = [{"layer": name, "from": before[name], "to": type(m).__name__}
             for name, m in fixed.named_modules() if name in before and type(m).__name__ != before[name]]
    for fix in fixes:
        log.info("DP: replaced layer %s (%s) with %s", fix["layer"] or "<root>", fix["from"], fix["to"])
    for name, module in _trainable_modules(fixed):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        problems = [str(e) for e in validator(module)] if validator else []
        if list(module.buffers(recurse=False)):
            problems.append("it keeps state in buffers, which per-sample gradients cannot account for")
        if problems:
            raise UserError(f"Opacus cannot make layer {name or '<root>'!r} ({type(module).__name__}) "
                            f"differentially private and has no replacement for it: {problems[0]}")
    return fixed, fixes
