"""Conformance tests generated over the private-trainer registry: every trainer leaves the model
it was given untouched, is seed-deterministic, refuses bad numbers with a ValueError and gives a
Privacy record that round-trips through JSON. A new trainer needs one entry in CASES."""

from __future__ import annotations

import json

import pytest
import torch

from poisonguard.privacy import TRAINERS
from privacy_helpers import tiny_net

COMMON = {"epochs": 1, "batch_size": 64, "device": "cpu"}
CASES = {
    "dp_sgd": ({"epsilon": 8.0, "delta": 1e-4, "accountant": "rdp"}, [{"epsilon": 0.0}, {"delta": 1.0}, {"accountant": "moments"}]),
    "gradient_shaping": ({"noise_multiplier": 0.5}, [{"noise_multiplier": -1.0}]),
}
SHARED_BAD = [{"max_grad_norm": 0.0}, {"epochs": 0}, {"lr": -1.0}, {"grad_sample_mode": "magic"}]


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.train.subset(torch.arange(128))


def test_every_registered_trainer_has_a_case():
    assert set(CASES) == set(TRAINERS.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_untouched_seeded_json(name, data):
    kwargs = {**CASES[name][0], **COMMON}
    model = tiny_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first, privacy = TRAINERS.get(name)(seed=4, **kwargs).fit(model, data)
    second, _ = TRAINERS.get(name)(seed=4, **kwargs).fit(model, data)
    other, _ = TRAINERS.get(name)(seed=5, **kwargs).fit(model, data)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert first is not model and not first.training
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), f"{name}: seed 4 twice gave different {k}"
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    entry = privacy.to_dict()
    assert json.loads(json.dumps(entry)) == entry


@pytest.mark.parametrize("name,bad", [(n, b) for n, case in sorted(CASES.items()) for b in case[1] + SHARED_BAD])
def test_conformance_bad_hyperparameters_raise_valueerror(name, bad):
    with pytest.raises(ValueError) as info:
        TRAINERS.get(name)(**{**CASES[name][0], **COMMON, **bad})
    assert type(info.value) is ValueError
