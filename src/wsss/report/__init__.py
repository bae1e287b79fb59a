"""What a run measured, for people: the results table and the self-contained ``report.html``."""

from wsss.report.html import REPORT_NAME, render_report, write_report
from wsss.report.results import (
    Result,
    classifier_validations,
    collect_results,
    format_results_table,
    format_validation,
    stage_warnings,
    summary_lines,
)

__all__ = [
    "REPORT_NAME",
    "Result",
    "classifier_validations",
    "collect_results",
    "format_results_table",
    "format_validation",
    "render_report",
    "stage_warnings",
    "summary_lines",
    "write_report",
]
