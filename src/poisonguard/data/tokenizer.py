"""A small word-level tokenizer built from the training texts, saved as JSON (never pickle).

Words are lower-cased runs of letters and digits (with an inner apostrophe: "don't"). Id 0 is
padding, id 1 stands for every word outside the vocabulary. The vocabulary is the training
data's most frequent words (ties by the word itself, so the same corpus gives the same ids).
A user's own tokenizer comes as the same JSON (`--tokenizer FILE`):

    {"format": "poisonguard-tokenizer", "version": 1, "vocab": ["<pad>", "<unk>", "the", ...],
     "max_len": 64, "lowercase": true}
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from poisonguard import limits
from poisonguard.errors import UserError
from poisonguard.jsonfile import read_tagged_json

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
FORMAT = "poisonguard-tokenizer"
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

# Longest input a tokenizer file may ask for: every text is padded to it, so a 300-byte file
# saying 100,000 made evaluating 80 texts take 8 GB. BERT-sized models read 512.
MAX_LEN = 4096


def words(text: str, *, lowercase: bool = True) -> list[str]:
    """The words of `text` as the tokenizer sees them."""
    return _WORD.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class Tokenizer:
    """Word -> id over `vocab` (index = id); inputs are (N, max_len) int64, padded with 0 at the end."""

    vocab: tuple[str, ...]
    max_len: int = 64
    lowercase: bool = True

    def __post_init__(self) -> None:
        if tuple(self.vocab[:2]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {tuple(self.vocab[:2])}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("the vocabulary repeats a word")
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {self.max_len!r}")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocab)})

    @classmethod
    def fit(cls, texts: Iterable[str], *, max_vocab: int = 20000, min_count: int = 1, max_len: int = 64,
            lowercase: bool = True) -> "Tokenizer":
        if max_vocab < 3:
            raise ValueError(f"max_vocab must be at least 3, got {max_vocab}")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(w for t in texts for w in words(t, lowercase=lowercase))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(ranked[: max_vocab - len(SPECIALS)]), max_len=max_len, lowercase=lowercase)

    def __len__(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        return self._ids.get(word.lower() if self.lowercase else word, UNK)  # type: ignore[attr-defined]

    def ids(self, text: str) -> list[int]:
        return [self.token_id(w) for w in words(text, lowercase=self.lowercase)]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, max_len) int64 ids, truncated at max_len, padded with 0; an empty text is one <unk>."""
        out = torch.zeros((len(texts), self.max_len), dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.ids(t)[: self.max_len] or [UNK]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if 0 < i < len(self.vocab))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "vocab": list(self.vocab), "max_len": self.max_len,
                "lowercase": self.lowercase}

    def save(self, path: str | Path) -> None:
        from poisonguard.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer JSON, checking everything in it (the file is hostile)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}")
    data = read_tagged_json(path, fmt=FORMAT, what="tokenizer")
    vocab, max_len, lower = data.get("vocab"), data.get("max_len", 64), data.get("lowercase", True)
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        raise UserError(f"{path}: \"vocab\" must be a list of strings")
    limits.check("max_vocab", len(vocab), f"{path}: the vocabulary's size")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or not 1 <= max_len <= MAX_LEN:
        raise UserError(f"{path}: \"max_len\" must be an integer in [1, {MAX_LEN}], got {max_len!r}")
    if not isinstance(lower, bool):
        raise UserError(f"{path}: \"lowercase\" must be true or false")
    try:
        return Tokenizer(tuple(vocab), max_len=max_len, lowercase=lower)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
