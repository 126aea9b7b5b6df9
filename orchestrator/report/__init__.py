"""The study's answer, from a sweep folder's Parquet tables to a report folder.

`python -m orchestrator.report SWEEP_DIR [--compare-to FILE]`. The modules, in the order the report
uses them: `inputs` (the sweep folder read and typed), `stats` (per-seed statistics), `arms` (one
row per arm against its reference), `tables` and `search` (the paper-style tables of a designed
study or a search), `published` (published numbers beside ours), `plots`, `render` (Markdown,
LaTeX, HTML) and `writer` (the report folder and the CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ARMS_CSV_COLUMNS", "REPORT_DIR", "Report", "ReportError", "main", "verdict_table",
           "write_report"]

if TYPE_CHECKING:  # at run time the writer (pandas, SciPy, matplotlib) loads on first use
    from orchestrator.report.writer import (
        ARMS_CSV_COLUMNS as ARMS_CSV_COLUMNS,
        REPORT_DIR as REPORT_DIR,
        Report as Report,
        ReportError as ReportError,
        main as main,
        verdict_table as verdict_table,
        write_report as write_report,
    )


def __getattr__(name: str) -> Any:
    """The writer's names, imported when first asked for: a module that reads a sweep folder
    (`inputs`, the sweep command's start) does not pay for the plotting and statistics."""
    if name not in __all__:
        raise AttributeError(f"module 'orchestrator.report' has no attribute {name!r}")
    from orchestrator.report import writer

    value = getattr(writer, name)
    globals()[name] = value
    return value
