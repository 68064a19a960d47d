"""HTML and JSON reports and their plots."""

from poisonguard.report.report import Report, Section, img, table

__all__ = ["Report", "Section", "img", "table"]
