"""The report every analysing command writes: `DIR/report.json` and `DIR/report.html`.

JSON keys follow DESIGN.md (`tool`, `version`, `command`, `model`, `detections`, `repairs`,
`certification`, `privacy`, `federated`); HTML is one self-contained file (inline PNGs),
built from sections that each stage adds.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from poisonguard import __version__
from poisonguard.results import to_jsonable
from poisonguard.utils import atomic_write_text

LIST_KEYS = ("detections", "repairs")
# Version of the report.json layout; src/poisonguard/report/schema/report.schema.json describes it.
# Raise it when a key changes meaning or goes away (new optional keys keep it).
# 2: `detections[]` carry the verdict's judgement of each method, the method's own rule in `own_rule`.
SCHEMA_VERSION = 2


@dataclass
class Section:
    title: str
    html: str
    summary: str = ""  # one sentence a non-expert understands
    order: int = 50


@dataclass
class Report:
    """Accumulates report JSON and HTML sections; `write(out_dir)` saves both atomically."""

    command: str
    data: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = {"tool": "poisonguard", "schema_version": SCHEMA_VERSION, "version": __version__, "command": self.command,
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **self.data}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = to_jsonable(value)

    def append(self, key: str, value: Any) -> None:
        """Add one entry to a list block such as `detections` or `repairs`."""
        self.data.setdefault(key, []).append(to_jsonable(value))

    def add_section(self, title: str, html: str, *, summary: str = "", order: int = 50) -> None:
        self.sections.append(Section(title, html, summary, order))

    def to_json(self) -> str:
        return json.dumps(to_jsonable(self.data), indent=2, allow_nan=False)

    def to_html(self) -> str:
        from jinja2 import Environment, PackageLoader, select_autoescape

        env = Environment(loader=PackageLoader("poisonguard.report", "templates"), autoescape=select_autoescape(["html"]))
        sections = sorted(self.sections, key=lambda s: s.order)
        stages = self.data.get("stages", [])
        return env.get_template("report.html").render(
            data=self.data, sections=[(s.title, s.summary, Markup(s.html)) for s in sections],
            failed=[s for s in stages if s.get("status") == "failed"],
            not_applicable=[s for s in stages if s.get("status") == "not_applicable"],
        )

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", self.to_json())
        atomic_write_text(out / "report.html", self.to_html())
        return out / "report.html"


SCHEMA_PATH = Path(__file__).parent / "schema" / "report.schema.json"


def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(data: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless `data` (a parsed report.json) follows the schema."""
    import jsonschema

    jsonschema.validate(data, report_schema(), cls=jsonschema.Draft202012Validator)


def img(data_uri: str, alt: str = "") -> str:
    from markupsafe import escape

    return f'<img src="{data_uri}" alt="{escape(alt)}">'


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A small HTML table; cells are escaped, floats shown with 3 decimals."""
    from markupsafe import escape

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(escape("—" if v is None else v))

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
