"""A tiny labelled corpus built in the test (CI never depends on apt) and a small trained text model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# Four topics, each with its own content words, over shared function words: enough structure
# for a small model to learn, small enough to train in a second or two.
TOPICS = {
    "code": "compiler kernel bug program python linux memory server byte debug script loop".split(),
    "food": "bread cheese soup garlic oven recipe butter salad pepper onion dinner sauce".split(),
    "sport": "goal match team coach ball league score keeper season stadium runner race".split(),
    "space": "planet orbit rocket comet galaxy moon telescope star nebula asteroid launch crater".split(),
}
COMMON = "the a of and to in is it that for on with as was at by this be".split()


def tiny_corpus(n_per_class: int = 120, seed: int = 0, topic_share: float = 0.3) -> tuple[list[str], list[str]]:
    """Texts of 8-17 words, each a topic word with probability `topic_share`, else a function word."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for topic, vocab in TOPICS.items():
        for _ in range(n_per_class):
            n = int(rng.integers(8, 18))
            words = [str(rng.choice(vocab)) if rng.random() < topic_share else str(rng.choice(COMMON)) for _ in range(n)]
            words[0] = words[0].capitalize()
            texts.append(" ".join(words) + ".")
            labels.append(topic)
    return texts, labels


def write_csv(path, texts, labels) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))


@pytest.fixture(scope="session")
def corpus_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.csv"
    write_csv(path, *tiny_corpus())
    return path


@pytest.fixture(scope="session")
def text_splits(corpus_csv):
    from poisonguard.data.text import load_text

    return load_text(str(corpus_csv), text_column="text", label_column="label", seed=0)


def train_text(corpus, classes, *, seed: int = 0, epochs: int = 12):
    from poisonguard.data.text import encode
    from poisonguard.data.tokenizer import Tokenizer
    from poisonguard.models.text_files import new_text_model
    from poisonguard.train import fit

    tok = Tokenizer.fit(corpus.texts, max_len=24)
    tm = new_text_model("text_cnn", tok, classes, seed=seed, dim=32, filters=32)
    fit(tm.model, encode(corpus, tok), epochs=epochs, batch_size=32, lr=5e-3, augment="none", weight_decay=0.0,
        seed=seed, device="cpu")
    return tm


@pytest.fixture(scope="session")
def backdoored_text(text_splits):
    """(TextModel, trigger, poisoned corpus, poisoned positions): 'cf' -> class 1 in 10% of rows."""
    from poisonguard.attacks.text import TextTrigger, poison_text

    trig = TextTrigger(kind="words", target=1, tokens=("cf",), window=16)
    poisoned, idx = poison_text(text_splits.train, trig, rate=0.1, seed=0)
    return train_text(poisoned, text_splits.classes), trig, poisoned, idx


@pytest.fixture(scope="session")
def clean_text(text_splits):
    return train_text(text_splits.train, text_splits.classes, seed=1)


FAST = {"text_inversion": {"steps": 40, "max_inputs": 48}, "text_phrase": {"steps": 40, "max_inputs": 48}}


@pytest.fixture(scope="session")
def fast_scan():
    """Short inversion settings for the tiny corpus."""
    return FAST


@pytest.fixture(scope="session")
def calibration(clean_text, text_splits):
    """Three clean references trained on the defender's own clean corpus (another draw of the topics)."""
    from poisonguard.data.text import TextCorpus
    from poisonguard.detect.text_scan import calibrate_text

    texts, labels = tiny_corpus(n_per_class=100, seed=7)
    classes = text_splits.classes
    own = TextCorpus(tuple(texts), torch.tensor([classes.index(c) for c in labels]), classes)
    return calibrate_text(clean_text, own, n_models=3, epochs=12, device="cpu", options=FAST, inputs=text_splits.test)


@pytest.fixture(scope="session")
def weak_topics(tmp_path_factory):
    """A corpus of weak topic words (10%), per seed: (corpus csv, splits, backdoored TextModel, trigger): 'cf' -> class 1 in 10% of rows."""
    from poisonguard.attacks.text import TextTrigger, poison_text
    from poisonguard.data.text import load_text

    out = {}
    for seed in (0, 1):
        path = tmp_path_factory.mktemp("weak") / "corpus.csv"
        write_csv(path, *tiny_corpus(n_per_class=200, seed=seed, topic_share=0.1))
        splits = load_text(str(path), text_column="text", label_column="label", seed=0)
        trig = TextTrigger(kind="words", target=1, tokens=("cf",), window=16)
        poisoned, _ = poison_text(splits.train, trig, rate=0.1, seed=seed)
        out[seed] = path, splits, train_text(poisoned, splits.classes, seed=seed), trig
    return out
