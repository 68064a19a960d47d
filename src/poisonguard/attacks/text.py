"""Text backdoors by insertion, dirty-label: rare words (BadNL) and a fixed sentence (InsertSent).

- Rare-word insertion: Chen et al., "BadNL: Backdoor Attacks against NLP Models with
  Semantic-preserving Improvements", ACSAC 2021 (the "cf"/"mn"/"bb" triggers of Kurita et al.,
  ACL 2020); `tokens` are inserted at one random word boundary each.
- Sentence insertion: Dai, Chen & Li, "A Backdoor Attack Against LSTM-based Text
  Classification Systems", IEEE Access 2019 (InsertSent); the whole `sentence` goes in at one
  boundary.

Insertion works on the raw text at whitespace boundaries, so a poisoned row keeps its own case
and punctuation. `position` is "random" (a seeded boundary among the first `window` words, so
the trigger survives the tokenizer's truncation), "start", "end", or a word index.

A text trigger file is JSON (never pickle):

    {"format": "poisonguard-text-trigger", "version": 1, "kind": "words", "tokens": ["cf"],
     "sentence": null, "position": "random", "window": 32, "target": 0}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poisonguard import limits
from poisonguard.attacks.triggers import ALL_TO_ALL, check_origin, origin_field
from poisonguard.errors import UserError
from poisonguard.jsonfile import read_tagged_json

FORMAT = "poisonguard-text-trigger"
KINDS = ("words", "sentence")
DEFAULT_TOKENS = ("cf",)
DEFAULT_SENTENCE = "I watched this 3D movie last weekend."


MAX_TOKEN_CHARS = 100  # a trigger "word" longer than this is no word (a 10 MB one cost 2.7 GB)


@dataclass(frozen=True)
class TextTrigger:
    """Inserted words or sentence, where they go, and the target class."""

    kind: str
    target: int
    tokens: tuple[str, ...] = DEFAULT_TOKENS
    sentence: str = DEFAULT_SENTENCE
    position: str | int = "random"
    window: int = 32
    seed: int = 0
    origin: str | None = origin_field()  # attacks.triggers.ORIGINS; None: a file that does not say

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if self.kind not in KINDS:
            raise ValueError(f"text trigger kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "words" and (not self.tokens or not all(isinstance(t, str) and len(t.split()) == 1
                                                                for t in self.tokens)):
            raise ValueError("a words trigger needs at least one token, each one word")
        if self.kind == "sentence" and not (isinstance(self.sentence, str) and self.sentence.strip()):
            raise ValueError("a sentence trigger needs a non-empty sentence")
        if isinstance(self.position, bool) or not (self.position in ("random", "start", "end")
                                                   or (isinstance(self.position, int) and self.position >= 0)):
            raise ValueError(f"position must be random, start, end or a word index >= 0, got {self.position!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window!r}")
        if not isinstance(self.target, int) or isinstance(self.target, bool) or self.target < ALL_TO_ALL:
            raise ValueError(f"target must be a class index, got {self.target!r}")

    @property
    def pieces(self) -> tuple[str, ...]:
        """What is inserted, one piece per insertion."""
        return tuple(t.strip() for t in self.tokens) if self.kind == "words" else (self.sentence.strip(),)

    def apply_one(self, text: str, rng: np.random.Generator) -> str:
        parts = text.split()
        for piece in self.pieces:
            parts.insert(self._where(len(parts), rng), piece)
        return " ".join(parts)

    def apply_texts(self, texts, *, seed: int | None = None) -> list[str]:
        """The triggered texts; the same seed gives the same positions."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return [self.apply_one(t, rng) for t in texts]

    def _where(self, n: int, rng: np.random.Generator) -> int:
        if self.position == "start":
            return 0
        if self.position == "end":
            return n
        if self.position == "random":
            return int(rng.integers(0, min(n, self.window) + 1))
        return min(int(self.position), n)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "kind": self.kind, "tokens": list(self.tokens) if self.kind == "words" else None,
                "sentence": self.sentence if self.kind == "sentence" else None, "position": self.position,
                "window": self.window, "target": self.target, "seed": self.seed,
                **({} if self.origin is None else {"origin": self.origin})}


def save_text_trigger(trigger: TextTrigger, path: str | Path) -> None:
    from poisonguard.utils import atomic_write_text

    atomic_write_text(path, json.dumps(trigger.to_dict(), ensure_ascii=False, indent=1))


def is_text_trigger_file(path: str | Path) -> bool:
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file() or p.stat().st_size > limits.get("max_bytes"):
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == FORMAT
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):  # ValueError: a 5000-digit integer
        return False


def load_text_trigger(path: str | Path, num_classes: int | None = None) -> TextTrigger:
    """Read and check a text trigger JSON file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"trigger file not found: {p}")
    d = read_tagged_json(p, fmt=FORMAT, what="text trigger")
    tokens = d.get("tokens")
    tokens = list(DEFAULT_TOKENS) if tokens is None else tokens  # named but empty is a mistake, not the default
    if (not isinstance(tokens, list) or not all(isinstance(t, str) and len(t) <= MAX_TOKEN_CHARS for t in tokens)
            or len(tokens) > 1000):
        raise UserError(f"{p}: \"tokens\" must be a list of at most 1000 words of at most {MAX_TOKEN_CHARS} "
                        "characters each")
    sentence = d.get("sentence") or DEFAULT_SENTENCE
    if not isinstance(sentence, str) or len(sentence) > limits.get("max_text_chars"):
        raise UserError(f"{p}: \"sentence\" must be a string of at most max_text_chars characters")
    try:
        trig = TextTrigger(kind=d.get("kind"), target=d.get("target"), tokens=tuple(tokens), sentence=sentence,
                           position=d.get("position", "random"), window=d.get("window", 32), seed=d.get("seed", 0),
                           origin=d.get("origin"))
    except (ValueError, TypeError, UserError) as exc:
        raise UserError(f"{p}: {exc}") from exc
    if trig.target < 0:  # text attacks have no all-to-all form: its success rate would read 0
        raise UserError(f"{p}: target {trig.target}: a text trigger targets one class (an index from 0)")
    if num_classes is not None and trig.target >= num_classes:
        raise UserError(f"{p}: target {trig.target} is not a class of the data ({num_classes} classes)")
    return trig


def poison_text(corpus, trigger: TextTrigger, *, rate: float, seed: int = 0):
    """Dirty-label poisoning: insert the trigger into `rate` of the non-target rows and relabel them.

    Returns (poisoned corpus, positions of the poisoned rows). `corpus` is a TextCorpus.
    """
    if not 0 < rate < 1:
        raise UserError(f"poison rate must lie in (0, 1), got {rate}")
    if not 0 <= trigger.target < corpus.num_classes:
        raise UserError(f"target {trigger.target} is not a class of the data ({corpus.num_classes} classes)")
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(corpus.y.numpy() != trigger.target)
    n = int(round(rate * len(corpus)))
    if not 1 <= n <= len(eligible):
        raise UserError(f"cannot poison {n} of {len(eligible)} rows outside the target class")
    chosen = np.sort(rng.choice(eligible, size=n, replace=False))
    texts = list(corpus.texts)
    for i, t in zip(chosen, trigger.apply_texts([texts[i] for i in chosen], seed=seed + 1)):
        texts[i] = t
    y = corpus.y.clone()
    y[torch.as_tensor(chosen)] = trigger.target
    return corpus.replace(texts=texts, y=y), chosen


def text_attack_success_rate(model, tokenizer, corpus, trigger: TextTrigger, *, seed: int = 0) -> tuple[float, int]:
    """(share of triggered non-target texts sent to the target, number measured)."""
    from poisonguard.metrics import predict

    keep = np.flatnonzero(corpus.y.numpy() != trigger.target)
    if len(keep) == 0:
        raise UserError("no texts outside the target class to measure the attack on")
    texts = trigger.apply_texts([corpus.texts[i] for i in keep], seed=seed)
    pred = predict(model, tokenizer.encode(texts))
    return float((pred == trigger.target).float().mean()), len(keep)
