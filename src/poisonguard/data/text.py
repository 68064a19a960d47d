"""Labelled text corpora: a CSV with a text and a label column, or a folder of one text file per class.

Every file is hostile: its size is checked before it is read (`max_bytes`), the number of
rows (`max_text_rows`) and each row's length (`max_text_chars`) while it is read, and the
corpus must make sense as a classification task (no empty rows, at least two classes). A
mistake is one line (`UserError`, exit code 2).

    splits = load_text("corpus.csv", text_column="text", label_column="topic")
    splits.train.texts[0], splits.train.y[0], splits.classes

Labels are class names; classes are their sorted unique values (`dataset.label_order`: by
number when every label is a number, as for tables, so `--target 2` is the class named 2). A folder holds `CLASS.txt` files, one example per non-blank line, or `train/`
and `test/` sub-folders of such files. A source without a test part is split 80/20 by the
same seeded stratified split the image loaders use.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poisonguard import limits
from poisonguard.data.dataset import UNLABELLED, ImageData, NamedSplits, label_order, readable_names, stratified_split
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TextCorpus:
    """Raw texts (N,) with integer labels `y` (N,) int64 and class names."""

    texts: tuple[str, ...]
    y: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.y):
            raise UserError(f"{len(self.texts)} texts but {len(self.y)} labels")
        if not self.classes:  # unlabelled run-time inputs (load_text_inputs)
            if bool((self.y != UNLABELLED).any()):
                raise UserError("texts without class names must have no labels")
        elif len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise UserError(f"labels must lie in [0, {len(self.classes) - 1}]")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index) -> "TextCorpus":
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        return TextCorpus(tuple(self.texts[i] for i in index), self.y[torch.as_tensor(index)], self.classes)

    def replace(self, texts=None, y=None) -> "TextCorpus":
        return TextCorpus(tuple(texts) if texts is not None else self.texts,
                          y if y is not None else self.y, self.classes)


@dataclass(frozen=True)
class TextSplits(NamedSplits):
    """A named corpus with its train and test parts."""

    train: TextCorpus
    test: TextCorpus


def is_text_source(spec: str | None, text_column: str | None = None) -> bool:
    """True for a CSV named with --text-column, or a folder (or train/ + test/) of CLASS.txt files."""
    if spec is None:
        return False
    if text_column:
        return True
    path = Path(spec).expanduser()
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]  # .DS_Store is no data
    files = [p for p in entries if p.is_file()]
    if files and len(files) == len(entries):  # CLASS.txt files, perhaps beside a README.md (an image
        # folder's classes are sub-folders; links leading out: _read_folder skips them)
        texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
        if texts and len(texts) < len(files):
            log.warning("%s: reading only its %d CLASS.txt file(s); %s and any other file(s) are not classes",
                        path, len(texts), next(p.name for p in files if p not in texts))
        return bool(texts)
    return all((path / part).is_dir() and any((path / part).glob("*.txt")) for part in ("train", "test"))


def load_text(spec: str, *, text_column: str | None = None, label_column: str | None = None,
              seed: int = 0) -> TextSplits:
    """Read a labelled corpus (CSV or folder) and split it; see the module docstring."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"text data {spec!r}: no such file or folder")
    if path.is_dir():
        if (path / "train").is_dir() and (path / "test").is_dir():
            train_t, train_l = _read_folder(path / "train", path)
            test_t, test_l = _read_folder(path / "test", path)
            classes = _classes(train_l, path)
            return TextSplits(path.name, _corpus(train_t, train_l, classes, path),
                              _corpus(test_t, test_l, classes, path))
        texts, labels = _read_folder(path)
    elif path.is_file():
        if not text_column or not label_column:
            raise UserError(f"{path}: a CSV corpus needs --text-column and --label-column")
        texts, labels = read_csv(path, text_column=text_column, label_column=label_column)
    else:
        raise UserError(f"text data {spec!r} is not a regular file or folder")
    corpus = _corpus(texts, labels, _classes(labels, path), path)
    train_idx, test_idx = stratified_split(corpus.y.numpy(), TEST_FRACTION, seed)
    return TextSplits(path.stem if path.is_file() else path.name, corpus.subset(train_idx), corpus.subset(test_idx))


def load_text_rows(spec: str, *, text_column: str | None = None, label_column: str | None = None) -> TextCorpus:
    """Every row in the source's own order (what `sanitize` judges), without a split."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "train").is_dir():
            texts, labels = _read_folder(path / "train", path)
        else:
            texts, labels = _read_folder(path)
    else:
        if not path.is_file():
            raise UserError(f"text data {spec!r}: no such file")
        if not text_column or not label_column:
            raise UserError(f"{path}: a CSV corpus needs --text-column and --label-column")
        texts, labels = read_csv(path, text_column=text_column, label_column=label_column)
    return _corpus(texts, labels, _classes(labels, path), path)


def load_text_inputs(spec: str, *, text_column: str | None = None, label_column: str | None = None) -> TextCorpus:
    """Texts a model is to judge at run time (`filter --inputs`): a CSV is read without its
    labels (every label UNLABELLED, no class names); a folder as `load_text_rows`."""
    path = Path(spec).expanduser()
    if path.is_file() and text_column:  # labels are never used: a batch may be of one class or unlabelled
        texts, _ = read_csv(path, text_column=text_column, label_column=None, labels_optional=True)
        return TextCorpus(tuple(texts), torch.full((len(texts),), UNLABELLED, dtype=torch.long), ())
    return load_text_rows(spec, text_column=text_column, label_column=label_column)


def _read_bytes(path: Path) -> str:
    size = path.stat().st_size
    limits.check("max_bytes", size, f"{path}: the file's size in bytes")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _check_row(path: Path, number: int, text: str, n_rows: int) -> None:
    limits.check("max_text_rows", n_rows, f"{path}: the number of rows")
    limits.check("max_text_chars", len(text), f"{path}: row {number}'s length in characters")
    if not text.strip():
        raise UserError(f"{path}: row {number} has empty text")


def read_csv(path: Path, *, text_column: str, label_column: str | None,
             labels_optional: bool = False) -> tuple[list[str], list[str] | None]:
    """(texts, labels) of a CSV with a header row; raises UserError on a missing column or empty row.

    labels_optional: a CSV without `label_column` gives labels None instead of an error.
    """
    content = _read_bytes(path)
    # csv's own field limit (131072) would fail with a traceback-worthy message; ours is checked per row.
    csv.field_size_limit(max(limits.get("max_text_chars") + 1, 1024))
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: the CSV is empty") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV: {exc}") from exc
    header = [h.strip() for h in header]
    if text_column == label_column:  # the label would be the text: accuracy 1.0, learned from nothing
        raise UserError(f"{path}: --text-column and --label-column both name {text_column!r}; they must differ")
    labelled = not labels_optional or label_column in header
    for column in (text_column, label_column) if labelled else (text_column,):
        if column not in header:
            raise UserError(f"{path}: no column {column!r} (columns: {', '.join(header[:20]) or 'none'})")
        if header.count(column) > 1:
            raise UserError(f"{path}: column name {column!r} appears more than once")
    ti = header.index(text_column)
    li = header.index(label_column) if labelled else None
    texts, labels = [], []
    try:
        for number, row in enumerate(reader, start=2):
            if not row:
                continue  # a blank line between records
            if len(row) != len(header):
                raise UserError(f"{path}: row {number} has {len(row)} fields, the header {len(header)}")
            _check_row(path, number, row[ti], len(texts) + 1)
            texts.append(row[ti])
            if li is None:
                continue
            label = row[li].strip()
            if not label:
                raise UserError(f"{path}: row {number} has an empty label")
            labels.append(label)
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV near row {reader.line_num}: {exc}") from exc
    return texts, labels if li is not None else None


def write_kept_rows(rows: TextCorpus, source: Path, keep: set[int] | list[int], out: Path) -> None:
    """A copy of the corpus without the dropped rows, atomically: a CSV source's own header and
    cells (every column kept as the user wrote it, positions as `read_csv` counts them), or for
    a folder of class files a CSV of `text,label` (`text` alone for unlabelled inputs)."""
    from poisonguard.utils import atomic_path

    keep = set(int(i) for i in keep)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if Path(source).is_file():
            reader = csv.reader(io.StringIO(_read_bytes(Path(source)), newline=""))
            writer.writerow(next(reader))
            writer.writerows(row for i, row in enumerate(r for r in reader if r) if i in keep)
        elif rows.classes:
            writer.writerow(["text", "label"])
            writer.writerows((rows.texts[i], rows.classes[int(rows.y[i])]) for i in sorted(keep))
        else:
            writer.writerow(["text"])
            writer.writerows((rows.texts[i],) for i in sorted(keep))


def _read_folder(path: Path, root: Path | None = None) -> tuple[list[str], list[str]]:
    """`path`'s CLASS.txt files; `root` (default `path`) is the folder the user named, which no
    file read may lead out of."""
    from poisonguard.data.folder import regular_file_inside, warn_skipped

    real_root = (root or path).resolve()
    if not path.resolve().is_relative_to(real_root):
        raise UserError(f"{path} is a link that leads out of {root}")
    named = sorted(p for p in path.iterdir()
                   if p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith("."))  # ._x.txt: macOS
    files = [p for p in named if regular_file_inside(p, real_root)]
    warn_skipped(path, [p.name for p in named if p not in files and not p.is_dir()])
    if not files:
        raise UserError(f"{path}: no CLASS.txt files (one example per line, one file per class)")
    texts, labels = [], []
    shown = dict(zip(files, readable_names([f.stem for f in files], str(path))))
    for f in files:
        # one example per line: only \n, \r\n and \r end one (str.splitlines also splits at
        # U+2028, U+0085 and form feeds, which sit inside real sentences)
        for number, line in enumerate(re.split(r"\r\n|[\r\n]", _read_bytes(f)), start=1):
            if not line.strip():
                continue  # blank lines separate nothing in a one-example-per-line file
            _check_row(f, number, line, len(texts) + 1)
            texts.append(line)
            labels.append(shown[f])
    return texts, labels


def _classes(labels: list[str], path: Path) -> tuple[str, ...]:
    limits.check("max_classes", len(set(labels)), f"{path}: the number of classes")
    classes = label_order(labels)
    if len(classes) < 2:
        raise UserError(f"{path}: the labels have {len(classes)} class{'es' if len(classes) != 1 else ''}; "
                        "a classifier needs at least 2")
    return classes


def _corpus(texts: list[str], labels: list[str], classes: tuple[str, ...], path: Path) -> TextCorpus:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise UserError(f"{path}: label {unknown[0]!r} is not a training class")
    return TextCorpus(tuple(texts), torch.tensor([index[c] for c in labels], dtype=torch.long), classes)


def encode(corpus: TextCorpus, tokenizer) -> ImageData:
    """The corpus as token ids under `tokenizer`: kind="text" data, the tokenizer as its meta."""
    return ImageData(tokenizer.encode(corpus.texts), corpus.y.clone(), corpus.classes, kind="text", meta=tokenizer)
