"""Per-run data options the command line sets once for every loader (`--label-column`).

Many commands load more than one data source (scan's clean data, repair's auxiliary data,
sanitize's rows) through `load_data`; a table needs its label column named, so the CLI sets
it here for the run (as `limits.override` does for limits) and `main()` resets it after.
Library callers pass `label_column=` to `load_data` instead.
"""

from __future__ import annotations

_options: dict[str, str | None] = {}


def set_options(**values: str | None) -> None:
    _options.update({k: v for k, v in values.items() if v is not None})


def get(name: str) -> str | None:
    return _options.get(name)


def reset() -> None:
    _options.clear()
