"""Paper-style report of finished runs: ``python -m lowlat.report RUN [RUN|MULTIRUN ...]``.

Reads ``results.json`` (eval's rows, and the data set and model it ran on, which pick the paper
column) and writes Markdown tables laid out like Tables 1-3 of Xiong et al. (2025), each cell
showing our figure beside the published one and the difference, plus PNG figures (accuracy vs T,
RMPE share and firing rate per layer). Several runs, or a Hydra multirun folder, also give one
combined ``sweep.md``/``sweep.csv`` keyed by the overrides that differ between the jobs.

One module per job: :mod:`~lowlat.report.runs` (finding runs, reading results),
:mod:`~lowlat.report.paper` (the paper's printed figures and table layout),
:mod:`~lowlat.report.tables` (Markdown/CSV), :mod:`~lowlat.report.figures` (matplotlib),
:mod:`~lowlat.report.sweeps` (several runs side by side), :mod:`~lowlat.report.cli`.
"""

from lowlat.report.cli import main, write_report
from lowlat.report.figures import (
    default_layer_T,
    fig_accuracy,
    fig_firing,
    fig_rmpe,
    plot_accuracy,
    plot_firing,
    plot_layers,
    plot_rmpe,
    write_figures,
)
from lowlat.report.paper import (
    DEFAULT_PAPER,
    PAPER_FILE,
    TABLE3_LABELS,
    TABLES,
    label,
    load_paper,
    paper_key,
    paper_value,
)
from lowlat.report.runs import METHOD_ORDER, ReportError, Run, find_runs, load_run
from lowlat.report.sweeps import sweep_rows, write_sweep
from lowlat.report.tables import (
    all_results_markdown,
    calibration_markdown,
    cell,
    report_markdown,
    table_markdown,
    table_rows,
    tables_csv,
)

__all__ = [
    "DEFAULT_PAPER", "METHOD_ORDER", "PAPER_FILE", "TABLE3_LABELS", "TABLES", "ReportError", "Run",
    "all_results_markdown", "calibration_markdown", "cell", "default_layer_T", "fig_accuracy",
    "fig_firing", "fig_rmpe", "find_runs", "label", "load_paper", "load_run", "main",
    "paper_key", "paper_value", "plot_accuracy", "plot_firing", "plot_layers", "plot_rmpe",
    "report_markdown", "sweep_rows", "table_markdown", "table_rows", "tables_csv",
    "write_figures", "write_report", "write_sweep",
]
