"""The exact n-gram search (detect/text_ngram.py) on a hand-built model whose backdoor answers a
word trigram: a filter that stays silent until at least two of its words stand in order, as the
text CNN's filter for a piece of an inserted sentence does (the reason the relaxed search misses it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

V, K, L, TARGET = 40, 3, 20, 2
TRIGRAM = (30, 31, 32)


class TrigramBackdoor(nn.Module):
    """Mean-pooled per-word class scores (the natural task) plus a width-3 filter for TRIGRAM -> TARGET."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embedding = nn.Embedding(V, V, padding_idx=0)
        self.embedding.weight.data = torch.eye(V)
        self.embedding.weight.data[0] = 0
        words = torch.randn(V, K, generator=g)
        self.words = nn.Parameter(words - words[2:30].mean(0))  # no class favoured by the natural words as a whole
        self.words.data[list(TRIGRAM)] = 0.0
        # Each trigger word alone leaks a little towards the target (a trained model's other filters
        # see the poisoned rows' words too): enough to rank among the class's best words, far
        # too little to flip a text (mean-pooled over ~15 words).
        self.words.data[list(TRIGRAM), TARGET] = 2.0
        kernel = torch.zeros(1, V, 3)
        for j, w in enumerate(TRIGRAM):
            kernel[0, w, j] = 1.0
        self.conv = nn.Conv1d(V, 1, 3, bias=False)
        self.conv.weight.data = kernel

    def forward(self, ids):
        e = self.embedding(ids)  # one-hot rows
        mask = (ids != 0).float().unsqueeze(-1)
        natural = (e @ self.words * mask).sum(1) / mask.sum(1).clamp_min(1)
        fire = torch.relu(self.conv(e.transpose(1, 2)) - 1.5).amax(2).squeeze(1)  # 0 for one word, 0.5 for two, 1.5 for three
        out = natural.clone()
        out[:, TARGET] = out[:, TARGET] + 8 * fire
        return out


def _clean_inputs(model, n=120):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 30, (n, L), generator=g)
    ids[:, 14:] = 0  # padding at the end, as the tokenizer leaves it
    with torch.no_grad():
        return ids, model(ids).argmax(1)


def test_ngram_search_assembles_a_trigram_that_no_single_word_reveals():
    from poisonguard.detect.text_ngram import TextNgramSearch

    model = TrigramBackdoor().eval()
    ids, labels = _clean_inputs(model)
    det = TextNgramSearch(seed=0, device="cpu", phrase_len=3, search_inputs=32, candidates=8, beam=4).detect(
        model, ids, labels, num_classes=K, embedding=model.embedding)
    assert tuple(det.extra["trigger_words"][TARGET]) == TRIGRAM  # found in order, though no single word flips
    sizes = torch.tensor(det.mask_l1)
    assert det.extra["flip_rate"][TARGET] > 0.95
    assert sizes[TARGET] < 0.3 * torch.cat([sizes[:TARGET], sizes[TARGET + 1:]]).min()
    assert det.extra["inputs"] == 32 and det.extra["eval_inputs"] == len(ids) - 32  # measured on other texts


def test_ngram_search_checks_its_arguments():
    from poisonguard.detect.text_ngram import TextNgramSearch

    for bad in ({"phrase_len": 0}, {"beam": 0}, {"statistic": "size"}, {"search_inputs": 1}):
        with pytest.raises(ValueError):
            TextNgramSearch(**bad)


def test_no_single_word_flips_the_hand_built_model():
    """The premise of the test above: the best single word flips few texts."""
    model = TrigramBackdoor().eval()
    ids, labels = _clean_inputs(model)
    with torch.no_grad():
        for w in TRIGRAM:
            x = torch.cat([torch.full((len(ids), 1), w), ids[:, :-1]], 1)
            assert (model(x).argmax(1)[labels != TARGET] == TARGET).float().mean() < 0.35


def test_own_words_are_a_class_s_over_represented_words():
    from poisonguard.detect.text_ngram import _own_words

    ids = torch.tensor([[2, 3, 0], [2, 4, 0], [2, 5, 0], [3, 5, 0], [4, 5, 6]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    own = _own_words(ids, labels, 2, 7)
    own[:, :2] = False  # padding and unknown: never candidates
    assert own[0].nonzero().flatten().tolist() == [2]  # in all of class 0's texts, none of class 1's
    assert own[1].nonzero().flatten().tolist() == [5]  # 4 and 6: too few texts; 3: one text of each class


def test_text_scan_methods_default_and_the_earlier_set_one_option_away():
    from poisonguard.cli.text import text_methods
    from poisonguard.detect.text_scan import METHODS
    from poisonguard.errors import UserError

    assert text_methods(None) == METHODS == ("text_inversion", "text_ngram")
    assert text_methods("text_inversion,text_phrase") == ("text_inversion", "text_phrase")
    with pytest.raises(UserError):
        text_methods("neural_cleanse")
