"""Each federated attack hurts FedAvg: crafted updates pull it away, poisoned data plants a backdoor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.data import Splits, per_class_subset
from poisonguard.errors import UserError
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
    # untargeted ALIE stamps nothing, so token ids (text) are fine; its backdoor form is refused there
    from poisonguard.data import ImageData
    from poisonguard.errors import UserError

    texts = ImageData(torch.ones(8, 24, dtype=torch.long), torch.zeros(8, dtype=torch.long), ("a", "b"), kind="text")
    assert make_attack("alie", input_shape=(24,), num_classes=2, data=texts, backdoor=False).trigger is None
    with pytest.raises(UserError, match="backdoor=false"):
        make_attack("alie", input_shape=(24,), num_classes=2, data=texts)


def test_alie_backdoor_training_pulls_hardest_where_benign_clients_agree():
    benign, own = _updates()
    benign[:, 0] = 1.0 + 0.001 * torch.randn(benign.shape[0])  # a coordinate every benign client agrees on
    alpha, lr = 0.2, 0.05
    attack = make_attack("alie", input_shape=SHAPE, num_classes=10, alpha=alpha)
    start, prox = attack.local_training(benign, own, n_clients=10, lr=lr)
    mu, sigma = benign.mean(0), benign.std(0)
    assert torch.equal(start, mu)  # training starts at the benign mean (the paper's initialisation)
    away = mu + 1.0
    pulled = prox(away[None])[0]
    # Prox of (1 - alpha)/alpha * mean_j ((u_j - mu_j)/sigma_j)^2 at rate lr, by hand:
    rate = lr * 2 * (1 - alpha) / (alpha * mu.numel()) / sigma.square()
    assert torch.allclose(pulled, away - rate / (1 + rate) * 1.0, atol=1e-5)
    # The agreed coordinate snaps back to the mean; the spread ones keep a good part of the move.
    assert (pulled[0] - mu[0]).abs() < 0.01 and ((pulled[1:] - mu[1:]) > 0.2).all()
    crafted = attack.craft(pulled[None].expand_as(own), benign, generator=torch.Generator(), n_clients=10)
    assert ((crafted - mu).abs() <= alie_z(10, 2) * sigma + 1e-6).all()


def test_alie_projected_training_stays_in_the_box_and_plain_attacks_do_not_retrain():
    benign, own = _updates()
    attack = make_attack("alie", input_shape=SHAPE, num_classes=10, project=True, z=0.5)
    start, prox = attack.local_training(benign, own, n_clients=10, lr=0.1)
    mu, sigma = benign.mean(0), benign.std(0)
    boxed = prox(torch.stack([mu + 3 * sigma, mu - 3 * sigma, mu]))
    assert torch.allclose(boxed, torch.stack([mu + 0.5 * sigma, mu - 0.5 * sigma, mu]))
    assert make_attack("alie", input_shape=SHAPE, num_classes=10, backdoor=False).local_training(
        benign, own, n_clients=10, lr=0.1) is None
    assert make_attack("backdoor", input_shape=SHAPE, num_classes=10).local_training(
        benign, own, n_clients=10, lr=0.1) is None
    with pytest.raises(UserError):
        make_attack("alie", input_shape=SHAPE, num_classes=10, alpha=0)


def test_local_training_applies_the_prox_after_every_step(mnist):
    from poisonguard.federated.simulate import LocalTrainer
    from poisonguard.models import build_model

    model = build_model("mnist_cnn", num_classes=10, input_shape=SHAPE, seed=0)
    trainer = LocalTrainer(model, lr=0.1, vectorize=False)
    start = flat_params(model)
    xs, ys = mnist.train.x[:64].view(1, 2, 32, *SHAPE), mnist.train.y[:64].view(1, 2, 32)
    free = trainer.train(start, xs, ys)[0]
    boxed = trainer.train(start, xs, ys, prox=lambda w: start + (w - start).clamp(-1e-4, 1e-4))[0]
    assert (free - start).abs().max() > 1e-3
    assert (boxed - start).abs().max() <= 1e-4 + 1e-7


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
