"""The study's answer, from a sweep folder's Parquet tables to a report folder.

`python -m orchestrator.report SWEEP_DIR [--compare-to FILE]`. The modules, in the order the report
uses them: `inputs` (the sweep folder read and typed), `stats` (per-seed statistics), `arms` (one
row per arm against its reference), `tables` and `search` (the paper-style tables of a designed
study or a search), `published` (published numbers beside ours), `plots`, `render` (Markdown,
LaTeX, HTML) and `writer` (the report folder and the CLI).
"""

from orchestrator.report.writer import (
    ARMS_CSV_COLUMNS,
    REPORT_DIR,
    Report,
    ReportError,
    main,
    verdict_table,
    write_report,
)

__all__ = ["ARMS_CSV_COLUMNS", "REPORT_DIR", "Report", "ReportError", "main", "verdict_table",
           "write_report"]
