"""Each federated attack hurts FedAvg: crafted updates pull it away, poisoned data plants a backdoor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.data import Splits, per_class_subset
from poisonguard.federated import aggregators as A
from poisonguard.federated.attacks import alie_z, attack_names, make_attack
from poisonguard.federated.simulate import Simulator, flat_params, split_clients

SHAPE = (1, 28, 28)


def _updates(seed=0, n=8, m=2, d=64):
    g = torch.Generator().manual_seed(seed)
    direction = torch.ones(d)
    benign = direction + 0.1 * torch.randn(n, d, generator=g)
    own = direction + 0.1 * torch.randn(m, d, generator=g)
    return benign, own


@pytest.mark.parametrize("name", ["sign_flip", "gaussian", "ipm", "model_replacement"])
def test_crafted_updates_pull_fedavg_away(name):
    benign, own = _updates()
    attack = make_attack(name, input_shape=SHAPE, num_classes=10)
    crafted = attack.craft(own, benign, generator=torch.Generator().manual_seed(0), n_clients=10)
    honest = A.fedavg(torch.cat([benign, own]))
    attacked = A.fedavg(torch.cat([benign, crafted]))
    target = benign.mean(0)
    assert (attacked - target).norm() > 3 * (honest - target).norm()


def test_alie_stays_in_the_benign_range_and_shifts_fedavg_down():
    benign, own = _updates()
    attack = make_attack("alie", input_shape=SHAPE, num_classes=10, backdoor=False)
    crafted = attack.craft(own, benign, generator=torch.Generator(), n_clients=10)
    mu, sigma = benign.mean(0), benign.std(0)
    z = alie_z(10, 2)
    assert z == pytest.approx(0.2533, abs=1e-3)  # s = 6 - 2 = 4, Phi^-1(0.6)
    assert torch.allclose(crafted, (mu - z * sigma).expand_as(crafted))
    shift = A.fedavg(torch.cat([benign, crafted])) - mu
    # FedAvg is dragged by (m / n) z sigma against every coordinate's spread, from inside the
    # range a robust rule accepts (every crafted value lies within mu +- sigma).
    assert torch.allclose(shift, -0.2 * z * sigma, atol=1e-6)
    assert ((crafted - mu).abs() <= sigma).all()


def test_backdoor_and_label_flip_poison_client_data(mnist):
    data = mnist.train.subset(torch.arange(200))
    backdoor = make_attack("backdoor", input_shape=SHAPE, num_classes=10, poison_rate=0.5)
    poisoned = backdoor.client_data(data, seed=0)
    changed = (poisoned.x != data.x).flatten(1).any(1)
    assert changed.sum() == 100 and (poisoned.y[changed] == 0).all()
    flipped = make_attack("label_flip", input_shape=SHAPE, num_classes=10).client_data(data)
    assert torch.equal(flipped.y, 9 - data.y)


def test_registry_has_every_attack():
    assert set(attack_names()) >= {"none", "backdoor", "model_replacement", "sign_flip", "gaussian", "alie", "ipm",
                                   "label_flip"}


def test_model_replacement_and_label_flip_hurt_fedavg_end_to_end(mnist, clean_model):
    small = Splits("mnist", per_class_subset(mnist.train, fraction=0.25, seed=0), mnist.test)
    initial = flat_params(clean_model)
    sim = Simulator(clients=5, malicious=1, rounds=1, seed=0, device="cpu")

    def run(attack, aggregator="fedavg", sim=sim):
        a = make_attack(attack, input_shape=SHAPE, num_classes=10)
        return sim.run(small, A.Aggregator(aggregator, f=sim.malicious), a, initial=initial).rounds[-1]

    clean = run("none")
    replaced = run("model_replacement")
    # One boosted client of five, one round: the backdoor gets in and clean accuracy collapses.
    assert replaced.attack_success_rate > 0.3 and replaced.clean_accuracy < clean.clean_accuracy - 0.2
    defended = run("model_replacement", "flame")
    assert defended.attack_success_rate < 0.1 and defended.clean_accuracy > clean.clean_accuracy - 0.03
    flip = run("label_flip", sim=Simulator(clients=5, malicious=2, rounds=1, seed=0, device="cpu"))
    assert flip.clean_accuracy < clean.clean_accuracy - 0.1


def test_split_clients_iid_and_dirichlet():
    labels = np.repeat(np.arange(10), 100)
    iid = split_clients(labels, 10, seed=0)
    assert sorted(len(p) for p in iid) == [100] * 10 and len(np.unique(np.concatenate(iid))) == 1000
    skewed = split_clients(labels, 10, dirichlet=0.1, seed=0)
    assert len(np.unique(np.concatenate(skewed))) == 1000 and min(len(p) for p in skewed) >= 10
    # Non-IID: a typical client is dominated by few classes.
    top_share = np.median([np.bincount(labels[p], minlength=10).max() / len(p) for p in skewed])
    assert top_share > 0.5


def test_vmap_and_loop_train_the_same(mnist):
    tiny = Splits("mnist", per_class_subset(mnist.train, per_class=6, seed=0), mnist.test.subset(torch.arange(100)))
    kw = dict(clients=3, rounds=1, batch_size=10, seed=0, device="cpu")
    a = Simulator(vectorize=True, **kw).run(tiny, "fedavg")
    b = Simulator(vectorize=False, **kw).run(tiny, "fedavg")
    assert a.extra["vectorized"] and not b.extra["vectorized"]
    assert a.rounds[0].clean_accuracy == pytest.approx(b.rounds[0].clean_accuracy, abs=0.011)
