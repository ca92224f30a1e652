"""PNG figures of one run, after the paper's: accuracy vs T (Fig. 3), RMPE share per layer
(Figs. 4-5) and firing rate per layer.

Each ``plot_*`` returns the matplotlib Figure (no file, no pyplot: safe in threads, tests and
notebooks); each ``fig_*`` saves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lowlat.methods import CALIBRATED
from lowlat.report.paper import TABLES, label, paper_value
from lowlat.report.runs import Run

PAPER_CURVES = ("phase1", "lwc", "lmpc+lwc")  # Table 3 rows drawn dashed beside ours (Fig. 3)


def _figure(w: float = 6.4, h: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def default_layer_T(run: Run) -> int | None:
    """Smallest T with calibrated rows (Figs. 4-5), else the smallest T with layer statistics."""
    with_stats = [int(r["T"]) for r in run.results.get("rows", []) if r.get("rmpe_share")]
    cal = [int(r["T"]) for r in run.results.get("rows", [])
           if r["method"] in CALIBRATED and r.get("rmpe_share")]
    return min(cal or with_stats) if (cal or with_stats) else None


def plot_accuracy(run: Run, key: str | None = None) -> Figure:
    """Fig. 3: top-1 vs T, one solid line per method, the paper's Table 3 curves dashed."""
    fig, ax = _figure()
    colors: dict[str, Any] = {}
    for m in run.methods():
        ts = run.timesteps(m)
        (line,) = ax.plot(ts, [run.top1(m, T) for T in ts], "o-", label=label(m))
        colors[m] = line.get_color()
    for m in PAPER_CURVES:
        ts = [T for T in TABLES[3][2] if paper_value(key, 3, m, T) is not None]
        if ts and m in colors:
            ax.plot(ts, [paper_value(key, 3, m, T) for T in ts], "--", color=colors[m],
                    alpha=0.6, label=f"{label(m)} (paper)")
    if (ann := run.ann_top1("phase1")) is not None:
        ax.axhline(ann, color="k", ls=":", lw=1, label="ANN")
    ax.set_xscale("log", base=2)
    ts = sorted(set(run.timesteps()) | (set(TABLES[3][2]) if key else set()))
    ax.set_xticks(ts, [str(T) for T in ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs T" + (f" (dashed: paper, {key})" if key else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_layers(run: Run, stat: str, T: int, methods: Sequence[str], ylabel: str, title: str,
                bars: bool) -> Figure | None:
    """One per-layer statistic of the rows ``(method, T)``: grouped bars or one line per method,
    layers in the order of the first row; None if no method has the statistic at T."""
    rows = [(m, r[stat]) for m in methods if (r := run.row(m, T)) and r.get(stat)]
    if not rows:
        return None
    layers = list(rows[0][1])
    fig, ax = _figure(min(16.0, max(6.4, 0.4 * len(layers) * (len(rows) if bars else 2))), 4.0)
    x = list(range(len(layers)))
    width = 0.8 / len(rows)
    for i, (m, d) in enumerate(rows):
        ys = [d.get(layer, float("nan")) for layer in layers]
        if bars:
            ax.bar([v + (i - (len(rows) - 1) / 2) * width for v in x], ys, width, label=label(m))
        else:
            ax.plot(x, ys, "o-", label=label(m))
    ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}, T={T}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_rmpe(run: Run, T: int | None = None) -> Figure | None:
    """Figs. 4-5: share of neurons with v(T) outside [0, θ), Phase I vs the calibrations."""
    T = T or default_layer_T(run)
    return None if T is None else plot_layers(
        run, "rmpe_share", T, ("phase1", *CALIBRATED), "share of neurons with RMPE",
        "RMPE share per layer", bars=True)


def plot_firing(run: Run, T: int | None = None) -> Figure | None:
    """Firing rate (spikes per neuron per step) per layer for every method at T."""
    T = T or default_layer_T(run)
    return None if T is None else plot_layers(
        run, "firing_rate", T, run.methods(), "spikes / neuron / step", "Firing rate per layer",
        bars=False)


def fig_accuracy(run: Run, path: Path, key: str | None = None) -> Path:
    return _save(plot_accuracy(run, key), path)


def fig_rmpe(run: Run, path: Path, T: int | None = None) -> Path | None:
    return None if (fig := plot_rmpe(run, T)) is None else _save(fig, path)


def fig_firing(run: Run, path: Path, T: int | None = None) -> Path | None:
    return None if (fig := plot_firing(run, T)) is None else _save(fig, path)


def write_figures(run: Run, out: Path, key: str | None = None, T: int | None = None) -> list[Path]:
    """The three PNGs in ``out`` (per-layer ones only if the rows carry layer statistics)."""
    out.mkdir(parents=True, exist_ok=True)
    figs = [fig_accuracy(run, out / "accuracy_vs_T.png", key),
            fig_rmpe(run, out / "rmpe_per_layer.png", T),
            fig_firing(run, out / "firing_rate_per_layer.png", T)]
    return [p for p in figs if p is not None]
