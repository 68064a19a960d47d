"""Run-time input filters on text: STRIP (superimposed texts) and ONION reject triggered inputs.

The corpus here has weak topic words (10%): STRIP separates a trigger from a text's own class
only when the trigger is the stronger feature, as on Fortunes; with strong topic words (the
shared tiny corpus) the model's clean predictions resist the overlay as firmly as a trigger
does (a limitation of STRIP, written in its docstring)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from poisonguard.cli import main
from poisonguard.sanitize.onion import BigramLM, OnionFilter
from poisonguard.sanitize.strip_text import TextStripFilter


def _held_out(splits, trig, tok):
    """(threshold texts, clean probes, triggered probes): the test part halved; none was trained on."""
    test = splits.test
    half = len(test.texts) // 2
    probes = list(range(half, len(test.texts)))
    keep = [i for i in probes if int(test.y[i]) != trig.target]
    triggered = tok.encode(trig.apply_texts([test.texts[i] for i in keep], seed=1))
    return tok.encode(test.texts[:half]), tok.encode([test.texts[i] for i in probes]), triggered


@pytest.mark.parametrize("seed", [0, 1])
def test_strip_rejects_triggered_texts_at_its_false_rejection_rate(weak_topics, seed):
    _, splits, tm, trig = weak_topics[seed]
    tok = tm.tokenizer
    threshold_texts, clean, triggered = _held_out(splits, trig, tok)
    strip = TextStripFilter(frr=0.05).fit(tm.model, threshold_texts, tok.encode(splits.train.texts))
    caught = (strip.entropy(tm.model, triggered) < strip.threshold).mean()
    passed = (strip.entropy(tm.model, clean) < strip.threshold).mean()
    assert caught > 0.5 and passed < 0.15, (caught, passed)  # seeds 0-2 measured 0.78-0.90 / 0.04-0.07


def test_onion_language_model_finds_the_inserted_word(weak_topics):
    _, splits, tm, trig = weak_topics[0]
    tok = tm.tokenizer
    lm = BigramLM(tok.encode(splits.train.texts), len(tok))
    row = tok.encode(trig.apply_texts([splits.test.texts[0]], seed=0))[0]
    words = [tok.vocab[int(i)] for i in row if int(i) != 0]
    assert words[int(np.argmax(lm.word_scores(row)))] == "cf"  # the outlier word is the trigger
    threshold_texts, clean, triggered = _held_out(splits, trig, tok)
    onion = OnionFilter(frr=0.05).fit(tok.encode(splits.train.texts), threshold_texts, len(tok))
    assert (onion.scores(triggered) > onion.threshold).mean() > (onion.scores(clean) > onion.threshold).mean() + 0.3


def test_filter_command_on_text(weak_topics, tmp_path, capsys):
    from poisonguard.models.text_files import save_text_model

    corpus_csv, splits, tm, trig = weak_topics[0]
    save_text_model(tm, tmp_path / "model")
    texts = list(splits.test.texts)
    labels = [splits.classes[int(y)] for y in splits.test.y]
    hit = [i for i, y in enumerate(splits.test.y.tolist()) if y != trig.target][:40]
    for i, t in zip(hit, trig.apply_texts([texts[i] for i in hit], seed=2)):
        texts[i] = t
    with open(tmp_path / "incoming.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *zip(texts, labels)])
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    code = main(["filter", str(tmp_path / "model"), *data, "--inputs", str(tmp_path / "incoming.csv"), "--frr", "0.05",
                 "--out", str(tmp_path / "f"), "--quiet"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    block = json.loads((tmp_path / "f" / "report.json").read_text())["input_filter"]
    assert code == 1 and line["verdict"] == "trojaned" and block["method"] == "strip" == line["method"]
    assert line["rejected_count"] == len(block["rejected"])  # stdout counts what report.json lists
    assert len(set(block["rejected"]) & set(hit)) > 0.5 * len(hit)
    with open(tmp_path / "f" / "accepted.csv") as f:
        assert len(list(csv.reader(f))) - 1 == len(texts) - len(block["rejected"])
    assert main(["filter", str(tmp_path / "model"), *data, "--inputs", str(tmp_path / "incoming.csv"),
                 "--method", "abl", "--out", str(tmp_path / "g"), "--quiet"]) == 2
    # ONION, the other text filter, reports under its own name (it raised KeyError: 'onion')
    assert main(["filter", str(tmp_path / "model"), *data, "--inputs", str(tmp_path / "incoming.csv"), "--frr", "0.05",
                 "--method", "onion", "--out", str(tmp_path / "o"), "--quiet"]) in (0, 1)
    assert "ONION input filter" in (tmp_path / "o" / "report.html").read_text()
    # texts arriving at run time have no label yet: the same texts without the label column, the same answer
    with open(tmp_path / "unlabelled.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    assert main(["filter", str(tmp_path / "model"), *data, "--inputs", str(tmp_path / "unlabelled.csv"),
                 "--frr", "0.05", "--out", str(tmp_path / "h"), "--quiet"]) == 1
    assert json.loads((tmp_path / "h" / "report.json").read_text())["input_filter"]["rejected"] == block["rejected"]
    with open(tmp_path / "h" / "accepted.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text"] and len(rows) - 1 == len(texts) - len(block["rejected"])
