"""Exact n-gram trigger search for text models: a one-word sweep over the vocabulary, then a beam
search over contiguous phrases scored by forward passes alone (the discrete search of PICCOLO,
Liu et al., "PICCOLO: Exposing Complex Backdoors in NLP Transformer Models", S&P 2022, which
ranks candidate words and then assembles them into phrases; here the ranking is exact instead of
by the relaxed optimisation's weights).

Why not gradients: a sentence trigger (InsertSent) is answered by a convolution filter that
matches an n-gram of it. Such a filter stays below its ReLU until most of the n-gram is present,
so neither the relaxed-word mixture (`text_inversion`, DBS) nor HotFlip's gradient ranking leads
to it; exact forward passes do. A single word of the trigger already moves the target's
log-probability a little (the filter's pre-activation is a sum over its words), enough to rank it
among the few dozen best words of the vocabulary for that class; the beam then joins the ranked
words into pairs and triples, prepending or appending one word at a time, and keeps the phrases
that raise the target's mean log-probability most.

Statistic: the found phrase is inserted into HELD-OUT texts (not those it was searched on) and
the per-class size is the mean cross-entropy towards the class over those texts (the negative
mean log-probability). A natural class's phrase overfits the search texts and transfers less; a
backdoor's phrase transfers fully. Unlike a flip rate, the cross-entropy does not saturate at
1 when clean classes are easy to flip too. The text verdict (`detect/text_scan.py`) compares each
class's size with the same class on clean reference models.

The model is only called on token ids (any `nn.Module` taking (N, L) ids works) and never changed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.data.tokenizer import PAD, UNK
from poisonguard.detect.base import check_number, device_for, make_detection
from poisonguard.detect.text_inversion import (
    TEXT_DETECTORS,
    _frozen_copy,
    _slices,
    check_text_inputs,
)
from poisonguard.errors import UserError


@TEXT_DETECTORS.register("text_ngram")
class TextNgramSearch:
    """Per-class exact word sweep + beam search over phrases; `detect(model, ids, labels, ...) -> Detection`.

    Args:
        phrase_len: the phrase length the beam builds (4: a piece of a sentence trigger that the
            text CNN's width-3..5 filters answer; longer phrases let clean classes catch up less
            than a backdoor's, see notes/issue-19-text.md, Session 8).
        search_inputs: texts the beam scores phrases on.
        sweep_inputs: the first of those that the one-word sweep (the costly part: every word of
            the vocabulary) scores on; it only ranks candidates.
        eval_inputs: other texts the found phrase is measured on (the statistic).
        candidates: best words per class (by the sweep) the beam may add.
        beam: phrases kept per length.
        floor: added to the cross-entropy before logs are taken (a perfect phrase's 0 stays finite).
        statistic: "nll" (mean cross-entropy towards the class; the size) or "flip" (1 - flip rate
            + floor, as `text_inversion`).
        skip_own_words: leave out of a class's candidates the words its own clean texts use more
            than the other classes' (at least twice): a class's topic words are a natural
            shortcut that a 4-word phrase of them reaches as well as a backdoor's trigger does;
            an inserted trigger is foreign to the class.

    Defaults (phrases of 4, 16 sweep texts, beam 4 x 24 candidates, floor 0.02, own words
    skipped) were chosen on the fortunes corpus's tuning seeds 10-12 (notes/issue-19-text.md,
    Session 8).
    """

    name = "text_ngram"
    paper = "Liu et al., S&P 2022 (PICCOLO, word ranking + phrase assembly), exact scoring"
    needs_data = True

    def __init__(self, *, phrase_len: int = 4, search_inputs: int = 32, sweep_inputs: int = 16, eval_inputs: int = 256,
                 candidates: int = 24, beam: int = 4, floor: float = 0.02, statistic: str = "nll", skip_own_words: bool = True,
                 batch_size: int = 2048, seed: int = 0,
                 device: str = "auto") -> None:
        check_number("phrase_len", phrase_len, low=1, high=8, integer=True)
        check_number("search_inputs", search_inputs, low=2, integer=True)
        check_number("sweep_inputs", sweep_inputs, low=2, integer=True)
        check_number("eval_inputs", eval_inputs, low=2, integer=True)
        check_number("candidates", candidates, low=1, integer=True)
        check_number("beam", beam, low=1, integer=True)
        check_number("floor", floor, low=1e-6, high=1.0)
        check_number("batch_size", batch_size, low=1, integer=True)
        if statistic not in ("nll", "flip"):
            raise ValueError(f"statistic must be 'nll' or 'flip', got {statistic!r}")
        self.phrase_len, self.search_inputs, self.eval_inputs = int(phrase_len), int(search_inputs), int(eval_inputs)
        self.sweep_inputs = int(sweep_inputs)
        self.candidates, self.beam, self.floor, self.statistic = int(candidates), int(beam), float(floor), statistic
        self.batch_size, self.seed, self.device = int(batch_size), int(seed), device
        self.skip_own_words = bool(skip_own_words)

    def detect(self, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
               embedding: nn.Embedding, vocab: tuple[str, ...] | None = None):
        """Search a phrase per class; sizes = the phrase's held-out cross-entropy (or unflipped share) + floor."""
        check_text_inputs(ids, labels, words=self.phrase_len, what="text n-gram search", min_rows=4)
        start = time.perf_counter()
        device = device_for(self.device)
        model, embedding = _frozen_copy(model, embedding, device)
        search, held = self._split(len(ids))
        xs, ws = ids[search].to(device), _weights(labels[search], num_classes).to(device)
        xh, wh = ids[held].to(device), _weights(labels[held], num_classes).to(device)
        words = torch.arange(embedding.num_embeddings, device=device)
        words = words[(words != PAD) & (words != UNK)]  # padding and unknown are no words to insert
        if len(words) == 0:
            raise UserError("text n-gram search: the vocabulary has no words besides padding and unknown")
        n = min(self.sweep_inputs, len(search))
        sweep = self._score(model, xs[:n], _weights(labels[search[:n]], num_classes).to(device), words.unsqueeze(1))  # (V', K)
        if self.skip_own_words:
            own = _own_words(ids, labels, num_classes, embedding.num_embeddings)[:, words.cpu()].T.to(device)
            sweep = sweep.masked_fill(own, float("-inf"))
        phrases, sizes, flips, search_logp = [], [], [], []
        for c in range(num_classes):
            top = words[sweep[:, c].topk(min(self.candidates, len(words))).indices]
            phrase, logp = self._beam(model, xs, ws, top, c)
            ce, flip = self._measure(model, xh, wh, labels[held], phrase, c)
            sizes.append((ce if self.statistic == "nll" else 1.0 - flip) + self.floor)
            flips.append(flip)
            search_logp.append(logp)
            phrases.append([vocab[w] if vocab and w < len(vocab) else int(w) for w in phrase])
        index = torch.tensor(sizes, dtype=torch.float64)
        from poisonguard.detect.anomaly import log_lower_mad_index

        mad = log_lower_mad_index(index)
        flagged = [int(c) for c in torch.nonzero(mad > 2.0).flatten()]
        extra = {"trigger_words": phrases, "flip_rate": [round(f, 4) for f in flips],
                 "search_logp": [round(v, 4) for v in search_logp], "statistic": self.statistic,
                 "phrase_len": self.phrase_len, "inputs": len(search), "eval_inputs": len(held)}
        return make_detection(self.name, index=mad, flagged=flagged, start=start, sizes=index, masks=None,
                              patterns=None, threshold=2.0, extra=extra)

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Disjoint search and held-out rows (half each when there are too few texts for both)."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        k = min(self.search_inputs, n // 2)
        return perm[:k], perm[k: k + self.eval_inputs]

    def _score(self, model, x, w, phrases: torch.Tensor) -> torch.Tensor:
        """Mean log-probability of every class (P, K) with each phrase (P, k) put in front of every text.

        A text of class c does not count for c (w (N, K) holds each text's weight per class).
        """
        k, n, out = phrases.shape[1], len(x), []
        base = x[:, : x.shape[1] - k]
        per = max(1, self.batch_size // n)  # phrases per forward batch
        with torch.no_grad():
            for sl in _slices(len(phrases), per):
                p = phrases[sl]
                batch = torch.cat([p.repeat_interleave(n, 0), base.repeat(len(p), 1)], 1)
                logp = F.log_softmax(model(batch).float(), 1).view(len(p), n, -1)
                out.append(torch.einsum("pnk,nk->pk", logp, w))
        return torch.cat(out)

    def _beam(self, model, x, w, top: torch.Tensor, c: int) -> tuple[list[int], float]:
        """Grow phrases from the best single words, one word before or after, keeping the `beam` best."""
        beams = [[int(t)] for t in top[: self.beam]]
        best = (beams[0], float("-inf"))
        for _ in range(self.phrase_len - 1):
            grown = {tuple(b + [int(t)]) for b in beams for t in top} | {tuple([int(t)] + b) for b in beams for t in top}
            grown = sorted(grown)
            scores = self._score(model, x, w, torch.tensor(grown, device=x.device))[:, c]
            order = scores.argsort(descending=True)[: self.beam].tolist()
            beams = [list(grown[i]) for i in order]
            best = (beams[0], float(scores[order[0]]))
        if self.phrase_len == 1:
            best = (beams[0], float(self._score(model, x, w, torch.tensor([beams[0]], device=x.device))[0, c]))
        return best

    def _measure(self, model, x, w, labels, phrase: list[int], c: int) -> tuple[float, float]:
        """Held-out cross-entropy towards c and flip rate to c, over texts of other classes."""
        p = torch.tensor([phrase], device=x.device)
        ce = -float(self._score(model, x, w, p)[0, c])
        k = len(phrase)
        xt = torch.cat([p.expand(len(x), k), x[:, : x.shape[1] - k]], 1)
        with torch.no_grad():
            pred = torch.cat([model(xt[sl]).argmax(1) for sl in _slices(len(xt), self.batch_size)]).cpu()
        other = labels != c
        return ce, float((pred[other] == c).float().mean()) if other.any() else 0.0


def _own_words(ids: torch.Tensor, labels: torch.Tensor, num_classes: int, vocab_size: int) -> torch.Tensor:
    """(K, V) bool: words in at least 2 of class c's texts and in a larger share of them than of the others'."""
    present = torch.zeros(len(ids), vocab_size)
    present[torch.arange(len(ids)).unsqueeze(1).expand_as(ids), ids.clamp(0, vocab_size - 1)] = 1.0
    counts = F.one_hot(labels.long(), num_classes).float().T @ present  # (K, V) texts holding each word
    n = torch.bincount(labels.long(), minlength=num_classes).float().unsqueeze(1)
    rest = (counts.sum(0, keepdim=True) - counts) / (len(ids) - n).clamp_min(1.0)
    return (counts >= 2) & (counts / n.clamp_min(1.0) > rest)


def _weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K): 1 / (texts not of class c) for each text not of class c, 0 for class c's own texts."""
    w = (labels.unsqueeze(1) != torch.arange(num_classes).unsqueeze(0)).float()
    return w / w.sum(0, keepdim=True).clamp_min(1.0)
