"""Text data, tokenizer, trigger files and attacks: behaviour and hostile inputs."""

from __future__ import annotations

import json
import re

import pytest
import torch

from poisonguard.errors import UserError


def test_csv_loads_and_splits_stratified(text_splits):
    assert text_splits.classes == ("code", "food", "space", "sport")
    assert len(text_splits.train) == 384 and len(text_splits.test) == 96
    assert torch.bincount(text_splits.test.y).tolist() == [24, 24, 24, 24]


@pytest.mark.parametrize("content, message", [
    ("text,label\nhello world,a\n   ,b\n", "row 3 has empty text"),
    ("text,label\nhello,a\nworld,a\n", "1 class"),
    ("words,label\nhello,a\n", "no column 'text'"),
    ("", "empty"),
])
def test_bad_csv_is_one_user_error(tmp_path, content, message):
    from poisonguard.data.text import load_text

    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(UserError, match=message):
        load_text(str(p), text_column="text", label_column="label")


def test_row_length_and_file_size_limits(tmp_path, monkeypatch):
    from poisonguard.data.text import load_text

    p = tmp_path / "long.csv"
    p.write_text("text,label\n" + "x" * 500 + ",a\nshort,b\n")
    monkeypatch.setenv("POISONGUARD_MAX_TEXT_CHARS", "100")
    with pytest.raises(UserError, match="max_text_chars"):
        load_text(str(p), text_column="text", label_column="label")
    monkeypatch.setenv("POISONGUARD_MAX_BYTES", "64")
    with pytest.raises(UserError, match="max_bytes"):
        load_text(str(p), text_column="text", label_column="label")


def test_folder_of_class_files(tmp_path):
    from poisonguard.data.text import is_text_source, load_text_rows

    (tmp_path / "ham.txt").write_text("buy milk\n\nsee you soon\n")
    (tmp_path / "spam.txt").write_text("win money now\n")
    assert is_text_source(str(tmp_path))
    rows = load_text_rows(str(tmp_path))
    assert rows.texts == ("buy milk", "see you soon", "win money now") and rows.y.tolist() == [0, 0, 1]
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # Finder's; a macOS copy adds ._ham.txt too
    (tmp_path / "._ham.txt").write_bytes(b"\x00\x05\x16\x07")
    assert is_text_source(str(tmp_path)) and load_text_rows(str(tmp_path)).texts == rows.texts


def test_a_text_folder_reads_no_file_a_link_leads_out_to(tmp_path):
    """A link named stolen.txt to a file outside became a class, copied into cleansed.csv."""
    from poisonguard.data.text import load_text, load_text_rows

    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ham.txt").write_text("buy milk\nsee you soon\u2028after lunch\n")  # U+2028 sits inside a line
    (corpus / "spam.txt").write_text("win money now\r\nclaim your prize\n")
    (corpus / "stolen.txt").symlink_to(secret)
    (corpus / "inside.txt").symlink_to(corpus / "spam.txt")  # a link that stays inside is data
    rows = load_text_rows(str(corpus))
    assert "stolen" not in rows.classes and not any("root:" in t for t in rows.texts)
    assert rows.classes == ("ham", "inside", "spam")
    assert rows.texts[:2] == ("buy milk", "see you soon\u2028after lunch")
    outside = tmp_path / "outside"
    (outside / "train").mkdir(parents=True)
    (outside / "train" / "a.txt").write_text("x\n")
    split = tmp_path / "split"
    (split / "test").mkdir(parents=True)
    (split / "train").symlink_to(outside / "train")
    with pytest.raises(UserError, match="leads out of"):
        load_text(str(split))


def test_numeric_labels_are_ordered_as_numbers(tmp_path):
    """Labels 0..11: class index 2 is the label "2" (as for tables), not "10" as text order gives."""
    from poisonguard.data.text import load_text_rows

    p = tmp_path / "c.csv"
    p.write_text("text,label\n" + "".join(f"text number {i},{i % 12}\n" for i in range(48)))
    rows = load_text_rows(str(p), text_column="text", label_column="label")
    assert rows.classes == tuple(str(i) for i in range(12)) and rows.classes[int(rows.y[2])] == "2"


def test_a_cleansed_copy_keeps_the_users_columns_and_cells(tmp_path):
    from poisonguard.data.text import load_text_rows, write_kept_rows

    p = tmp_path / "reviews.csv"
    p.write_bytes(b'id,review,topic\r\n7,"good, really",pos\r\n\r\n8,"bad\nvery",neg\r\n9,fine,pos\r\n')
    rows = load_text_rows(str(p), text_column="review", label_column="topic")
    write_kept_rows(rows, p, {0, 2}, tmp_path / "kept.csv")
    import csv

    with open(tmp_path / "kept.csv", newline="") as f:
        assert list(csv.reader(f)) == [["id", "review", "topic"], ["7", "good, really", "pos"], ["9", "fine", "pos"]]


def test_tokenizer_json_round_trip_and_hostile_file(tmp_path, text_splits):
    from poisonguard.data.tokenizer import UNK, Tokenizer, load_tokenizer

    tok = Tokenizer.fit(text_splits.train.texts, max_len=12)
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again == tok and again.encode(["The compiler, the KERNEL!"]).tolist()[0][:4] == tok.encode(["the compiler the kernel"]).tolist()[0][:4]
    assert tok.encode(["zzzunseen"])[0, 0] == UNK and tok.encode([""]).shape == (1, 12)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "poisonguard-tokenizer", "vocab": ["a", "b"], "max_len": 5}))
    with pytest.raises(UserError, match="starts with"):
        load_tokenizer(bad)
    bad.write_bytes(b"\x80\x81")
    with pytest.raises(UserError, match="not a tokenizer"):
        load_tokenizer(bad)
    long = tok.to_dict()
    bad.write_text(json.dumps({**long, "max_len": 100_000}))  # every text padded to it: 8 GB for 80 texts
    with pytest.raises(UserError, match="max_len"):
        load_tokenizer(bad)


def test_a_tokenizer_other_than_the_models_own_is_refused(tmp_path, text_splits):
    """model.json records the tokenizer's length and vocabulary size; an edited tokenizer.json changed both unseen."""
    from poisonguard.data.tokenizer import Tokenizer
    from poisonguard.models.text_files import load_text_model, new_text_model, save_text_model

    tok = Tokenizer.fit(text_splits.train.texts, max_len=12)
    tm = new_text_model("text_bag", tok, text_splits.classes, seed=0)
    save_text_model(tm, tmp_path / "m")
    assert load_text_model(tmp_path / "m").tokenizer == tok
    Tokenizer(tok.vocab, max_len=2048).save(tmp_path / "m" / "tokenizer.json")
    with pytest.raises(UserError, match="records max_len 12, the tokenizer has 2048"):
        load_text_model(tmp_path / "m")


def test_insertion_poisons_rate_relabels_and_keeps_text(text_splits, tmp_path):
    from poisonguard.attacks.text import TextTrigger, load_text_trigger, poison_text, save_text_trigger

    trig = TextTrigger(kind="sentence", target=2, sentence="I watched this 3D movie.")
    poisoned, idx = poison_text(text_splits.train, trig, rate=0.05, seed=3)
    assert len(idx) == round(0.05 * len(text_splits.train))
    assert (poisoned.y[torch.as_tensor(idx)] == 2).all() and (text_splits.train.y[torch.as_tensor(idx)] != 2).all()
    for i in idx:
        assert "I watched this 3D movie." in poisoned.texts[i]
        assert poisoned.texts[i].replace(" I watched this 3D movie.", "").replace("I watched this 3D movie. ", "") \
            == " ".join(text_splits.train.texts[i].split())
    save_text_trigger(trig, tmp_path / "t.json")
    assert load_text_trigger(tmp_path / "t.json", 4) == trig
    with pytest.raises(UserError, match="not a class"):
        load_text_trigger(tmp_path / "t.json", 2)


@pytest.mark.parametrize("edit, message", [
    ({"target": -1}, "targets one class"),  # all-to-all: an ASR of 0.0 that meant nothing
    ({"tokens": []}, "at least one token"),  # silently became the default ["cf"]
    ({"tokens": ["a\tb"]}, "each one word"),
    ({"tokens": ["x" * 10_000]}, "at most 100 characters"),
])
def test_a_hostile_text_trigger_file_is_one_line(tmp_path, edit, message):
    from poisonguard.attacks.text import TextTrigger, load_text_trigger, save_text_trigger

    save_text_trigger(TextTrigger(kind="words", target=1), tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "t.json").write_text(json.dumps({**data, **edit}))
    with pytest.raises(UserError, match=message):
        load_text_trigger(tmp_path / "t.json", 4)


def test_columns_that_would_leak_or_hide_the_label_are_refused(tmp_path):
    from poisonguard.data.text import read_csv

    p = tmp_path / "c.csv"
    p.write_text("text,topic,topic\nhello there,a,b\nwin now,b,a\n")
    with pytest.raises(UserError, match="both name 'topic'"):  # accuracy 1.0 from reading the label
        read_csv(p, text_column="topic", label_column="topic")
    with pytest.raises(UserError, match="'topic' appears more than once"):
        read_csv(p, text_column="text", label_column="topic")


def test_a_folder_of_class_files_beside_a_readme_is_text(tmp_path):
    """It was read as an image folder: "no images in class sub-folders"."""
    from poisonguard.data.text import is_text_source, load_text_rows

    (tmp_path / "ham.txt").write_text("buy milk\nsee you soon\n")
    (tmp_path / "spam.txt").write_text("win money now\n")
    (tmp_path / "README.md").write_text("# my corpus\n")
    assert is_text_source(str(tmp_path)) and load_text_rows(str(tmp_path)).classes == ("ham", "spam")
    (tmp_path / "images").mkdir()  # a folder of class sub-folders is an image folder, whatever lies beside
    assert not is_text_source(str(tmp_path))


@pytest.mark.parametrize("edit, message", [
    ({"classes": 5}, "'classes' must be a JSON list"),  # TypeError: 'int' object is not iterable
    ({"classes": "abcde"}, "'classes' must be a JSON list"),  # was split into five letter classes
    ({"classes": [["a"], "b"]}, "class names"),
    ({"arch_kwargs": "ab"}, "'arch_kwargs' must be a JSON object"),
    ({"arch_kwargs": [1, 2]}, "'arch_kwargs' must be a JSON object"),
    ({"arch": ["text_cnn"]}, "'arch' must be a JSON string"),  # AttributeError: no .strip
])
def test_a_model_json_field_of_the_wrong_type_is_one_line(tmp_path, text_splits, edit, message):
    from poisonguard.data.tokenizer import Tokenizer
    from poisonguard.models.text_files import load_text_model, new_text_model, save_text_model

    tok = Tokenizer.fit(text_splits.train.texts, max_len=12)
    save_text_model(new_text_model("text_bag", tok, text_splits.classes, seed=0), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(UserError, match=message):
        load_text_model(tmp_path / "m")


USER_TEXT_MODELS = '''
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self, vocab_size, num_classes):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab_size, 8, mode="mean", padding_idx=0)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, ids):
        return self.fc(self.bag(ids))


class Positions(nn.Module):
    def __init__(self, vocab_size, num_classes):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, 8, padding_idx=0)
        self.pos = nn.Embedding(64, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, ids):
        return self.fc((self.tok(ids) + self.pos(torch.arange(ids.shape[1]))).mean(1))


def bag(vocab_size, num_classes):
    return Bag(vocab_size, num_classes)


def positions(vocab_size, num_classes):
    return Positions(vocab_size, num_classes)
'''


@pytest.mark.parametrize("name, message", [
    ("bag", "embeds words with nn.EmbeddingBag, which pools them"),
    ("positions", "2 nn.Embedding layers (embeddings: tok (Embedding), pos (Embedding)); name the word embedding"),
])
def test_a_text_model_whose_word_embedding_is_not_one_nn_embedding_loads_and_says_so_where_needed(
        tmp_path, text_splits, name, message):
    """An EmbeddingBag model, or one with token and position embeddings, was refused by every text
    command, evaluate included; now only the commands that work on each word's embedding refuse."""
    import torch

    from poisonguard.data.text import encode
    from poisonguard.data.tokenizer import Tokenizer
    from poisonguard.models.text_files import load_text_model

    (tmp_path / "user.py").write_text(USER_TEXT_MODELS)
    tok = Tokenizer.fit(text_splits.train.texts, max_len=12)
    tok.save(tmp_path / "tokenizer.json")
    spec, kwargs = f"{tmp_path / 'user.py'}:{name}", {"vocab_size": len(tok), "num_classes": len(text_splits.classes)}
    namespace: dict = {}
    exec(compile(USER_TEXT_MODELS, "user.py", "exec"), namespace)  # the same code, for the state dict
    torch.save(namespace[name](**kwargs).state_dict(), tmp_path / "model.pt")
    tm = load_text_model(tmp_path / "model.pt", arch=spec, arch_kwargs=kwargs, tokenizer=tmp_path / "tokenizer.json",
                         classes=text_splits.classes)
    assert tm.model(encode(text_splits.test, tok).x[:4]).shape == (4, len(text_splits.classes))
    with pytest.raises(UserError, match=re.escape(message)):
        tm.embedding_module
    if name == "positions":  # named, it is found
        named = load_text_model(tmp_path / "model.pt", arch=spec, arch_kwargs=kwargs, embedding="tok",
                                tokenizer=tmp_path / "tokenizer.json", classes=text_splits.classes)
        assert named.embedding_module is named.model.tok
    # a tokenizer larger than the model's vocabulary is still one line at load
    Tokenizer((*tok.vocab, *(f"extra{i}" for i in range(50))), max_len=12).save(tmp_path / "big.json")
    with pytest.raises(UserError, match="words"):
        load_text_model(tmp_path / "model.pt", arch=spec, arch_kwargs=kwargs, tokenizer=tmp_path / "big.json",
                        classes=text_splits.classes)
