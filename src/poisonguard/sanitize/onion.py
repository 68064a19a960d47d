"""ONION's outlier-word test (Qi et al., "ONION: A Simple and Effective Defense Against Textual
Backdoor Attacks", EMNLP 2021) with a language model trained here, not downloaded.

ONION scores every word of an input by how much more natural the text becomes without it:
f_i = p_0 - p_i, the perplexity of the text minus that of the text with word i removed, under
GPT-2. An inserted trigger word ("cf", "mn") is an outlier in its context, so removing it
lowers the perplexity a lot. Here the language model is a word bigram model with interpolated
absolute discounting (Ney, Essen & Kneser, 1994; d = 0.75) over the suspect model's token ids,
trained on the defender's clean texts: a model trained on the (possibly poisoned) training set
would have learnt the trigger as common. A word's score is the log-probability the text gains
without it (ONION's perplexity difference, not divided by the length: per-word averages let
short clean texts outscore long triggered ones; on the Fortunes rare-word model at 5% FRR they
caught 6% of triggered texts, the totals 24%).

Measured (benchmarks, Fortunes, one seed): a bigram model of ~3,000 clean quotes is a poor
judge of naturalness, and ONION catches few triggered texts (rare word 24%, sentence 9% at a
5% false-rejection rate) where STRIP-ViTA (`strip_text`) catches 88% and 78%: `filter` on
text defaults to STRIP, ONION stays an option for users with a larger trusted corpus.

As an input filter (`OnionFilter`, the interface of `strip.StripFilter`): an input's score is
its largest word score; the threshold is the (1 - FRR) quantile of clean inputs' scores, and
inputs above it are rejected. The words above the threshold are what ONION would delete.
"""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.data.tokenizer import PAD
from poisonguard.errors import UserError
from poisonguard.sanitize.base import check_number

DISCOUNT = 0.75


class BigramLM:
    """Word bigram language model over token ids, with sentence start/end symbols."""

    def __init__(self, ids: torch.Tensor, vocab_size: int) -> None:
        self.start, self.end = vocab_size, vocab_size + 1
        self.size = vocab_size + 2
        pairs = torch.cat([self._pairs(row) for row in ids.long()]) if len(ids) else torch.zeros(0, 2, dtype=torch.long)
        keys, counts = torch.unique(pairs[:, 0] * self.size + pairs[:, 1], return_counts=True)
        self.keys, self.counts = keys, counts.double()
        self.context_total = torch.zeros(self.size, dtype=torch.float64).index_add_(0, keys // self.size, self.counts)
        self.context_types = torch.zeros(self.size, dtype=torch.float64).index_add_(
            0, keys // self.size, torch.ones_like(self.counts))
        unigram = torch.zeros(self.size, dtype=torch.float64).index_add_(0, keys % self.size, self.counts)
        self.unigram = (unigram + 1) / (unigram.sum() + self.size)  # add-one: unseen words keep some mass

    def _pairs(self, row: torch.Tensor) -> torch.Tensor:
        words = row[row != PAD]
        seq = torch.cat([torch.tensor([self.start]), words, torch.tensor([self.end])])
        return torch.stack([seq[:-1], seq[1:]], 1)

    def log_prob(self, context: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        """log P(word | context), elementwise over equal-shaped id tensors."""
        key = context * self.size + word
        at = torch.searchsorted(self.keys, key).clamp(max=max(len(self.keys) - 1, 0))
        count = torch.where(self.keys[at] == key, self.counts[at], torch.zeros_like(key, dtype=torch.float64)) \
            if len(self.keys) else torch.zeros_like(key, dtype=torch.float64)
        total = self.context_total[context]
        seen = total > 0
        backoff = torch.where(seen, DISCOUNT * self.context_types[context] / total.clamp(min=1), torch.ones_like(total))
        direct = torch.where(seen, (count - DISCOUNT).clamp(min=0) / total.clamp(min=1), torch.zeros_like(total))
        return torch.log(direct + backoff * self.unigram[word])

    def word_scores(self, row: torch.Tensor) -> np.ndarray:
        """(T,) per word of one text (padding dropped): how much more probable (log) the text is without it."""
        words = row[row != PAD].long()
        t = len(words)
        if t < 2:
            return np.zeros(t)
        seq = torch.cat([torch.tensor([self.start]), words, torch.tensor([self.end])])
        steps = self.log_prob(seq[:-1], seq[1:])  # (T + 1,)
        total = steps.sum()
        # Removing word i drops its two bigrams and joins its neighbours.
        joined = self.log_prob(seq[:-2], seq[2:])  # (T,): word i's left neighbour -> its right one
        without = total - steps[:-1] - steps[1:] + joined
        return (without - total).numpy()


class OnionFilter:
    """ONION as an input filter: fit the language model and threshold on clean texts, reject above it."""

    def __init__(self, *, frr: float = 0.01, seed: int = 0) -> None:
        check_number("frr", frr, low=0, high=0.5, open_low=True)
        self.frr, self.seed = float(frr), int(seed)
        self.lm: BigramLM | None = None
        self.threshold: float | None = None
        self.clean_scores: np.ndarray | None = None

    def fit(self, lm_texts: torch.Tensor, clean: torch.Tensor, vocab_size: int) -> "OnionFilter":
        """Train the language model on `lm_texts` (N, L) ids; set the threshold on other clean texts."""
        if len(lm_texts) < 20 or len(clean) < 20:
            raise UserError("ONION needs at least 20 clean texts for its language model and 20 for its threshold")
        self.lm = BigramLM(lm_texts, vocab_size)
        self.clean_scores = self.scores(clean)
        self.threshold = float(np.quantile(self.clean_scores, 1 - self.frr))
        return self

    def scores(self, x: torch.Tensor) -> np.ndarray:
        """(N,) each text's largest word score (0 for texts of fewer than two words)."""
        if self.lm is None:
            raise RuntimeError("call fit() first")
        return np.array([float(s.max()) if len(s) else 0.0 for s in (self.lm.word_scores(row) for row in x)])

    def suspicious_words(self, row: torch.Tensor) -> list[int]:
        """Positions (among the text's non-padding words) ONION would delete: scores above the threshold."""
        return [int(i) for i in np.flatnonzero(self.lm.word_scores(row) > self.threshold)]
