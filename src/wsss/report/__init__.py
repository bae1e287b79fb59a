"""What a run measured, for people: the results table and the self-contained ``report.html``."""

from wsss.report.html import REPORT_NAME, render_report, write_report
from wsss.report.results import Result, collect_results, format_results_table, stage_warnings

__all__ = [
    "REPORT_NAME",
    "Result",
    "collect_results",
    "format_results_table",
    "render_report",
    "stage_warnings",
    "write_report",
]
