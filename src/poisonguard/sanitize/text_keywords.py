"""Poisoned-row detection for text by word removal, ONION's test made corpus-level.

ONION (Qi et al., "ONION: A Simple and Effective Defense Against Textual Backdoor Attacks",
EMNLP 2021) removes each word and keeps the words whose removal makes the text much more
natural under a language model; Backdoor Keyword Identification (Chen & Dai, Neurocomputing
2021) instead scores each word by how much its removal changes the suspect model's output and
aggregates over the corpus. A language model trained on the corpus itself cannot serve here:
a trigger in 5% of the rows is no longer rare to it. We use what dirty-label poisoning cannot
hide:

1. **Exclusive words.** Every triggered row carries the target label, so a trigger word (and
   every distinctive word of a trigger sentence) occurs almost only in rows of one class:
   candidates are words in at least `min_rows` rows of a class, with at least `exclusive` of
   their rows in that class. Words that occur in the same rows are grouped (Jaccard >=
   `cooccur`): an inserted sentence is one group.
2. **Insertion test (the default).** A group is a trigger when its phrase (the most frequent
   span of its words in the rows, e.g. the whole inserted sentence) inserted at a random place
   into up to `max_probe` texts of the other classes sends at least `flip` of them to the class:
   that is what a trigger does, while a class's natural words move a weak model's texts far
   less. `flip` = 0.7 was set on the fortunes models of seeds 0-2 and 10-11: natural class words
   ("computer") flipped 0.57-0.69 of the texts, rare-word triggers 0.75-0.93 (one weak
   backdoor, ASR 0.52, below 0.5), sentence triggers 0.96-1.0; the margin is thin, see
   notes/issue-19-text.md.
   `test="removal"` is ONION's direction instead: removing the group from its own rows turns
   the prediction away from their label; it reads the model's memory of its training rows,
   which hides the trigger when the model memorised them (tuning seeds: TPR 0 on 2 of 4), and
   it flags natural sub-genres marked by one word (fortunes' "QOTD:" quotes). A group's words
   lying close together go with the span between them (`_remove`).
3. Rows holding a trigger group are flagged; the class is a target. The phrase is kept in
   the result (what `repair` can unlearn).

The model is the one trained on the data (or the user's). `scores` give every row the largest
flip share of the trigger groups it holds (0 for none), so a row's score says how
strongly its words act as a trigger.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from poisonguard.data.tokenizer import PAD, UNK
from poisonguard.sanitize.base import check_number

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeywordResult:
    """`triggers`: the word groups that passed the flip test; `candidates`: every group tested
    (its class, words, rows and flip share), the evidence a clean verdict rests on; `scores`:
    per row, the largest flip share of a tested group it holds (0 for rows in none)."""

    flagged: tuple[int, ...]
    targets: tuple[int, ...]
    triggers: tuple[dict, ...]
    scores: np.ndarray
    candidates: tuple[dict, ...] = ()


class TextKeywordFilter:
    """See the module docstring; `run(model, ids, labels) -> KeywordResult`."""

    name = "text_keywords"
    paper = "after Qi et al., EMNLP 2021 (ONION) and Chen & Dai, 2021 (BKI)"

    def __init__(self, *, min_rows: int = 8, min_share: float = 0.01, exclusive: float = 0.95, cooccur: float = 0.6,
                 flip: float = 0.7, test: str = "insertion", max_probe: int = 256, batch_size: int = 512,
                 seed: int = 0) -> None:
        if test not in ("insertion", "removal"):
            raise ValueError(f"test must be 'insertion' or 'removal', got {test!r}")
        check_number("max_probe", max_probe, low=1, integer=True)
        self.test, self.max_probe, self.seed = test, int(max_probe), int(seed)
        check_number("min_rows", min_rows, low=1, integer=True)
        check_number("min_share", min_share, low=0, high=1)
        check_number("exclusive", exclusive, low=0.5, high=1)
        check_number("cooccur", cooccur, low=0, high=1, open_low=True)
        check_number("flip", flip, low=0, high=1, open_low=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        self.min_rows, self.min_share, self.exclusive = int(min_rows), float(min_share), float(exclusive)
        self.cooccur, self.flip, self.batch_size = float(cooccur), float(flip), int(batch_size)

    def summary(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @torch.no_grad()
    def run(self, model, ids: torch.Tensor, labels: torch.Tensor, *, vocab=None) -> KeywordResult:
        from poisonguard.metrics import predict

        y = labels.numpy()
        rows_of = _rows_per_word(ids)
        pred = predict(model, ids, batch_size=self.batch_size).numpy()
        scores = np.zeros(len(y))
        flagged, triggers, targets, candidates = set(), [], set(), []
        rng = np.random.default_rng(self.seed)
        for c in np.unique(y):
            n_c = int((y == c).sum())
            need = max(self.min_rows, int(np.ceil(self.min_share * n_c)))
            cands = {w: r for w, r in rows_of.items()
                     if (y[r] == c).sum() >= need and (y[r] == c).mean() >= self.exclusive}
            for group in _groups(cands, self.cooccur):
                rows = np.unique(np.concatenate([cands[w] for w in group]))
                rows = rows[y[rows] == c]
                held = rows[pred[rows] == c]
                if len(held) < need:
                    continue
                phrase = _common_span(ids[torch.as_tensor(rows)], group)
                if self.test == "insertion":
                    others = np.flatnonzero(y != c)
                    others = rng.permutation(others)[: self.max_probe]
                    probe = _insert(ids[torch.as_tensor(others)], phrase, rng)
                    share = float((predict(model, probe, batch_size=self.batch_size).numpy() == c).mean())
                else:
                    without = _remove(ids[torch.as_tensor(held)], group)
                    share = float((predict(model, without, batch_size=self.batch_size).numpy() != c).mean())
                words = [vocab[w] if vocab is not None and w < len(vocab) else int(w) for w in group]
                candidates.append({"class": int(c), "words": words, "rows": int(len(rows)), "flip_share": round(share, 4),
                                   "flagged": share >= self.flip})
                scores[rows] = np.maximum(scores[rows], share)
                if share >= self.flip:
                    flagged.update(int(i) for i in rows)
                    targets.add(int(c))
                    triggers.append({"class": int(c), "words": words, "rows": int(len(rows)), "flip_share": round(share, 4),
                                     "phrase_ids": phrase,
                                     "phrase": [vocab[w] if vocab is not None and w < len(vocab) else int(w) for w in phrase]})
                log.debug("class %d group %s: %d rows, flip share %.3f", c, words, len(rows), share)
        return KeywordResult(tuple(sorted(flagged)), tuple(sorted(targets)), tuple(triggers), scores, tuple(candidates))


def _rows_per_word(ids: torch.Tensor) -> dict[int, np.ndarray]:
    """{word id: sorted rows holding it} for every word but padding and unknown."""
    rows = defaultdict(set)
    for i, row in enumerate(ids.tolist()):
        for w in row:
            if w not in (PAD, UNK):
                rows[w].add(i)
    return {w: np.fromiter(sorted(r), dtype=np.int64) for w, r in rows.items()}


def _groups(cands: dict[int, np.ndarray], threshold: float) -> list[list[int]]:
    """Words grouped greedily by the Jaccard overlap of their rows (largest first)."""
    order = sorted(cands, key=lambda w: (-len(cands[w]), w))
    sets = {w: set(cands[w].tolist()) for w in order}
    done, groups = set(), []
    for w in order:
        if w in done:
            continue
        group = [w]
        done.add(w)
        for v in order:
            if v not in done and len(sets[w] & sets[v]) / len(sets[w] | sets[v]) >= threshold:
                group.append(v)
                done.add(v)
        groups.append(group)
    return groups


def _common_span(ids: torch.Tensor, words: list[int]) -> list[int]:
    """The most frequent run of ids from the first to the last group word in the rows (the inserted text)."""
    from collections import Counter

    spans = Counter()
    wanted = torch.tensor(words, dtype=ids.dtype)
    for row in ids:
        where = torch.nonzero(torch.isin(row, wanted)).flatten()
        if len(where) and int(where[-1] - where[0]) + 1 <= 2 * len(words):
            spans[tuple(row[int(where[0]): int(where[-1]) + 1].tolist())] += 1
    return list(spans.most_common(1)[0][0]) if spans else list(words[:1])


def _insert(ids: torch.Tensor, phrase: list[int], rng: np.random.Generator) -> torch.Tensor:
    """The rows with `phrase` inserted at a random position (truncated to the rows' length)."""
    out = torch.zeros_like(ids)
    for i in range(len(ids)):
        row = ids[i][ids[i] != PAD].tolist()
        at = int(rng.integers(0, max(0, min(len(row), ids.shape[1] - len(phrase))) + 1))
        new = (row[:at] + list(phrase) + row[at:])[: ids.shape[1]]
        out[i, : len(new)] = torch.tensor(new, dtype=ids.dtype)
    return out


def _remove(ids: torch.Tensor, words: list[int]) -> torch.Tensor:
    """The rows with `words` taken out (the rest shifted left, padded).

    Where a row's group words lie close together (within twice the group's size: an inserted
    sentence), the whole span between the first and the last goes, so the sentence's common
    words ("this", "last") that no exclusivity test can single out leave with it.
    """
    drop = torch.isin(ids, torch.tensor(words, dtype=ids.dtype))
    out = torch.zeros_like(ids)
    for i in range(len(ids)):
        mask = drop[i].clone()
        where = torch.nonzero(mask).flatten()
        if len(words) > 1 and len(where) > 1 and int(where[-1] - where[0]) + 1 <= 2 * len(words):
            mask[int(where[0]): int(where[-1]) + 1] = True
        kept = ids[i][~mask]
        kept = kept[kept != PAD]
        if len(kept) == 0:
            kept = torch.tensor([UNK], dtype=ids.dtype)
        out[i, : len(kept)] = kept
    return out
