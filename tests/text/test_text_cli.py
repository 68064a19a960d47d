"""The text walk-through on the command line: attack, evaluate, scan, sanitize, repair; bad input exits 2."""

from __future__ import annotations

import json

import pytest
import torch

from poisonguard.cli import main


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_text_walk_through(corpus_csv, tmp_path, capsys):
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    atk = tmp_path / "atk"
    assert main(["attack", "rare-word", *data, "--target", "1", "--rate", "0.1", "--epochs", "12", "--lr", "0.005",
                 "--out", str(atk), "--quiet"]) == 0
    line = _last_json(capsys)
    assert line["attack_success_rate"] > 0.9 and line["clean_accuracy"] > 0.8
    assert {p.name for p in atk.iterdir()} >= {"model.safetensors", "model.json", "tokenizer.json", "trigger.json", "report.json"}
    assert main(["evaluate", str(atk), *data, "--trigger", str(atk / "trigger.json"), "--quiet"]) == 0
    assert _last_json(capsys)["attack_success_rate"] == line["attack_success_rate"]
    code = main(["scan", str(atk), *data, "--reference-models", "2", "--steps", "40", "--out", str(tmp_path / "scan"), "--quiet"])
    scan = _last_json(capsys)
    assert code == 1 and scan["targets"][0] == 1 and (tmp_path / "scan" / "trigger_1.json").is_file()
    # stdout carries the verdict object as the image scan's does (`jq .verdict.backdoored` failed on text)
    assert scan["verdict"]["backdoored"] and scan["verdict"]["targets"] == scan["targets"]
    assert scan["report"] == str(tmp_path / "scan" / "report.html")
    poisoned_csv = tmp_path / "poisoned.csv"
    assert main(["sanitize", str(corpus_csv), "--text-column", "text", "--label-column", "label",
                 "--out", str(tmp_path / "san"), "--quiet"]) == 0  # the clean corpus is called clean
    printed = _last_json(capsys)
    assert printed["verdict"] == "clean" and printed["flagged_count"] == 0 and "flagged" not in printed
    sanitized = json.loads((tmp_path / "san" / "report.json").read_text())["sanitization"]
    assert sanitized["methods"] == ["text_keywords"]  # text's own default: the CLI ran SCAn when none was typed
    assert f"none of its {sanitized['n_samples']} rows was flagged" in (tmp_path / "san" / "report.html").read_text()
    # a clean verdict shows what it rests on: the word groups tested, and a score per row (scores.npz, as --help says)
    assert "candidates" in sanitized and all(not c["flagged"] for c in sanitized["candidates"])
    import numpy as np

    with np.load(tmp_path / "san" / "scores.npz") as scores:
        assert len(scores["flip_share"]) == sanitized["n_samples"] and not scores["flagged"].any()
    assert main(["repair", str(atk), *data, "--trigger", str(atk / "trigger.json"), "--from-scan", str(tmp_path / "scan"),
                 "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    rep = _last_json(capsys)
    assert rep["after"]["attack_success_rate"] < 0.2 and rep["after"]["clean_accuracy"] > 0.8
    assert not poisoned_csv.exists()
    # every report.html says what its report.json holds (they were a title and a model line)
    attack_html = (atk / "report.html").read_text()
    assert f"{line['attack_success_rate']:.1%} of other-class test texts go to the target" in attack_html
    assert "inserts" in attack_html
    # the target by index and name, the words quoted as words (was "target class 1" and a Python repr)
    assert "target class 1 (" in attack_html and "[&#39;" not in attack_html and "&#39;cf" not in attack_html
    assert scan["sentence"] in (tmp_path / "scan" / "report.html").read_text().replace("&#39;", "'")
    assert f"attack success (real trigger) {rep['before']['attack_success_rate']:.1%} -&gt; {rep['after']['attack_success_rate']:.1%}" \
        in (tmp_path / "rep" / "report.html").read_text()


def test_each_built_in_text_architecture_trains_with_its_own_recipe(corpus_csv, tmp_path, capsys):
    # text_bag at text_cnn's step size (2e-3) reaches 0.76-0.85 here in the default 10 epochs; at its
    # own (5e-2, weight decay 1e-4) 0.95-0.96 (three seeds, measured in session 11).
    from poisonguard.models.text import text_recipe

    assert text_recipe("text_bag") != text_recipe("text_cnn") == text_recipe("a_users_own_arch")
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    assert main(["train", *data, "--arch", "text_bag", "--out", str(tmp_path / "bag"), "--quiet"]) == 0
    assert _last_json(capsys)["clean_accuracy"] > 0.9


@pytest.mark.parametrize("content, args, message", [
    ("text,label\nhello,a\n,b\n", [], "empty text"),
    ("text,label\nhello,a\nworld,a\n", [], "1 class"),
    ("text,label\nhello,a\nworld,b\n", ["--label-column", "topic"], "no column 'topic'"),
    ("text,label\nhello,a\nworld,b\n", ["--defense", "gaussian-augment", "--sigma", "0.5"],
     "not gaussian_augment"),  # once: it read "not gaussian-augment, gaussian_augment"
    ("text,label\nhello,a\nworld,b\n", ["--arch", "mine.py:gru"], "trains its built-in text architectures only"),
])
def test_bad_text_input_is_one_line_exit_2(tmp_path, capsys, content, args, message):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    argv = ["train", "--data", str(p), "--text-column", "text", "--label-column", "label", *args,
            "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_text_attack_on_image_method_and_wrong_model_exit_2(corpus_csv, tmp_path, capsys):
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label"]
    (tmp_path / "none").mkdir()
    for command in ("checklist", "certify"):  # image and table commands say so, before reading anything
        assert main([command, str(tmp_path / "none"), *data, "--out", str(tmp_path / command), "--quiet"]) == 2
        assert "text" in capsys.readouterr().err
    assert main(["attack", "badnets", *data, "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "rare-word" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a model")
    assert main(["evaluate", str(tmp_path / "m"), *data, "--quiet"]) in (1, 2)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    from poisonguard.data.tokenizer import Tokenizer

    (tmp_path / "own").mkdir()  # a user's weights and tokenizer, no model.json and no --arch
    torch.save({"w": torch.zeros(2)}, tmp_path / "own" / "pytorch_model.bin")
    Tokenizer(("<pad>", "<unk>", "a"), max_len=4).save(tmp_path / "own" / "tokenizer.json")
    assert main(["evaluate", str(tmp_path / "own"), *data, "--quiet"]) == 2
    assert "no model.json names the architecture; pass --arch" in capsys.readouterr().err


USER_MODEL = '''
import torch
from torch import nn


class GRUClassifier(nn.Module):
    """A user's text model: its embedding is called 'embed'; a bidirectional GRU, max-pooled."""

    def __init__(self, vocab, classes):
        super().__init__()
        self.embed = nn.Embedding(int(vocab), 16, padding_idx=0)
        self.rnn = nn.GRU(16, 12, batch_first=True, bidirectional=True)
        self.out = nn.Linear(24, int(classes))

    def forward(self, ids):
        h, _ = self.rnn(self.embed(ids))
        return self.out(h.masked_fill((ids == 0).unsqueeze(-1), -1e4).max(1).values)


def build(vocab, classes):
    return GRUClassifier(vocab, classes)
'''


def test_a_users_own_text_model_is_scanned_against_its_own_architecture(backdoored_text, text_splits, corpus_csv,
                                                                           tmp_path, capsys):
    """A recurrent model poisonguard did not write, trained by the user's own loop, as a folder of
    weights, tokenizer and metadata: evaluate sees the backdoor, the calibrated scan finds it with
    references rebuilt from the user's code (not a built-in stand-in), and repair removes it."""
    import importlib.util

    from safetensors.torch import save_file

    _, trigger, poisoned, _ = backdoored_text
    (tmp_path / "usertext.py").write_text(USER_MODEL)
    spec = importlib.util.spec_from_file_location("usertext", tmp_path / "usertext.py")
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    from poisonguard.attacks.text import save_text_trigger
    from poisonguard.data.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.fit(poisoned.texts, max_len=24)
    model, x, y = user.build(len(tok), len(text_splits.classes)), tok.encode(poisoned.texts), poisoned.y
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(12):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    folder = tmp_path / "user"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    tok.save(folder / "tokenizer.json")
    (folder / "model.json").write_text(json.dumps({"format": "poisonguard-text-model", "version": 1,
                                                   "classes": list(text_splits.classes), "embedding_layer": "embed"}))
    save_text_trigger(trigger, tmp_path / "trigger.json")
    data = ["--data", str(corpus_csv), "--text-column", "text", "--label-column", "label",
            "--arch", f"{tmp_path / 'usertext.py'}:build", "--arch-kwargs", f"vocab={len(tok)},classes=4"]
    assert main(["evaluate", str(folder), *data, "--trigger", str(tmp_path / "trigger.json"), "--quiet"]) == 0
    assert _last_json(capsys)["attack_success_rate"] > 0.9
    code = main(["scan", str(folder), *data, "--reference-models", "2", "--steps", "40", "--method", "text_inversion",
                 "--out", str(tmp_path / "scan"), "--quiet"])
    scan = _last_json(capsys)
    assert code == 1 and scan["targets"] == [trigger.target], scan
    assert "own architecture" in scan["sentence"] and "usertext.py:build" in scan["sentence"]
    assert main(["repair", str(folder), *data, "--trigger", str(tmp_path / "trigger.json"), "--from-scan",
                 str(tmp_path / "scan"), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    rep = _last_json(capsys)
    assert rep["after"]["attack_success_rate"] < 0.2 and rep["after"]["clean_accuracy"] > 0.8
    assert main(["repair", str(folder), *data, "--method", "wild", "--out", str(tmp_path / "w"), "--quiet"]) == 2
    assert "fine-pruning" in capsys.readouterr().err  # not text fine-pruning run under another method's name
    # the same folder without model.json (a user's weights and tokenizer only): output i is the data's class i
    (folder / "model.json").unlink()
    assert main(["evaluate", str(folder), *data, "--embedding-layer", "embed", "--trigger", str(tmp_path / "trigger.json"),
                 "--quiet"]) == 0
    asr = _last_json(capsys)["attack_success_rate"]
    assert asr > 0.9
    # the same weights as a PyTorch state dict (as Hugging Face names it): read by their bytes, not refused by name
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert main(["evaluate", str(folder), *data, "--embedding-layer", "embed", "--trigger", str(tmp_path / "trigger.json"),
                 "--quiet"]) == 0
    assert _last_json(capsys)["attack_success_rate"] == asr
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(scripted))
    assert main(["evaluate", str(scripted), *data, "--tokenizer", str(folder / "tokenizer.json"), "--quiet"]) == 2
    assert "is torchscript: a text model is read as weights" in capsys.readouterr().err


def test_binary_output_is_refused_for_text_models_in_one_line():
    """--binary-output reads one output as two classes for image and table models; text commands
    took the option and ignored it."""
    from types import SimpleNamespace

    from poisonguard.cli.text import load_model_for
    from poisonguard.errors import UserError

    with pytest.raises(UserError, match="is for image and table models; a text model must return one score per class"):
        load_model_for(SimpleNamespace(model="unused.pt", binary_output="logit"))
