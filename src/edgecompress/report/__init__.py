"""Run reports: a terminal table of the stages and a self-contained HTML report with plots."""

from edgecompress.report.html import build_report
from edgecompress.report.table import checks_table, stage_table

__all__ = ["build_report", "checks_table", "stage_table"]
