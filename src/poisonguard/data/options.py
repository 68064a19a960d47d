"""Per-run data options the command line sets once for every loader (`--label-column`).

Many commands load more than one data source (scan's clean data, repair's auxiliary data,
sanitize's rows) through `load_data`; a table needs its label column named, so the CLI sets
it here for the run (as `limits.override` does for limits) and `main()` resets it after.
Library callers pass `label_column=` to `load_data` instead.
"""

from __future__ import annotations

from typing import Any

# label_column: a table's label column. model_features: the encoded columns the run's model
# records (`data.table._recorded_kinds` reads each column's kind from them).
_options: dict[str, Any] = {}


def set_options(**values: Any) -> None:
    _options.update({k: v for k, v in values.items() if v is not None})


def get(name: str) -> Any:
    return _options.get(name)


def reset() -> None:
    _options.clear()
