"""Deep Partition Aggregation: hash partition, vote certificate, batched training, safe files."""

import json

import pytest
import torch

from poisonguard.certify.ensemble import (PartitionTraining, load_ensemble, save_ensemble,
                                          train_partition_models)
from poisonguard.certify.partition import dpa_certificate, hash_partition
from poisonguard.certify.poisoning import PartitionAggregation
from poisonguard.errors import UserError


def test_certificate_matches_hand_computed_examples():
    votes = torch.tensor([[5, 5, 0], [3, 7, 0], [7, 3, 0], [0, 4, 6], [2, 2, 2], [10, 0, 0], [0, 6, 5]])
    pred, cert = dpa_certificate(votes)
    assert pred.tolist() == [0, 1, 0, 2, 0, 0, 1]
    # [3,7]: one flip leaves 4 vs 6; two flips tie at 5-5 and the tie goes to class 0.
    # [0,6,5]: class 2 loses ties to class 1, so one flip (5 vs 6) keeps class 1.
    assert cert.tolist() == [0, 1, 2, 0, 0, 5, 0]


def test_certificate_is_tight_against_brute_force():
    """Moving `cert` votes adversarially never changes the winner; cert + 1 moves can."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        votes = torch.multinomial(torch.ones(4), 9, replacement=True, generator=gen).bincount(minlength=4)[None]
        pred, cert = dpa_certificate(votes)
        c, r = int(pred[0]), int(cert[0])

        def worst(moves):  # best attack: move votes from the winner to its strongest rival
            changed = False
            for rival in range(4):
                if rival == c:
                    continue
                v = votes[0].clone()
                v[c] -= moves
                v[rival] += moves
                changed |= bool(v.min() >= 0 and int(v.argmax()) != c)
            return changed

        assert not worst(r)
        assert worst(r + 1) or int(votes[0, c]) < r + 1


def test_hash_partition_deterministic_order_and_label_free(mnist):
    x = mnist.train.x[:300]
    parts = hash_partition(x, 7)
    assert parts.min() >= 0 and parts.max() < 7
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hash_partition(x[perm], 7), parts[perm])
    # Inserting a sample leaves everyone else where they were.
    assert torch.equal(hash_partition(torch.cat([x, x[:1].flip(-1)]), 7)[:300], parts)
    assert len(parts.unique()) == 7


def test_batched_training_equals_one_after_another(mnist):
    data = mnist.train.subset(torch.arange(120))
    recipe = PartitionTraining(epochs=1, batch_size=8, seed=3, device="cpu")
    a, info = train_partition_models("mnist_cnn", data, 3, recipe, batched=True)
    b, _ = train_partition_models("mnist_cnn", data, 3, recipe, batched=False)
    assert sum(info["partition_sizes"]) == 120
    for name, t in a.stacked_state().items():
        assert torch.allclose(t, b.stacked_state()[name], atol=1e-5), name


@pytest.mark.parametrize("batched", [False, True])
def test_a_sample_added_to_one_partition_changes_only_its_model(mnist, batched):
    """DPA's certificate (Levine & Feizi 2021, Theorem 1) holds when each base model is a function
    of its own partition alone. One generator drew every partition's batches and the step count
    followed the largest partition, so one added sample changed all K models and flipped
    predictions certified against one poisoned sample."""
    from poisonguard.certify.partition import hash_partition
    from poisonguard.data import ImageData

    data = mnist.train.subset(torch.arange(90))
    grown = ImageData(torch.cat([data.x, mnist.train.x[500:501]]), torch.cat([data.y, mnist.train.y[500:501]]),
                      data.classes)
    recipe = PartitionTraining(epochs=1, batch_size=8, seed=1, device="cpu")
    a, _ = train_partition_models("mnist_cnn", data, 3, recipe, batched=batched)
    b, _ = train_partition_models("mnist_cnn", grown, 3, recipe, batched=batched)
    added = int(hash_partition(grown.x, 3)[-1])
    before, after = a.stacked_state(), b.stacked_state()
    unchanged = [all(torch.equal(before[n][i], after[n][i]) for n in before) for i in range(3)]
    assert unchanged == [i != added for i in range(3)]


def test_batch_norm_statistics_of_a_finished_model_stay_put():
    """The vmapped path runs every model's forward pass each step; a model whose (smaller)
    partition is done sees padding, which must not move its batch-norm statistics: it ends as
    the loop leaves it."""
    from poisonguard.data import ImageData

    gen = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(50, 3, 16, 16, generator=gen), torch.arange(50) % 2, ("a", "b"))
    recipe = PartitionTraining(epochs=1, batch_size=4, seed=0, device="cpu")
    a, info = train_partition_models("cifar_cnn", data, 3, recipe, batched=True)
    b, _ = train_partition_models("cifar_cnn", data, 3, recipe, batched=False)
    assert len(set(info["partition_sizes"])) > 1  # some models finish before others
    for name, t in a.stacked_state().items():
        if name.endswith("num_batches_tracked"):  # padding steps counted for a finished model
            assert torch.equal(t, b.stacked_state()[name]), name
        # 1e-3: Adam turns float noise in the near-zero gradient of a bias before batch norm into
        # steps of up to lr (measured differences up to 1e-4)
        assert torch.allclose(t.float(), b.stacked_state()[name].float(), atol=1e-3), name


def test_ensemble_votes_certify_and_round_trip(mnist, tmp_path):
    data = mnist.train.subset(torch.arange(400))
    ensemble, _ = train_partition_models("mnist_cnn", data, 5, PartitionTraining(epochs=3, batch_size=16, lr=3e-3, device="cpu"))
    votes = ensemble(mnist.test.x[:50])
    assert votes.shape == (50, 10) and torch.all(votes.sum(1) == 5)
    cert = PartitionAggregation(budgets=(0, 1, 2, 3)).certify(ensemble, mnist.test.subset(torch.arange(100)))
    assert cert.certified_accuracy["0"] == pytest.approx(cert.clean_accuracy)
    assert cert.certified_accuracy["3"] == 0.0  # 5 voters can never survive 3 poisoned samples
    assert cert.clean_accuracy > 0.3  # 5 models on 80 images each, 3 epochs: far above chance (0.1)
    path = tmp_path / "model.safetensors"
    save_ensemble(ensemble, path, arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    loaded, meta = load_ensemble(path)
    assert meta["partitions"] == 5 and torch.equal(loaded(mnist.test.x[:50]), votes)
    # A changed file is refused; so is a file whose tensors do not fit the architecture.
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(UserError, match="sha256"):
        load_ensemble(path)


def test_pickle_payload_in_place_of_an_ensemble_is_refused(tmp_path):
    import pickle

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"x": 1}))
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "partition_ensemble", "partitions": 2,
                                                        "num_classes": 10, "input_shape": [1, 28, 28],
                                                        "base_architecture": "mnist_cnn"}))
    with pytest.raises(UserError, match="cannot read safetensors"):
        load_ensemble(path)


def test_more_partitions_than_samples(mnist):
    with pytest.raises(UserError, match="more than the 10 training samples"):
        train_partition_models("mnist_cnn", mnist.train.subset(torch.arange(10)), 11)
