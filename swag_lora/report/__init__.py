"""Reports: one record (JSON + npz + figures) per evaluation (records.py), tables across runs and seeds with paired
t intervals and the chance gate (tables.py, stats.py), and figures (figures.py).

    python -m swag_lora.report RUN_OR_EVAL_PATH [...] [--out report] [--metrics accuracy nll ece brier]
"""
from swag_lora.report.records import ReportError, load_records, print_summary, record_name, write_evaluation
from swag_lora.report.tables import TABLE_METRICS, aggregate, build_report, condensed, main, render

__all__ = ["TABLE_METRICS", "ReportError", "aggregate", "build_report", "condensed", "load_records", "main",
           "print_summary", "record_name", "render", "write_evaluation"]
