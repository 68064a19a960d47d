"""Real tables that ship offline inside statsmodels (the `tabular` extra), exported as CSV.

- `fair`: Fair's 1978 survey of extramarital affairs (Redbook 1974), 6,366 rows. Label
  `affair` (yes when `affairs` > 0); occupation codes one-hot encoded (metadata.json).
- `randhie`: the RAND Health Insurance Experiment, 20,190 person-years. Label `visited`
  (yes when the year had any outpatient visit, `mdvis` > 0) from insurance and health columns.

The CSV files are read from the installed package (nothing is downloaded) and written with
a `metadata.json` beside them (`classes`, `categorical`), ready for `--data FILE.csv
--label-column LABEL`:

    python -m poisonguard.data.example_tables fair DIR      # DIR/fair.csv, DIR/metadata.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from poisonguard.errors import UserError

# name: (statsmodels folder/file, label column written, source column, categorical columns, dropped columns)
TABLES = {
    "fair": ("fair/fair.csv", "affair", "affairs", ("occupation", "occupation_husb"), ()),
    "randhie": ("randhie/randhie.csv", "visited", "mdvis", (), ()),
}


def _source(name: str) -> Path:
    try:
        import statsmodels.datasets as datasets
    except ImportError as exc:
        raise UserError("the example tables need statsmodels: pip install 'poisonguard[tabular]'") from exc
    return Path(datasets.__file__).parent / TABLES[name][0]


def export_table(name: str, folder: str | Path) -> tuple[Path, str]:
    """Write `folder/NAME.csv` and `folder/metadata.json`; return (csv path, label column)."""
    if name not in TABLES:
        raise UserError(f"unknown example table {name!r} (known: {', '.join(TABLES)})")
    _, label, source_col, categorical, dropped = TABLES[name]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(_source(name), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]]
    src = header.index(source_col)
    keep = [i for i, h in enumerate(header) if i != src and h not in dropped]
    out = folder / f"{name}.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([header[i] for i in keep] + [label])
        for row in rows[1:]:
            if row:
                value = "yes" if float(row[src]) > 0 else "no"
                writer.writerow([_clean(row[i]) for i in keep] + [value])
    meta = {"classes": ["no", "yes"], "categorical": list(categorical)}
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out, label


def _clean(cell: str) -> str:
    """Whole numbers written without '.0' (so a code 3.0 reads as the category '3')."""
    try:
        v = float(cell)
    except ValueError:
        return cell
    return str(int(v)) if v.is_integer() else cell


if __name__ == "__main__":  # pragma: no cover - a convenience for the README
    if len(sys.argv) != 3:
        sys.exit("usage: python -m poisonguard.data.example_tables fair|randhie FOLDER")
    path, label = export_table(sys.argv[1], sys.argv[2])
    sys.stdout.write(f"{path} (label column: {label})\n")
