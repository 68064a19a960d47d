"""Tables: `.csv` and `.parquet` files of numeric and categorical columns and one label column.

Every table is hostile: the file size, the cell count, the column count, each categorical
column's distinct values (its one-hot width) and the encoded width are checked against
`limits` before anything large is built, and every problem is one `UserError` line.

Encoding (recorded in `TableInfo.columns`): a column whose every cell parses as a number is
one numeric feature in its raw units; any other column is categorical and becomes one 0/1
feature per distinct value, in sorted order, unless it has too many distinct values to be a
category (an identifier or free text), which is refused. F counts the features after
one-hot encoding. A `metadata.json` beside the table may give `classes` (the label values
in class order; default: sorted, numerically when every label is a number) and
`categorical` (numeric-coded columns to one-hot encode, e.g. occupation codes).
Missing cells (empty, NA, NaN, null) are refused: poisonguard does not guess values.

The split is seeded and stratified (80/20, `stratified_split`); the feature ranges are those
observed on the training rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import torch

from poisonguard import limits
from poisonguard.data.dataset import UNLABELLED, ColumnCode, ImageData, Splits, TableInfo, label_order, stratified_split
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".parquet")
MISSING = frozenset({"", "na", "nan", "null", "none", "n/a"})
TEST_FRACTION = 0.2
_FIELD_LIMIT = 1 << 20  # one cell of more than 1 MiB is not a feature


def is_table(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and columns (as lists of strings) of a CSV, checked against the limits while read."""
    limits.check("max_bytes", path.stat().st_size, f"{path}: the file size")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    sample = text[:4096]  # csv.Sniffer is quadratic in its sample: 64 KiB of `,"` took 25 s
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter if sample.strip() else ","
    except csv.Error:
        delimiter = ","
    old = csv.field_size_limit(_FIELD_LIMIT)
    try:
        # Only the delimiter is guessed; quoting is the standard's (RFC 4180, as pandas reads it).
        # The sniffer's whole dialect turned doubled quotes off when the sample had none, and took
        # the apostrophe of 's-Hertogenbosch for a quote character.
        # skipinitialspace: `1, "Paris, FR"` (a space after each comma) keeps its quoted field whole
        reader = csv.reader(io.StringIO(text, newline=""), csv.excel, delimiter=delimiter, skipinitialspace=True)
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}: the table is empty (no header row)")
        header = [h.strip().strip("'\"") for h in header]
        limits.check("max_columns", len(header), f"{path}: the column count")
        columns: list[list[str]] = [[] for _ in header]
        cells_cap = limits.get("max_table_cells")
        n = 0
        for line, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(header):
                raise UserError(f"{path}: row {line} has {len(row)} fields but the header has {len(header)}")
            n += 1
            if n * len(header) > cells_cap:
                limits.check("max_table_cells", n * len(header), f"{path}: the cell count (rows x columns) so far")
            for col, cell in zip(columns, row):
                col.append(cell.strip())
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV table: {exc}") from exc
    finally:
        csv.field_size_limit(old)
    return header, columns


def _read_parquet(path: Path) -> tuple[list[str], list[list], set[str]]:
    """Header, columns and the columns the file declares categorical (`_declared_categorical`)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError("reading .parquet needs pyarrow: pip install 'poisonguard[tabular]' (or give a .csv)") from exc
    limits.check("max_bytes", path.stat().st_size, f"{path}: the file size")
    try:
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata  # row and column counts, before any data is read
        limits.check("max_columns", meta.num_columns, f"{path}: the column count")
        limits.check("max_table_cells", meta.num_rows * meta.num_columns, f"{path}: the cell count (rows x columns)")
        names = _flat_columns(path, parquet.schema_arrow)
        declared = _declared_categorical(parquet.schema_arrow)
        columns: list[list] = [[] for _ in names]
        decoded = 0
        # in small batches, each checked before it becomes Python objects: Parquet compresses
        # a repeated 1 MiB string to one dictionary entry (38 KB of file asked for 4.8 GB)
        for batch in parquet.iter_batches(batch_size=256):
            for name, column, values in zip(names, batch.columns, columns):
                _check_cell_lengths(path, name, column)
                decoded += _decoded_bytes(column)
                limits.check("max_bytes", decoded, f"{path}: the decoded table's size in bytes (so far)")
                values.extend(column.to_pylist())
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise UserError(f"{path}: not a readable Parquet table: {type(exc).__name__}: {str(exc)[:200]}") from exc
    # pandas stores a filtered frame's row index as a column of its own; it is no feature
    index = [i for i, name in enumerate(names) if re.fullmatch(r"__index_level_\d+__", name)]
    if index:
        log.warning("%s: left out pandas' row index column(s) %s", path, ", ".join(names[i] for i in index))
    keep = [i for i in range(len(names)) if i not in index]
    return [names[i] for i in keep], [columns[i] for i in keep], declared


def _flat_columns(path: Path, schema) -> list[str]:
    """The column names, once each, of cells that are single values (no lists, structs or maps)."""
    import pyarrow.types as pa_types

    names = list(schema.names)
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise UserError(f"{path}: column name {repeated!r} appears more than once")
    for field in schema:
        kind = field.type.value_type if pa_types.is_dictionary(field.type) else field.type
        if pa_types.is_nested(kind):
            raise UserError(f"{path}: column {field.name!r} holds {kind} values; a table cell must be one number "
                            "or one category")
    return names


def _declared_categorical(schema) -> set[str]:
    """Columns a Parquet schema declares categorical (pandas' Categorical, recorded in the file's
    pandas metadata; Arrow's dictionary type): categorical whatever their values, as a
    `categorical` entry in metadata.json makes them. A Categorical of integer codes read as one
    number would order categories that have no order."""
    import pyarrow.types as pa_types

    found = {f.name for f in schema if pa_types.is_dictionary(f.type)}
    pandas = (schema.metadata or {}).get(b"pandas", b"")
    if 0 < len(pandas) <= 1 << 20:  # the footer's own JSON, from a hostile file: bounded, checked
        try:
            columns = json.loads(pandas).get("columns", [])
        except (ValueError, AttributeError, RecursionError):  # not the JSON object pandas writes
            return found
        if isinstance(columns, list):
            found |= {c["name"] for c in columns if isinstance(c, dict) and c.get("pandas_type") == "categorical"
                      and isinstance(c.get("name"), str)}
    return found


def _holds_bytes(kind) -> bool:
    """A Parquet value type stored as variable-length bytes (text or binary)."""
    import pyarrow.types as pa_types

    return any(test(kind) for test in (pa_types.is_string, pa_types.is_large_string, pa_types.is_binary,
                                       pa_types.is_large_binary))


def _decoded_bytes(column) -> int:
    """The column's size once every cell is its own value (a dictionary's entry once per row)."""
    import pyarrow.compute as pc
    import pyarrow.types as pa_types

    if not pa_types.is_dictionary(column.type) or not _holds_bytes(column.dictionary.type):
        return column.nbytes
    values = column.dictionary
    per_row = pc.take(pc.binary_length(values), column.indices)
    return int(pc.sum(per_row).as_py() or 0) + column.indices.nbytes


def _check_cell_lengths(path: Path, name: str, column) -> None:
    """No text cell over 1 MiB, as for a CSV (a dictionary's entries are checked once each)."""
    import pyarrow.compute as pc
    import pyarrow.types as pa_types

    values = column.dictionary if pa_types.is_dictionary(column.type) else column
    if not _holds_bytes(values.type):
        return
    longest = pc.max(pc.binary_length(values)).as_py()
    if longest is not None and longest > _FIELD_LIMIT:
        raise UserError(f"{path}: column {name!r} holds a cell of {longest:,} bytes; a table cell of more than "
                        f"{_FIELD_LIMIT:,} bytes is no feature")


def _metadata(path: Path) -> dict:
    meta = path.parent / "metadata.json"
    if not meta.is_file():
        return {}
    if meta.stat().st_size > 1 << 20:
        raise UserError(f"{meta}: over 1 MiB, too large for a metadata file")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{meta}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{meta}: expected a JSON object")
    for key in ("classes", "categorical"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(v, (str, int)) for v in data[key])):
            raise UserError(f"{meta}: '{key}' must be a list of names")
    return data


BOOLEANS = {"true": 1.0, "false": 0.0}  # a CSV's True/False is a parquet bool: one numeric 0/1 feature


def _as_number(cell) -> float | None:
    """The cell as a finite number, else None (non-finite numbers are refused by `_check_finite`)."""
    if isinstance(cell, bool):
        return float(cell)
    if isinstance(cell, str) and cell.strip().lower() in BOOLEANS:
        return BOOLEANS[cell.strip().lower()]
    if isinstance(cell, (int, float)):
        return float(cell) if math.isfinite(cell) else None
    if isinstance(cell, str) and "_" in cell:  # Python reads "-0_123" as -123; no table means that
        return None
    try:
        v = float(cell)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _check_finite(path: Path, name: str, values: list) -> None:
    """Refuse inf and -inf in a column: no feature value can hold them, and read as text they
    would make a numeric column categorical without a word."""
    for i, cell in enumerate(values):
        try:
            value = float(cell) if isinstance(cell, (str, int, float)) and not isinstance(cell, bool) else 0.0
        except (TypeError, ValueError):
            continue
        if math.isinf(value):
            raise UserError(f"{path}: column {name!r} holds {cell!r} in data row {i + 1}; features must be finite")


def _is_missing(cell) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or (
        isinstance(cell, str) and cell.strip().lower() in MISSING)


def _check_present(path: Path, name: str, values: list) -> None:
    for i, cell in enumerate(values):
        if _is_missing(cell):
            raise UserError(f"{path}: column {name!r} has a missing value in data row {i + 1}; "
                            "fill or drop missing values first")


def _label_names(values: list) -> list[str]:
    """Each label as its class name. Where every label is a number, equal numbers are one class
    named in their shortest form ("1", "1.0" and a parquet 1.0 are class "1"; 0.5 is "0.5"):
    a CSV that writes some labels as 1.0 and others as 1 has two classes, not four."""
    text = [str(v).strip() for v in values]
    # True/False labels stay names (a feature's True/False is a number; a class is not)
    numbers = [None if isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in BOOLEANS) else _as_number(v)
               for v in values]
    if any(n is None for n in numbers):
        return text
    return [_exact_integer(v) or repr(n) for v, n in zip(values, numbers)]


def _exact_integer(value) -> str | None:
    """A whole-number label in its shortest form, exactly: through a float, labels
    9007199254740993 and 9007199254740992 were one class. None for a fraction."""
    try:
        exact = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return str(int(exact)) if exact.is_finite() and exact == exact.to_integral_value() else None


def _labels(path: Path, name: str, values: list, classes_meta) -> tuple[np.ndarray, tuple[str, ...]]:
    _check_present(path, name, values)
    text = _label_names(values)
    if classes_meta is not None:
        classes = tuple(_label_names([str(c) for c in classes_meta]))
        if len(set(classes)) != len(classes):
            raise UserError(f"{path.parent / 'metadata.json'}: 'classes' names a class twice")
    else:
        distinct = set(text)
        limits.check("max_classes", len(distinct), f"{path}: the number of distinct labels")
        classes = label_order(distinct)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({t for t in text if t not in index})
    if unknown:
        raise UserError(f"{path}: label {unknown[0]!r} is not one of metadata.json's classes")
    y = np.fromiter((index[t] for t in text), dtype=np.int64, count=len(text))
    if len(np.unique(y)) < 2:
        raise UserError(f"{path}: the label column {name!r} has only one class ({classes[int(y[0])]!r}); "
                        "a classifier needs at least two")
    return y, classes


def _encode(path: Path, header: list[str], columns: list[list], label: str, categorical: set[str]):
    """Features (N, F) float32 and the ColumnCodes, in the table's column order."""
    n = len(columns[0]) if columns else 0
    codes, blocks, start = [], [], 0
    numeric, recorded_categorical = _recorded_kinds(header)
    categorical = set(categorical) | recorded_categorical
    for name, values in zip(header, columns):
        if name == label:
            continue
        _check_present(path, name, values)
        _check_finite(path, name, values)
        numbers = [_as_number(v) for v in values]
        if name not in categorical:
            _check_numeric(path, name, values, numbers, recorded=name in numeric)
        if name not in categorical and all(v is not None for v in numbers):
            _check_width(path, n, start + 1)
            column = np.asarray(numbers, dtype=np.float64).astype(np.float32)
            if not np.isfinite(column).all():
                raise UserError(f"{path}: a value of column {name!r} overflows float32")
            blocks.append(column[:, None])
            codes.append(ColumnCode(name, "numeric", start))
            start += 1
            continue
        text = [str(v).strip() for v in values]
        cats = sorted(set(text))
        cap = limits.get("max_categories")
        if len(cats) > cap or (len(cats) > max(2, n // 2) and name not in categorical):
            bad = next((v for v, num in zip(text, numbers) if num is None), text[0])
            raise UserError(f"{path}: column {name!r} is neither numeric (e.g. {bad[:40]!r}) nor categorical "
                            f"({len(cats):,} distinct values in {n:,} rows); drop it, list it under 'categorical' "
                            f"in metadata.json, or raise --limit max_categories")
        if name not in categorical:
            _warn_numbers_read_as_categories(path, name, cats)
        _check_width(path, n, start + len(cats))  # before the one-hot block is allocated
        index = {c: i for i, c in enumerate(cats)}
        onehot = np.zeros((n, len(cats)), dtype=np.float32)
        onehot[np.arange(n), [index[t] for t in text]] = 1.0
        blocks.append(onehot)
        codes.append(ColumnCode(name, "categorical", start, tuple(cats)))
        start += len(cats)
    if not blocks:
        raise UserError(f"{path}: the table has no feature columns besides the label {label!r}")
    return np.concatenate(blocks, axis=1), tuple(codes)


# "1,000", "1.000.000", "0,5", "12 500": numbers written with separators, which float() cannot read
_SEPARATED_NUMBER = re.compile(r"[+-]?(\d{1,3}([,.' ]\d{3})+([.,]\d+)?|\d+,\d+)")


def _warn_numbers_read_as_categories(path: Path, name: str, categories: list[str]) -> None:
    """A column with few distinct values that are numbers in a form float() cannot read (thousands
    separators, decimal commas), or numbers but for one marker such as "?", becomes categorical:
    its values then have no order, which is rarely what the file meant. Say so once."""
    separated = [c for c in categories if _SEPARATED_NUMBER.fullmatch(c)]
    words = [c for c in categories if c not in separated and _as_number(c) is None]
    if separated and not words:
        why = f"numbers written with separators (e.g. {separated[0]!r})"
    elif len(words) == 1 and len(categories) > 2:
        why = f"numbers but for {words[0]!r} (a missing-value marker?)"
    else:
        return
    log.warning("%s: column %r is read as %d unordered categories, though its values are %s; write plain numbers "
                "(and fill missing values) if it is a number, or list it under 'categorical' in metadata.json",
                path, name, len(categories), why)


def _check_width(path: Path, rows: int, features: int) -> None:
    """The encoded table's size so far, checked before the next block is allocated (a 3 MB CSV
    of one column with 1,000 categories over 300,000 rows asked for 2.4 GB)."""
    limits.check("max_columns", features, f"{path}: the feature count after one-hot encoding")
    limits.check("max_dataset_values", rows * features, f"{path}: the encoded table's value count (rows x features)")


def _recorded_kinds(header: list[str]) -> tuple[set[str], set[str]]:
    """(numeric, categorical) columns of this header as the run's model records them.

    A column's kind is read from the file's cells, which a few rows at run time cannot show:
    three rows of three cities look like no category, and sizes 1/2/3 without the XL of the
    training table look like a number. Where the model names its encoded columns
    (`options.get("model_features")`: "age" numeric, "city=Nice" one of city's categories),
    those decide.
    """
    from poisonguard.data import options

    features = options.get("model_features") or ()
    columns = set(header)
    numeric = {f for f in features if f in columns}
    categorical = {f.split("=", 1)[0] for f in features if f not in columns and "=" in f} & columns
    return numeric, categorical - numeric


def _check_numeric(path: Path, name: str, values: list, numbers: list, *, recorded: bool) -> None:
    """Refuse a column that must be numeric (the model records it so) or plainly is (nine in ten
    cells are numbers of more than ten values) but holds a word: read as a category, a stray
    "unknown" among ages would make one feature per age without a word."""
    bad = [i for i, v in enumerate(numbers) if v is None]
    if not bad:
        return
    known = [v for v in numbers if v is not None]
    if recorded or (len(known) >= 0.9 * len(numbers) and len(set(known)) > 10):
        why = "the model reads it as a number" if recorded else "its other cells are numbers"
        raise UserError(f"{path}: column {name!r} holds {str(values[bad[0]])[:40]!r} in data row {bad[0] + 1}, but "
                        f"{why}; fix the cell{'' if recorded else ', or list the column under categorical in metadata.json'}")


def read_table(path: str | Path, *, label_column: str | None, labels_optional: bool = False) -> ImageData:
    """Every row of the table, in file order, as tabular ImageData (ranges observed on all rows).

    labels_optional: rows a model is to judge at run time, whose labels nobody knows yet (or
    whose label column is partly empty, or holds one class): read with every label UNLABELLED
    and no class names, the label column, if any, left out.
    """
    path = Path(path)
    if not label_column and not labels_optional:
        raise UserError(f"{path}: a table needs --label-column NAME (the column holding the labels)")
    header, columns, declared = _read_parquet(path) if path.suffix.lower() == ".parquet" else (*_read_csv(path), set())
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise UserError(f"{path}: the column name {dup!r} appears twice")
    if "" in header:
        raise UserError(f"{path}: column {header.index('') + 1} has no name (pandas writes its row index so: "
                        "to_csv(index=False) leaves it out); name the column or drop it")
    if labels_optional:
        if label_column in header:  # run-time rows: a label column, if any, is neither a feature nor used
            i = header.index(label_column)
            header, columns = header[:i] + header[i + 1:], columns[:i] + columns[i + 1:]
        return _unlabelled(path, header, columns, declared)
    if label_column not in header:
        shown = ", ".join(header[:12]) + (" ..." if len(header) > 12 else "")
        raise UserError(f"{path}: no column {label_column!r} (columns: {shown})")
    if not columns or not columns[0]:
        raise UserError(f"{path}: the table has no data rows")
    meta = _metadata(path)
    categorical = {str(c) for c in meta.get("categorical", [])}
    unknown = sorted(categorical - set(header))
    if unknown:
        raise UserError(f"{path.parent / 'metadata.json'}: 'categorical' names no such column {unknown[0]!r}")
    categorical |= declared
    y, classes = _labels(path, label_column, columns[header.index(label_column)], meta.get("classes"))
    x, codes = _encode(path, header, columns, label_column, categorical)
    limits.check("max_dataset_values", x.size, f"{path}: the value count (rows x features)")
    xt = torch.from_numpy(x)
    info = TableInfo.observed(xt, _feature_names(codes, path), columns=codes, label_column=label_column, source=str(path))
    return ImageData(xt, torch.from_numpy(y), classes, "tabular", info)


def _unlabelled(path: Path, header: list[str], columns: list[list], declared: set[str]) -> ImageData:
    if not columns or not columns[0]:
        raise UserError(f"{path}: the table has no data rows")
    categorical = {str(c) for c in _metadata(path).get("categorical", [])} | declared
    x, codes = _encode(path, header, columns, None, categorical & set(header))
    limits.check("max_dataset_values", x.size, f"{path}: the value count (rows x features)")
    xt = torch.from_numpy(x)
    info = TableInfo.observed(xt, _feature_names(codes, path), columns=codes, label_column="", source=str(path))
    return ImageData(xt, torch.full((len(xt),), UNLABELLED, dtype=torch.long), (), "tabular", info)


def _feature_names(codes: tuple[ColumnCode, ...], path: Path) -> tuple[str, ...]:
    """Each encoded column's name: a numeric column's own, `column=category` for one-hot ones.
    Names are how a second file is matched to a model's columns (`encode_as`), so they must be
    unique: a numeric column named "color=red" beside a category "red" of "color" is refused."""
    names: list[str] = []
    for c in codes:
        names += [c.name] if c.kind == "numeric" else [f"{c.name}={v}" for v in c.categories]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{path}: two encoded columns are both named {twice!r} (a column's own name and a "
                        "column=category name, or two such names); rename the column")
    return tuple(names)


def load_table(path: str | Path, *, label_column: str | None, seed: int = 0) -> Splits:
    """The table split 80/20 (seeded, stratified); feature ranges observed on the training rows."""
    path = Path(path)
    rows = read_table(path, label_column=label_column)
    tr, te = split_indices(rows, seed)
    if len(tr) == 0 or len(te) == 0:
        raise UserError(f"{path}: too few rows ({len(rows)}) for a train and a test part")
    info = rows.meta
    train_info = TableInfo.observed(rows.x[tr], info.feature_names, columns=info.columns,
                                    label_column=info.label_column, source=info.source)
    train = ImageData(rows.x[tr], rows.y[tr], rows.classes, "tabular", train_info)
    test = ImageData(rows.x[te], rows.y[te], rows.classes, "tabular", train_info)
    return Splits(path.stem, train, test)


def encode_as(data: ImageData, features) -> ImageData:
    """`data` re-encoded to a model's columns `features` (names as `_feature_names` gives them).

    A table's one-hot columns follow the categories its own file holds, so a second file from the
    same source that lacks a rare category encodes fewer columns, or the same number in another
    order. Each of the model's columns is taken by name; a category this file lacks is all zeros,
    which is what it means. A column or category the model never saw has no place in its input
    and is refused in one line. Ranges follow the columns (a missing category's is [0, 0]).
    """
    info = data.meta
    features = tuple(features)
    if tuple(info.feature_names) == features:
        return data
    index = {name: i for i, name in enumerate(info.feature_names)}
    wanted = set(features)
    new = [name for name in info.feature_names if name not in wanted]
    if new:
        raise UserError(f"the table has {'a column or category' if len(new) == 1 else f'{len(new)} columns or categories'} "
                        f"the model was not trained on ({', '.join(repr(n) for n in new[:3])}"
                        f"{' ...' if len(new) > 3 else ''}); give a table of the training table's columns and categories")
    categorical = {c.name for c in info.columns if c.kind == "categorical"}
    absent = [name for name in features if name not in index]
    lacking = [name for name in absent if name.partition("=")[0] not in categorical]
    if lacking:
        raise UserError(f"the table lacks the column {lacking[0]!r} the model was trained on"
                        f"{f' (and {len(lacking) - 1} more)' if len(lacking) > 1 else ''}")
    x = torch.zeros((len(data), len(features)), dtype=data.x.dtype)
    low, high = torch.zeros(len(features)), torch.zeros(len(features))
    for j, name in enumerate(features):
        if name in index:
            i = index[name]
            x[:, j], low[j], high[j] = data.x[:, i], info.low[i], info.high[i]
    aligned = TableInfo(features, low, high, columns=_codes(features, info.columns),
                        label_column=info.label_column, source=info.source)
    return ImageData(x, data.y, data.classes, data.kind, aligned)


def _codes(features: tuple[str, ...], columns: tuple[ColumnCode, ...]) -> tuple[ColumnCode, ...]:
    """The ColumnCodes of `features`, the data's columns with the model's categories."""
    codes = []
    for c in columns:
        if c.kind == "numeric":
            codes.append(ColumnCode(c.name, "numeric", features.index(c.name)))
            continue
        prefix = f"{c.name}="
        positions = [j for j, name in enumerate(features) if name.startswith(prefix)]
        start = positions[0]
        if positions != list(range(start, start + len(positions))):
            raise UserError(f"the model's columns for {c.name!r} are not side by side; its record of columns is damaged")
        codes.append(ColumnCode(c.name, "categorical", start, tuple(features[j][len(prefix):] for j in positions)))
    return tuple(sorted(codes, key=lambda c: c.start))


def split_indices(rows: ImageData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return stratified_split(rows.y.numpy(), TEST_FRACTION, seed)


def write_table_rows(source: str | Path, keep: np.ndarray, out: str | Path, *, suffix: str | None = None) -> Path:
    """Write the source table's data rows at positions `keep` (0-based, file order) to `out` in the
    source's format (`suffix`, default the source's: .csv or .parquet), every cell as the source had
    it (CSV cells without surrounding spaces). The caller makes the write atomic (data.export)."""
    source, out = Path(source), Path(out)
    keep = np.asarray(keep, dtype=np.int64)
    if (suffix or source.suffix.lower()) == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(source).take(keep), out)
        return out
    header, columns = _read_csv(source)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in keep.tolist():
            writer.writerow([col[i] for col in columns])
    return out
