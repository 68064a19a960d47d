"""Every registered method, the calibration/combination math, and the default on planted poison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.data import ImageData
from poisonguard.sanitize import SANITIZERS, Sanitizer, ScoringInputs
from poisonguard.sanitize.calibrate import combine, robust_z
from poisonguard.sanitize.features import penultimate_features

from sanitize_helpers import planted


def _clusters(seed=0, n=60, d=16, k=4, poison=8):
    """Gaussian classes in feature space; class 0 also holds a tight far cluster (the 'poison')."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 6, (k, d))
    feats = np.concatenate([means[c] + rng.normal(0, 1, (n, d)) for c in range(k)])
    labels = np.repeat(np.arange(k), n)
    far = means[0] + 8 * np.eye(d)[0] + rng.normal(0, 0.3, (poison, d))
    feats = np.concatenate([feats, far]).astype(np.float32)
    labels = np.concatenate([labels, np.zeros(poison, int)])
    truth = np.zeros(len(labels), bool)
    truth[-poison:] = True
    return feats, labels, truth


@pytest.mark.parametrize("name", [n for n in SANITIZERS.names() if SANITIZERS.get(n).needs == ("features",)])
def test_feature_methods_rank_a_planted_cluster_first(name):
    feats, labels, truth = _clusters()
    data = ImageData(torch.zeros(len(labels), 1, 2, 2), torch.as_tensor(labels), tuple("abcd"))
    scores = SANITIZERS.get(name)().score(ScoringInputs(data=data, features=feats))
    assert scores.shape == (len(labels),) and np.isfinite(scores).all()
    in0 = labels == 0
    # The planted cluster outranks most of its class's own samples (AUC well above chance).
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth[in0], scores[in0]) > 0.8


class _Predicts(torch.nn.Module):
    """A stand-in model whose prediction for input row i (x[i, 0] = i) is given."""

    def __init__(self, predictions: np.ndarray, k: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.eye(k)[torch.as_tensor(predictions)] * 5)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


@pytest.mark.parametrize("outnumbered", [True, False])
def test_scan_keeps_a_class_whose_poison_outnumbers_its_own_rows(outnumbered):
    """5% of all rows relabelled into a rare class make the poison its larger subgroup. The model
    predicts the class for the poison (its trigger) and not for the class's own rows: SCAn must
    flag the poison, not the outnumbered real rows. A clean class of two modes the model
    recognises alike keeps the larger mode as its own."""
    feats, labels, truth = _clusters(n=60, poison=120 if outnumbered else 8)
    predictions = labels.copy()
    if outnumbered:  # the class's own rows are no longer predicted as their class
        predictions[(labels == 0) & ~truth] = 1
    x = torch.arange(len(labels), dtype=torch.float32)[:, None]
    data = ImageData(x, torch.as_tensor(labels), tuple("abcd"), kind="tabular")
    scan = SANITIZERS.get("scan")()
    scan.score(ScoringInputs(data=data, features=feats, model=_Predicts(predictions, 4)))
    assert scan.suspect[truth].mean() > 0.9 and scan.suspect[(labels == 0) & ~truth].mean() < 0.1
    # the model recognises both modes as the class: the larger is the class's own, as before
    scan.score(ScoringInputs(data=data, features=feats, model=_Predicts(labels, 4)))
    own = ~truth if outnumbered else truth
    assert scan.suspect[(labels == 0) & own].mean() > 0.9


@pytest.mark.parametrize("name", SANITIZERS.names())
def test_bad_hyperparameters_raise_value_error(name):
    cls = SANITIZERS.get(name)
    first = next(k for k in cls.__init__.__kwdefaults__)
    with pytest.raises(ValueError):
        cls(**{first: -1})


def test_robust_z_and_combine_by_hand():
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[-1] > 30  # median 3, MAD 1 -> (100 - 3) / 1.4826
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5)
    zs = {"a": np.r_[[0, 0, 0, 9, 9], np.zeros(10)], "b": np.zeros(15)}
    stats = {"a": {0: 20.0, 1: 1.0, 2: 1.2}, "b": {0: 1.0, 1: 1.1, 2: 0.9}}
    out = combine(zs, stats, labels, fpr=0.01)
    # Stouffer: 9 / sqrt(2) = 6.4 > the 1% cut 2.33; class 0's index towers over the others.
    assert out.targets == (0,) and list(out.flagged) == [3, 4]
    with pytest.raises(ValueError):
        combine(zs, stats, labels, fpr=0.7)


def test_heldout_excess_is_calibrated_and_finds_a_training_only_cluster():
    from poisonguard.sanitize.calibrate import heldout_excess

    rng = np.random.default_rng(0)
    # Exchangeable training and held-out scores: the one-sided z exceeds 2.33 about 1% of the time.
    null = [heldout_excess(rng.normal(size=400), rng.normal(size=100)) for _ in range(200)]
    assert np.mean(np.array(null) > 2.33) < 0.05
    # 8% of the training scores from a cluster that the held-out part lacks.
    train = np.r_[rng.normal(size=552), rng.normal(4, 0.3, size=48)]
    assert heldout_excess(train, rng.normal(size=300)) > 4


def test_gate_either_adds_the_heldout_test_to_the_index():
    labels = np.repeat(np.arange(4), 5)
    zs = {"a": np.r_[[0, 0, 0, 9, 9], np.zeros(15)]}
    stats = {"a": {0: 1.0, 1: 1.1, 2: 0.9, 3: 1.0}}  # no class stands out across classes
    heldout = {"a": {0: 6.0, 1: 0.2, 2: -0.5, 3: 1.0}}  # but class 0's training part exceeds its held-out part
    assert combine(zs, stats, labels, gate="index", heldout=heldout).targets == ()
    either = combine(zs, stats, labels, heldout=heldout)
    assert either.targets == (0,) and list(either.flagged) == [3, 4] and either.heldout_cut > 2.5
    assert combine(zs, stats, labels).gate == "index"  # no held-out part: the index alone
    with pytest.raises(ValueError):
        combine(zs, stats, labels, gate="vote")


def test_features_from_any_module_with_a_final_linear():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    feats = penultimate_features(model, torch.rand(10, 1, 2, 2), batch_size=3)
    assert feats.shape == (10, 7) and (feats >= 0).all()


@pytest.fixture(scope="module")
def model_methods_inputs(mnist, badnets_model, badnets_trigger_3x3):
    """The session's backdoored model with (a 1,000-row slice of) the data it was trained on."""
    from poisonguard.attacks import poison_dataset

    p = poison_dataset(mnist.train, badnets_trigger_3x3, rate=0.1, seed=0)  # as tests/conftest.py trains it
    truth = np.zeros(len(mnist.train), bool)
    truth[p.poisoned_index.numpy()] = True
    data = p.data.subset(np.arange(1000))
    return ScoringInputs(data=data, model=badnets_model, reference=mnist.test.subset(np.arange(300)),
                         train_model=lambda: Sanitizer()._build(data), seed=0, device="cpu"), truth[:1000]


def test_strip_scores_poison_above_clean_and_filters(model_methods_inputs):
    from poisonguard.sanitize import StripFilter

    inputs, truth = model_methods_inputs
    strip = SANITIZERS.get("strip")(draws=4)
    scores = strip.score(inputs)
    assert scores.shape == truth.shape and np.isfinite(scores).all()
    assert np.median(scores[truth]) > np.quantile(scores[~truth], 0.9)
    assert strip.threshold is not None  # set on the clean reference at the stated FRR
    filt = StripFilter(draws=4, frr=0.05).fit(inputs.model, inputs.reference)
    assert filt.reject(inputs.model, inputs.data.x[truth]).mean() > 0.8


def test_abl_scores_every_sample(model_methods_inputs):
    # ABL's isolation is weak on MNIST's small CNN (notes/issue-17.md): only its contract is tested.
    inputs, truth = model_methods_inputs
    scores = SANITIZERS.get("abl")(epochs=1).score(inputs)
    assert scores.shape == truth.shape and np.isfinite(scores).all()


@pytest.mark.parametrize("seed, rate, attack", [(21, 0.05, "badnets"), (22, 0.1, "blended")])
def test_default_flags_planted_poison(mnist, seed, rate, attack):
    data, truth, _ = planted(mnist, rate=rate, seed=seed, attack=attack)
    result = Sanitizer(epochs=4, seed=seed, device="cpu").run(data, reference=mnist.test)
    flagged = np.zeros(len(truth), bool)
    flagged[list(result.flagged)] = True
    tpr, fpr = (flagged & truth).sum() / truth.sum(), (flagged & ~truth).sum() / (~truth).sum()
    assert result.verdict == "poisoned" and result.targets == (0,)
    assert tpr >= 0.8 and fpr <= 0.03, (tpr, fpr)


def test_clean_data_is_called_clean(small_clean, mnist):
    result = Sanitizer(epochs=4, seed=3, device="cpu").run(small_clean, reference=mnist.test)
    assert result.verdict == "clean" and len(result.flagged) <= 0.02 * len(small_clean)
    assert max(result.class_index.values()) < result.class_threshold


def test_papers_fixed_rule_flags_clean_data_where_the_default_does_not(small_clean, mnist):
    # Spectral signatures' rule removes 1.5 x epsilon of every class whatever the data: on
    # clean data it still "finds" poison, which is why the calibrated rule is the default.
    result = Sanitizer(methods=["spectral"], rule="paper", expected_rate=0.05, epochs=4, seed=3,
                       device="cpu").run(small_clean, reference=mnist.test)
    assert result.verdict == "poisoned" and len(result.flagged) > 0.05 * len(small_clean)


def test_verdict_sentence_names_the_gate_that_fired():
    from poisonguard.results import Sanitization
    from poisonguard.sanitize.report import verdict_sentence

    result = Sanitization(verdict="poisoned", flagged=(1, 2), targets=(0,), methods=("scan",), scores={}, n_samples=10,
                          false_positive_rate=0.01, cut=2.33, class_index={"0": 1.0, "1": 0.5, "2": 0.2},
                          class_threshold=7.39, seconds=1.0,
                          extra={"heldout_index": {"0": 6.0, "1": 0.1, "2": 0.3}, "heldout_cut": 3.09})
    text = verdict_sentence(result)
    assert "held-out test z 6.00 > 3.09" in text and "anomaly index" not in text


def test_clean_sentence_rounds_the_index_as_its_threshold():
    """"index 7.4, below 7.39" contradicted itself: both are shown to two decimals, and an index
    equal to the bar is "not above" it (the gate flags above)."""
    from poisonguard.results import Sanitization
    from poisonguard.sanitize.report import verdict_sentence

    result = Sanitization(verdict="clean", flagged=(), targets=(), methods=("scan",), scores={}, n_samples=10,
                          false_positive_rate=0.01, cut=2.33, class_index={"0": 7.385, "1": 0.5},
                          class_threshold=7.39, seconds=1.0, extra={})
    text = verdict_sentence(result, classes=["yes", "no"])
    assert "7.38, class 0 ('yes'), not above 7.39" in text or "7.39, class 0 ('yes'), not above 7.39" in text


def test_trained_model_follows_the_data():
    """Colour images get the batch-norm cifar_cnn (mnist_cnn missed a CIFAR-10 blend); grayscale mnist_cnn."""
    from poisonguard.sanitize.run import training_architecture

    def images(shape):
        return ImageData(torch.zeros(4, *shape), torch.tensor([0, 1, 0, 1]), classes=("a", "b"))

    assert training_architecture(images((3, 32, 32))) == "cifar_cnn"
    assert training_architecture(images((3, 8, 8))) == "mnist_cnn"
    assert training_architecture(images((1, 28, 28))) == "mnist_cnn"
    assert Sanitizer(arch="mnist_cnn")._arch(images((3, 32, 32))) == "mnist_cnn"


def test_scan_on_representations_that_never_vary_says_why():
    """Texts with no known word all map to one representation; SCAn said only "Singular matrix"."""
    from poisonguard.errors import UserError

    data = ImageData(torch.zeros(40, 1, 2, 2), torch.arange(40) % 2, ("a", "b"))
    with pytest.raises(UserError, match="do not vary within any class"):
        SANITIZERS.get("scan")().score(ScoringInputs(data=data, features=np.ones((40, 8))))


def test_a_heldout_gate_that_could_not_run_is_said_not_silently_replaced():
    # --class-gate heldout on mnist5k (about 100 held-out samples a class, the test needs 200)
    # recorded gate "index" and said nothing.
    import numpy as np
    import torch

    from poisonguard.data.dataset import ImageData
    from poisonguard.results import Sanitization
    from poisonguard.sanitize.report import verdict_sentence
    from poisonguard.sanitize.run import _heldout_missing

    labels = np.repeat(np.arange(3), 50)
    few = ImageData(torch.zeros(300, 2), torch.arange(300) % 3, ("a", "b", "c"), kind="tabular")
    many = ImageData(torch.zeros(900, 2), torch.arange(900) % 3, ("a", "b", "c"), kind="tabular")
    missing = _heldout_missing("heldout", "index", few, labels)
    assert "at least 200 held-out samples" in missing and "at most 100" in missing
    assert _heldout_missing("heldout", "heldout", many, labels) is None  # it ran
    assert _heldout_missing("index", "index", None, labels) is None  # nobody asked for it
    assert "no test part" in _heldout_missing("either", "index", None, labels)
    result = Sanitization(verdict="clean", flagged=(), targets=(), methods=("scan",), scores={}, n_samples=150,
                          false_positive_rate=0.01, cut=2.33, class_index={"0": 1.0, "1": 0.5, "2": 0.2},
                          class_threshold=7.39, seconds=1.0,
                          extra={"gate": "index", "gate_requested": "heldout", "heldout_missing": missing})
    assert "The held-out test (--class-gate heldout) did not run: it needs at least 200" in verdict_sentence(result)


def test_a_poisoned_verdict_from_a_short_training_run_carries_a_caution():
    # `sanitize mnist5k --epochs 2` called clean data poisoned; the threshold was set at 10 epochs.
    from poisonguard.results import Sanitization
    from poisonguard.sanitize.report import verdict_sentence

    def result(epochs: int) -> Sanitization:
        return Sanitization(verdict="poisoned", flagged=(1, 2), targets=(1,), methods=("scan",), scores={},
                            n_samples=4000, false_positive_rate=0.01, cut=2.33, class_index={"0": 1.0, "1": 7.98},
                            class_threshold=7.39, seconds=1.0, extra={"trained_model": True, "epochs": epochs})

    assert "ran 2 epochs, under half the 10" in verdict_sentence(result(2))
    assert "Caution" not in verdict_sentence(result(10))
