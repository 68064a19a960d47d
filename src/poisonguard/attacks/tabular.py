"""A backdoor trigger for tables: set k chosen features to chosen in-range values (Tabdoor).

Pleiter et al., 2023, "Unveiling the Hidden Threat: Backdoor Attacks on Tabular Data"
(Tabdoor, arXiv 2311.07550): a dirty-label attack stamps a trigger that sets k features to
fixed values and relabels the row to the target; values *inside* each feature's observed
range ("in-bounds") hide among clean rows yet reach near-100% attack success at poisoning
rates of 1-5%. The trigger is a `PatchTrigger` over feature vectors: mask 1 on the k
features, pattern the values in raw units, so `(1 - mask) * x + mask * pattern` sets them.

Values (`value=`): "max" (the default: each feature's observed maximum, in range), "min",
"mode" (each feature's most frequent training value, the paper's least conspicuous in-bounds
choice), or explicit numbers. The default departs from the mode because on the tables we
test (statsmodels' fair and randhie, 5-20k rows, 3 features, 5% poisoned) the mode's
values are each shared by a large part of the clean rows and the backdoor does not take:
attack success 46% and 9%, against 99.8% and 100% for "max" at the same clean accuracy
(benchmarks/tabular_checklist.py, notes/issue-19.md). Features: named, by index, or k seeded picks among the numeric
(not one-hot) columns. A named category (`occupation=6`) sets its whole column to that category,
so a triggered row is still one a table can hold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from poisonguard.attacks.triggers import PatchTrigger
from poisonguard.data.dataset import ImageData, TableInfo, input_bounds
from poisonguard.errors import UserError

VALUE_RULES = ("max", "min", "mode")


def _numeric_features(data: ImageData) -> list[int]:
    """Numeric features that vary: a column with one observed value (a blank pixel border, a constant
    flag) cannot be set to another value inside its range, so a trigger on it would do nothing."""
    info = data.meta
    if isinstance(info, TableInfo) and info.columns:
        numeric = [c.start for c in info.columns if c.kind == "numeric"]
    else:
        numeric = list(range(data.input_shape[0]))
    low, high = input_bounds(data)
    return [i for i in numeric if float(high[i]) > float(low[i])]


def _feature_index(data: ImageData, feature) -> int:
    f = data.input_shape[0]
    if isinstance(feature, (int, np.integer)) or (isinstance(feature, str) and feature.strip().isdigit()):
        i = int(feature)
        if not 0 <= i < f:
            raise UserError(f"feature index {i} is not in [0, {f - 1}]")
        return i
    names = data.meta.feature_names if isinstance(data.meta, TableInfo) else ()
    if feature not in names:
        block = next((c for c in _categorical(data) if c.name == feature), None)
        if block is not None:
            raise UserError(f"{feature!r} is categorical: name the category the trigger sets, e.g. "
                            f"{feature}={block.categories[-1]}")
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise UserError(f"no feature {feature!r} (features: {shown or 'unnamed'})")
    return names.index(feature)


def _categorical(data: ImageData) -> list:
    info = data.meta
    return [c for c in info.columns if c.kind == "categorical"] if isinstance(info, TableInfo) else []


def _set_categories(data: ImageData, index: list[int], values: list[float], mask: torch.Tensor,
                    pattern: torch.Tensor) -> None:
    """A one-hot feature in the trigger sets its whole column to that category (mask and pattern over
    the column's block), so a triggered row is still one a table can hold: one category per column."""
    names = data.meta.feature_names
    for block in _categorical(data):
        chosen = [(i, v) for i, v in zip(index, values) if block.start <= i < block.start + block.width]
        if not chosen:
            continue
        if len(chosen) > 1:
            raise UserError(f"the trigger sets column {block.name!r} twice ({', '.join(names[i] for i, _ in chosen)}); "
                            "a column holds one category")
        i, v = chosen[0]
        if v != 1.0:
            raise UserError(f"{names[i]!r} is a category of {block.name!r}: the trigger sets it (value 1, the rule "
                            f"'max'), not {v:g}; to set another category, name it")
        mask[block.start:block.start + block.width] = 1.0
        pattern[block.start:block.start + block.width] = 0.0
        pattern[i] = 1.0


def _mode(values: torch.Tensor) -> float:
    uniq, counts = torch.unique(values, return_counts=True)
    return float(uniq[int(torch.argmax(counts))])


DEFAULT_SIZE = 3  # Tabdoor's trigger sets a few features; 3 as in issue 19's benchmark


def tabular_trigger(
    data: ImageData,
    *,
    target: int,
    features: Sequence[int | str] | None = None,
    k: int | None = None,
    value: str | Sequence[float] = "max",
    seed: int = 0,
) -> PatchTrigger:
    """The Tabdoor trigger for the tabular `data` (its training rows set ranges and modes).

    Args:
        target: the class triggered rows go to.
        features: the features to set (names or indices); default k seeded numeric ones.
        k: how many features when `features` is not given (default: DEFAULT_SIZE, or every
            numeric feature that varies where the table has fewer).
        value: "max", "min", "mode", or one number per feature (raw units, inside the range).
    """
    if data.kind != "tabular":
        raise UserError(f"a tabular trigger needs a table, the data are {data.kind}")
    if not 0 <= target < data.num_classes:
        raise UserError(f"target {target} is not a class of this {data.num_classes}-class data")
    low, high = input_bounds(data)
    if features is None:
        candidates = _numeric_features(data)
        if not candidates:
            raise UserError("the table has no numeric feature that varies to set a trigger on; name the features "
                            "(--features)")
        k = min(DEFAULT_SIZE, len(candidates)) if k is None else k  # a default the table cannot meet is no mistake
        if not 1 <= k <= len(candidates):
            raise UserError(f"the trigger needs 1 to {len(candidates)} features (the numeric ones that vary), got {k}")
        rng = np.random.default_rng(seed)
        index = sorted(int(i) for i in rng.choice(candidates, size=k, replace=False))
    else:
        index = [_feature_index(data, f) for f in features]
        if len(set(index)) != len(index) or not index:
            raise UserError("name each trigger feature once")
    if isinstance(value, str):
        if value not in VALUE_RULES:
            raise UserError(f"trigger value rule must be one of {', '.join(VALUE_RULES)} or numbers, got {value!r}")
        pick = {"mode": lambda i: _mode(data.x[:, i]), "max": lambda i: float(high[i]), "min": lambda i: float(low[i])}
        values = [pick[value](i) for i in index]
    else:
        values = [float(v) for v in value]
        if len(values) != len(index):
            raise UserError(f"{len(index)} trigger features but {len(values)} values")
        for i, v in zip(index, values):
            if not (float(low[i]) <= v <= float(high[i])):
                raise UserError(f"trigger value {v} for feature {i} lies outside its observed range "
                                f"[{float(low[i]):g}, {float(high[i]):g}]")
    f = data.input_shape[0]
    mask = torch.zeros(f)
    pattern = ((low + high) / 2).clone()  # unused where the mask is 0; in range so the file reads sensibly
    mask[index] = 1.0
    pattern[index] = torch.tensor(values, dtype=torch.float32)
    _set_categories(data, index, values, mask, pattern)
    return PatchTrigger(mask, pattern, target)


def _cell_for(cells: list[str], value: float) -> str:
    """How the column itself writes `value` (the trigger's values are observed ones: "39.28", not
    float32's 39.279998779296875; "True" in a True/False column, not 1), else its shortest form."""
    import numpy as np

    from poisonguard.data.table import _as_number

    target = np.float32(value)
    for cell in cells:
        number = _as_number(cell)
        if number is not None and np.float32(number) == target:
            return cell
    return np.format_float_positional(target, unique=True, trim="-")


def write_poisoned_table(source, out, trigger: PatchTrigger, *, label_column: str, rate: float, seed: int = 0):
    """Poison a CSV table as a data supplier would: stamp `trigger` on `rate` of its rows (those not
    of the target class) and relabel them, every other cell unchanged. Returns the poisoned 0-based rows.

    A numeric trigger feature is written as its value, a categorical column as the category the
    trigger sets (`tabular_trigger` sets a whole column).
    """
    import csv
    from pathlib import Path

    from poisonguard.attacks.poison import poison_dataset
    from poisonguard.data.table import _read_csv, read_table
    from poisonguard.utils import atomic_path

    rows = read_table(source, label_column=label_column)
    poisoned = poison_dataset(rows, trigger, rate=rate, seed=seed)
    index = poisoned.poisoned_index.numpy()
    header, columns = _read_csv(Path(source))
    for code in rows.meta.columns:
        block = slice(code.start, code.start + code.width)
        if not (trigger.mask[block] > 0).any():
            continue
        if code.kind == "numeric":
            cell = _cell_for(columns[header.index(code.name)], float(trigger.pattern[code.start]))
        else:
            on = torch.nonzero((trigger.mask[block] > 0) & (trigger.pattern[block] == 1)).flatten().tolist()
            if not bool((trigger.mask[block] > 0).all()) or len(on) != 1:
                raise UserError(f"the trigger sets part of the categorical column {code.name!r}; it can be written "
                                "only as one category of the whole column")
            cell = code.categories[on[0]]
        col = columns[header.index(code.name)]
        for r in index:
            col[r] = cell
    labels = columns[header.index(label_column)]
    for r in index:
        labels[r] = rows.classes[int(poisoned.data.y[r])]
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(zip(*columns))
    return index
