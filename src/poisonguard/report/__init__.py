"""HTML and JSON reports and their plots."""

from poisonguard.report.report import SCHEMA_VERSION, Report, Section, img, report_schema, table, validate_report

__all__ = ["Report", "SCHEMA_VERSION", "Section", "img", "report_schema", "table", "validate_report"]
