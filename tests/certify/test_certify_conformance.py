"""Conformance tests generated over the certifier registry: every registered method leaves its
model untouched, gives the same certificate for the same seed, refuses bad numbers with a
ValueError and round-trips through JSON. A new method needs one entry in CASES."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from poisonguard.certify import smoothing  # noqa: F401  (registers)
from poisonguard.certify import poisoning  # noqa: F401  (registers)
from poisonguard.certify.ensemble import PartitionEnsemble
from poisonguard.certify.registry import CERTIFIERS
from poisonguard.data import ImageData


def _data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12) % 3
    x = torch.rand(12, 1, 6, 6, generator=g) * 0.1
    x[torch.arange(12), 0, 0, y] = 1.0  # the class is written in pixel (0, y)
    return ImageData(x, y, ("a", "b", "c"))


def _reader() -> nn.Module:
    """A linear classifier that reads the class pixel: confident, so smoothing certifies some images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        for k in range(3):
            model[1].weight[k, k] = 20.0
    return model.eval()


def _ensemble() -> nn.Module:
    base = _reader()
    state = {n: torch.stack([t + 0.01 * i for i in range(5)]) for n, t in base.state_dict().items()}
    return PartitionEnsemble(base, state, 3)


# name -> (model builder, constructor kwargs, bad constructor kwargs)
CASES = {
    "randomized_smoothing": (_reader, {"sigma": 0.25, "n0": 16, "n": 64, "alpha": 0.01, "device": "cpu"},
                             [{"sigma": 0.0}, {"alpha": 1.5}, {"n": 2}, {"n0": 0}, {"batch_size": 0}]),
    "partition_aggregation": (_ensemble, {}, [{"budgets": [-1]}, {"batch_size": 0}]),
}


def test_every_registered_certifier_has_a_case():
    assert set(CASES) == set(CERTIFIERS.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_untouched_seeded_json(name):
    build, kwargs, _ = CASES[name]
    model, data = build(), _data()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = CERTIFIERS.get(name)
    seeded = {"seed": 5} if "seed" in cls.__init__.__code__.co_varnames else {}
    first = cls(**kwargs, **seeded).certify(model, data)
    second = cls(**kwargs, **seeded).certify(model, data)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    a, b = first.to_dict(), second.to_dict()
    for entry in (a, b):
        entry.pop("seconds", None), entry.pop("seconds_per_example", None)
    assert a == b
    assert json.loads(json.dumps(first.to_dict())) == first.to_dict()


@pytest.mark.parametrize("name,bad", [(n, b) for n, case in sorted(CASES.items()) for b in case[2]])
def test_conformance_bad_hyperparameters_raise_valueerror(name, bad):
    _, kwargs, _ = CASES[name]
    with pytest.raises(ValueError) as info:
        CERTIFIERS.get(name)(**{**kwargs, **bad})
    assert type(info.value) is ValueError
