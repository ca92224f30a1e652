"""Paper-style report of finished runs: ``python -m lowlat.report RUN [RUN|MULTIRUN ...]``.

Reads ``results.json`` (and the artifacts' stored config, to know which paper column applies) and
writes Markdown tables laid out like Tables 1-3 of Xiong et al. (2025), each cell showing our
figure beside the published one and the difference, plus PNG figures (accuracy vs T, RMPE share
and firing rate per layer). Several runs, or a Hydra multirun folder, also give one combined
``sweep.md``/``sweep.csv`` keyed by the overrides that differ between the jobs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lowlat.methods import CALIBRATED, METHODS

PAPER_FILE = Path(__file__).with_name("paper_results.json")
DEFAULT_PAPER = "cifar10_vgg16"  # the paper's headline column, used when the run matches none
METHOD_ORDER = tuple(METHODS)
# (title, the paper's rows (paper-literal methods and cited baselines), T columns, lowlat's extra
# rows shown below them, never in their place)
TABLES: dict[int, tuple[str, tuple[str, ...], tuple[int, ...], tuple[str, ...]]] = {
    1: ("Table 1: threshold setting methods", ("maxnorm", "robustnorm", "phase1"),
        (8, 16, 32, 64, 128), ("robustnorm_all", "unbiased")),
    2: ("Table 2: initial membrane potential methods", ("phase1", "opti", "opt", "lmpc"), (4, 16),
        ("unbiased", "lowlat-lmpc")),
    3: ("Table 3: comparison with other conversion methods",
        ("ratenorm", "opt", "calibration", "opti", "qcfs", "phase1", "lwc", "lmpc+lwc"),
        (2, 4, 8, 16, 32, 64, 128), ("unbiased", "lowlat-lwc", "lowlat")),
}


# Table 3's baseline rows are the cited papers' own figures; ours for them are our implementations.
TABLE3_LABELS = {"ratenorm": "RateNorm [15]", "opt": "Opt. [17] (ours: Phase I+Opt)",
                 "calibration": "Calibration [16]", "opti": "OpI. [18] (ours: Phase I+OptI)",
                 "qcfs": "QCFS* [19] (L=8)"}


class ReportError(Exception):
    """Unusable input (a folder without results, an unknown paper column)."""


@cache
def load_paper() -> dict[str, Any]:
    return json.loads(PAPER_FILE.read_text())


def paper_value(key: str | None, table: int | None, method: str, T: int | None,
                metric: str = "top1") -> float | None:
    """The published figure for one cell (percent for accuracies), or None if not printed."""
    for e in load_paper()["entries"]:
        if (e["paper"], e["table"], e["method"], e["T"], e["metric"]) == (key, table, method, T,
                                                                           metric):
            return float(e["value"])
    return None


def label(method: str) -> str:
    if method in METHODS:
        return METHODS[method].label + ("" if METHODS[method].paper else " (lowlat)")
    return load_paper()["labels"].get(method, method)


@dataclass
class Run:
    """One run folder: its results, the resolved config (if an artifact has one), overrides."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    name: str = ""  # how sweep tables name the run: as given, or relative to its multirun folder

    def row(self, method: str, T: int) -> dict[str, Any] | None:
        return next((r for r in self.results.get("rows", [])
                     if r["method"] == method and int(r["T"]) == T), None)

    def top1(self, method: str, T: int, split: str = "test") -> float | None:
        """Our top-1 in percent on the test split (``top1``) or validation (``val_top1``)."""
        r = self.row(method, T)
        key = "top1" if split == "test" else "val_top1"
        return None if r is None or r.get(key) is None else 100.0 * float(r[key])

    def ann_top1(self, method: str) -> float | None:
        """The ANN accuracy a method starts from (RateNorm has its own ANN), test, in percent."""
        v = self.results.get("ratenorm_ann_top1" if method == "ratenorm" else "ann_top1")
        return None if v is None else 100.0 * float(v)

    def test_subset(self) -> str:
        """How much of the test split the figures stand on, for every table heading."""
        n, total = self.results.get("test_images"), self.results.get("test_images_total")
        if n is None:
            return "test split"
        if total and n < total:
            return f"test split, first {n} of {total} images (a stratified prefix)"
        return f"full test split, {n} images"

    def methods(self) -> list[str]:
        found = {r["method"] for r in self.results.get("rows", [])}
        return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))

    def timesteps(self, method: str | None = None) -> list[int]:
        return sorted({int(r["T"]) for r in self.results.get("rows", [])
                       if method is None or r["method"] == method})


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The resolved Hydra config stored in the run's artifacts (results.json does not carry it)."""
    if isinstance(cfg := _read_json(run_dir / "results.json").get("config"), dict):
        return cfg
    for name in ("qcann.pt", "ann.pt"):
        if (run_dir / name).is_file():
            try:
                import torch

                art = torch.load(run_dir / name, map_location="cpu", weights_only=True)
                return dict(art.get("config") or {})
            except Exception:  # noqa: BLE001 - the report still works without the config
                continue
    return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_overrides(run_dir: Path, stop: Path | None = None) -> list[str]:
    """Overrides of the job that wrote ``run_dir``: its multirun job folder's (a parent up to
    ``stop``) ``.hydra/overrides.yaml``, else the latest single run's ``hydra/<stage>-<time>/``."""
    import yaml

    found = []
    for d in (run_dir, *run_dir.parents):
        found.append(d / ".hydra" / "overrides.yaml")
        if stop is None or d == stop:
            break
    found += sorted(run_dir.glob("hydra/*/.hydra/overrides.yaml"), key=lambda f: f.stat().st_mtime,
                    reverse=True)
    for f in found:
        if f.is_file():
            return [str(o) for o in (yaml.safe_load(f.read_text()) or [])]
    return []


def load_run(path: str | Path, stop: Path | None = None) -> Run:
    path = Path(path)
    f = path / "results.json"
    if not f.is_file():
        raise ReportError(f"{path}: no results.json here (run `python -m lowlat.run stage=all` "
                          "first, or give a run folder / Hydra multirun folder)")
    try:
        results = json.loads(f.read_text())
    except ValueError as e:
        raise ReportError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ReportError(f"{f}: expected an object with a 'rows' list")
    name = str(path.relative_to(stop)) if stop is not None else str(path)
    return Run(path, results, _read_config(path), _read_overrides(path, stop), name)


def find_runs(paths: Iterable[str | Path], max_depth: int = 4) -> tuple[list[Run], list[Run]]:
    """Expand arguments into ``(explicit run folders, runs found inside multirun folders)``."""
    explicit, nested = [], []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            explicit.append(load_run(p))
            continue
        if not p.is_dir():
            raise ReportError(f"{p}: no such folder")
        found = sorted((f.parent for f in p.rglob("results.json")
                        if len(f.relative_to(p).parts) <= max_depth + 1),
                       key=lambda d: [int(s) if s.isdigit() else s for s in d.relative_to(p).parts])
        if not found:
            raise ReportError(f"{p}: no results.json here or in its subfolders (is it a run "
                              "folder or a Hydra multirun folder?)")
        nested += [load_run(d, stop=p) for d in found]
    return explicit, nested


# ---------------------------------------------------------------- paper column


def _dataset_network(cfg: dict[str, Any],
                     results: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """Dataset and network of a run: as recorded in results.json, else read off its config."""
    res = results or {}
    if isinstance(res.get("dataset"), dict) and isinstance(res.get("model"), dict):
        d = res["dataset"]
        text = f"{d.get('name', '')} {d.get('root', '')} {d.get('_target_', '')}".lower()
        if int(d.get("num_classes") or 0) == 100 or "cifar100" in text:
            ds = "cifar100"
        elif "cifar10" in text or "cifar" in text and int(d.get("num_classes") or 0) == 10:
            ds = "cifar10"
        else:
            ds = None
        name = str(res["model"].get("name", ""))
        net = name if name in ("vgg16", "resnet20") else None
        return ds, net
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    text = " ".join(str(x) for x in (data.get("name"), data.get("root"), cfg.get("experiment_name"))
                    if x).lower()
    ds = "cifar100" if "cifar100" in text else "cifar10" if "cifar10" in text else None
    name = f"{model.get('name', '')} {cfg.get('experiment_name', '')}".lower()
    net = "vgg16" if "vgg16" in name else "resnet20" if "resnet20" in name else None
    return ds, net


def paper_key(run: Run, requested: str | None = None) -> tuple[str | None, str]:
    """The paper column to compare with, and a sentence saying why it was chosen."""
    papers = load_paper()["papers"]
    if requested:
        if requested == "none":
            return None, "no comparison (--paper none)"
        if requested not in papers:
            raise ReportError(f"--paper {requested!r} unknown; valid: {', '.join(papers)}, none")
        return requested, f"{requested} (chosen with --paper)"
    ds, net = _dataset_network(run.config, run.results)
    if ds and net and f"{ds}_{net}" in papers:
        return f"{ds}_{net}", f"{ds}_{net} (from the run's data and model config)"
    what = f"{ds or 'unknown data'}/{net or 'unknown model'}"
    return DEFAULT_PAPER, (f"{DEFAULT_PAPER}: the run ({what}) matches no paper column, so the "
                           "paper's headline column is shown; choose one with --paper")


# ---------------------------------------------------------------- tables


def cell(ours: float | None, paper: float | None) -> str:
    """``ours / paper (ours − paper)`` in percent; "—" for what is missing."""
    if ours is None and paper is None:
        return "—"
    o = "—" if ours is None else f"{ours:.2f}"
    if paper is None:
        return f"{o} / —"
    diff = "" if ours is None else f" ({ours - paper:+.2f})"
    return f"{o} / {paper:.2f}{diff}"


def table_rows(run: Run, key: str | None, table: int) -> list[dict[str, Any]]:
    """Long-form cells of one paper table: method, T (None = ANN column), ours, paper."""
    _, methods, ts, extra = TABLES[table]
    out = []
    for m in (*methods, *extra):
        cells = [(None, run.ann_top1(m) if m in METHOD_ORDER else None,
                  paper_value(key, table, m, None, "ann_top1"))] if table == 3 else []
        cells += [(T, run.top1(m, T), paper_value(key, table, m, T)) for T in ts]
        if any(o is not None or p is not None for _, o, p in cells[1 if table == 3 else 0:]):
            out += [{"table": table, "method": m, "T": T, "ours": o, "paper": p}
                    for T, o, p in cells]
    return out


def table_markdown(run: Run, key: str | None, table: int) -> str:
    title, methods, ts, extra = TABLES[table]
    rows = table_rows(run, key, table)
    ann_ours, ann_paper = run.ann_top1("phase1"), paper_value(key, table, "ann", None, "ann_top1")
    head = (f"### {title}\n\nCells: ours / paper (difference), top-1 % on the "
            f"{run.test_subset()}. Rows marked (lowlat) are lowlat's own methods, shown beside "
            "the paper's rows, not in their place.")
    if table in (1, 2):
        head += f" ANN: {cell(ann_ours, ann_paper)}."
    if key and not any(r["paper"] is not None for r in rows):
        head += f" The paper prints no Table {table} figures for {key}."
    cols = (["ANN"] if table == 3 else []) + [f"T={T}" for T in ts]
    lines = [head, "", "| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in (*methods, *extra):
        cells = [r for r in rows if r["method"] == m]
        if cells:
            name = TABLE3_LABELS.get(m, label(m)) if table == 3 else label(m)
            lines.append(f"| {name} | " + " | ".join(cell(r["ours"], r["paper"])
                                                       for r in cells) + " |")
    if len(lines) == 4:
        lines.append("| (no rows) |" + " — |" * len(cols))
    return "\n".join(lines) + "\n"


def calibration_markdown(run: Run) -> str:
    """Per-layer MSE of each calibrated SNN artifact (``metrics["layers"]``), if present."""
    import torch

    arts = []
    for f in run.path.glob("snn_T*.pt"):
        try:
            arts.append((f, torch.load(f, map_location="cpu", weights_only=True)))
        except Exception:  # noqa: BLE001 - a foreign file is skipped, not fatal
            continue
    order = {m: i for i, m in enumerate(CALIBRATED)}
    parts = []
    for f, art in sorted(arts, key=lambda a: (int(a[1].get("T", 0)),
                                              order.get(a[1].get("method"), 9))):
        layers = (art.get("metrics") or {}).get("layers") or []
        keys = ["mse_start", "mse_after_lmpc", "mse_after_lwc", "mse_end"]
        keys = [k for k in keys if any(k in r for r in layers)]
        if not layers:
            continue
        lines = [f"**{art.get('method')} T={art.get('T')}** (`{f.name}`)", "",
                 "| layer | " + " | ".join(keys) + " | LWC kept |", "|---" * (len(keys) + 2) + "|"]
        for r in layers:
            vals = " | ".join("—" if r.get(k) is None else f"{r[k]:.4g}" for k in keys)
            lines.append(f"| {r['layer']} | {vals} | {r.get('lwc_kept', '—')} |")
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return "### Phase II: per-layer rate MSE\n\n" + "\n\n".join(parts) + "\n"


def report_markdown(run: Run, key: str | None, why: str = "",
                    figures: Sequence[Path] = ()) -> str:
    res = run.results
    ds, net = _dataset_network(run.config, run.results)
    pct = {k: f"{100 * res[k]:.2f}" for k in ("ann_top1", "qcann_top1", "ratenorm_ann_top1")
           if res.get(k) is not None}
    out = [f"# lowlat report: `{run.path}`", "",
           f"- data / model: {ds or run.config.get('data', {}).get('_target_', '?')} / "
           f"{net or run.config.get('model', {}).get('name', '?')}",
           f"- paper column: {why or key}",
           "- accuracies (%, test split): " + ", ".join(f"{k} {v}" for k, v in pct.items()),
           f"- splits: tables report the {run.test_subset()}; best epochs, defaults, ablations "
           "and sweeps were chosen on the validation split (val_top1)", ""]
    out += [table_markdown(run, key, t) for t in TABLES]
    out.append(all_results_markdown(run))
    if cal := calibration_markdown(run):
        out.append(cal)
    if figures:
        out.append("### Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n")
    return "\n".join(out)


def all_results_markdown(run: Run) -> str:
    """Every (method, T) we have, ours only, on both splits, plus the network-wide firing rate."""
    ts = run.timesteps()
    head = "| Method | " + " | ".join(f"T={T}" for T in ts) + " |"
    rule = "|---" * (len(ts) + 1) + "|"
    out = []
    for split, title in (("test", f"top-1 % on the {run.test_subset()}"),
                         ("val", "top-1 % on the validation split (what choices are made on)")):
        lines = [f"### All results ({title})", "", head, rule]
        for m in run.methods():
            vals = [run.top1(m, T, split) for T in ts]
            lines.append(f"| {label(m)} | " + " | ".join(
                "—" if v is None else f"{v:.2f}" for v in vals) + " |")
        out.append("\n".join(lines) + "\n")
    lines = ["### Network-wide firing rate (spikes / neuron / step, test split; paper Sec. 4.4)",
             "", head, rule]
    for m in run.methods():
        vals = [(run.row(m, T) or {}).get("firing_rate_net") for T in ts]
        lines.append(f"| {label(m)} | " + " | ".join(
            "—" if v is None else f"{v:.4f}" for v in vals) + " |")
    out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def tables_csv(run: Run, key: str | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "method", "T", "ours", "paper", "diff"])
    for t in TABLES:
        for r in table_rows(run, key, t):
            o, p = r["ours"], r["paper"]
            w.writerow([t, r["method"], "ANN" if r["T"] is None else r["T"],
                        "" if o is None else f"{o:.2f}", "" if p is None else f"{p:.2f}",
                        "" if o is None or p is None else f"{o - p:.2f}"])
    return buf.getvalue()


# ---------------------------------------------------------------- figures


def _figure(w: float = 6.4, h: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in threads/tests

    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.add_subplot()


def default_layer_T(run: Run) -> int | None:
    """Smallest T with calibrated rows (Figs. 4-5), else the smallest T with layer statistics."""
    with_stats = [int(r["T"]) for r in run.results.get("rows", []) if r.get("rmpe_share")]
    cal = [int(r["T"]) for r in run.results.get("rows", [])
           if r["method"] in CALIBRATED and r.get("rmpe_share")]
    return min(cal or with_stats) if (cal or with_stats) else None


def fig_accuracy(run: Run, path: Path, key: str | None = None) -> Path:
    """Fig. 3: top-1 vs T for every method (solid), the paper's Table 3 curves dashed."""
    fig, ax = _figure()
    colors: dict[str, Any] = {}
    for m in run.methods():
        ts = run.timesteps(m)
        (line,) = ax.plot(ts, [run.top1(m, T) for T in ts], "o-", label=label(m))
        colors[m] = line.get_color()
    for m in ("phase1", "lwc", "lmpc+lwc"):
        ts = [T for T in TABLES[3][2] if paper_value(key, 3, m, T) is not None]
        if ts and m in colors:
            ax.plot(ts, [paper_value(key, 3, m, T) for T in ts], "--", color=colors[m],
                    alpha=0.6, label=f"{label(m)} (paper)")
    if (ann := run.ann_top1("phase1")) is not None:
        ax.axhline(ann, color="k", ls=":", lw=1, label="ANN")
    ax.set_xscale("log", base=2)
    ts = sorted(set(run.timesteps()) | ({T for T in TABLES[3][2]} if key else set()))
    ax.set_xticks(ts, [str(T) for T in ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs T" + (f" (dashed: paper, {key})" if key else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def _layer_plot(run: Run, path: Path, stat: str, T: int, methods: Sequence[str],
                ylabel: str, title: str, bars: bool) -> Path | None:
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
    fig.savefig(path, dpi=120)
    return path


def fig_rmpe(run: Run, path: Path, T: int | None = None) -> Path | None:
    """Figs. 4-5: share of neurons with v(T) outside [0, θ), Phase I vs the calibrations."""
    T = T or default_layer_T(run)
    return None if T is None else _layer_plot(
        run, path, "rmpe_share", T, ("phase1", *CALIBRATED), "share of neurons with RMPE",
        "RMPE share per layer", bars=True)


def fig_firing(run: Run, path: Path, T: int | None = None) -> Path | None:
    """Firing rate (spikes per neuron per step) per layer for every method at T."""
    T = T or default_layer_T(run)
    return None if T is None else _layer_plot(
        run, path, "firing_rate", T, run.methods(), "spikes / neuron / step",
        "Firing rate per layer", bars=False)


def write_figures(run: Run, out: Path, key: str | None = None, T: int | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figs = [fig_accuracy(run, out / "accuracy_vs_T.png", key),
            fig_rmpe(run, out / "rmpe_per_layer.png", T),
            fig_firing(run, out / "firing_rate_per_layer.png", T)]
    return [p for p in figs if p is not None]


def write_report(run: Run, out: Path, paper: str | None = None, T: int | None = None) -> Path:
    """Write ``report.md``, ``tables.csv`` and the PNGs into ``out``; returns the Markdown path."""
    key, why = paper_key(run, paper)
    figs = write_figures(run, out, key, T)
    (out / "tables.csv").write_text(tables_csv(run, key))
    md = out / "report.md"
    md.write_text(report_markdown(run, key, why, figs))
    return md


# ---------------------------------------------------------------- sweeps


def _parse_overrides(ov: Sequence[str]) -> dict[str, str]:
    """``key=value`` overrides; ``stage`` (what ran last, not how) is dropped."""
    pairs = dict(o.lstrip("+~").split("=", 1) for o in ov if "=" in o)
    pairs.pop("stage", None)
    return pairs


def sweep_rows(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """Long-form rows ``run, <differing overrides>, method, T, val_top1``; (keys, rows)."""
    parsed = [_parse_overrides(r.overrides) for r in runs]
    keys = sorted({k for p in parsed for k in p})
    keys = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    rows = []
    for r, p in zip(runs, parsed, strict=True):
        for row in sorted(r.results.get("rows", []), key=lambda x: (
                METHOD_ORDER.index(x["method"]) if x["method"] in METHOD_ORDER else 99, x["T"])):
            rows.append({"run": r.name or str(r.path), **{k: p.get(k, "") for k in keys},
                         "method": row["method"], "T": int(row["T"]),
                         "val_top1": 100.0 * float(row.get("val_top1", row["top1"]))})
    return keys, rows


def write_sweep(runs: Sequence[Run], out: Path) -> tuple[Path, Path]:
    """``sweep.csv`` (long form) and ``sweep.md`` (one line per run and method, T as columns)."""
    keys, rows = sweep_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["run", *keys, "method", "T", "val_top1"])
    w.writeheader()
    w.writerows({**r, "val_top1": f"{r['val_top1']:.2f}"} for r in rows)
    (out / "sweep.csv").write_text(buf.getvalue())
    ts = sorted({r["T"] for r in rows})
    lines = [f"# Sweep: {len(runs)} runs", "", "VALIDATION top-1 % per method and T (sweeps choose "
             "on validation; the test split is for the final table only); columns before "
             "`method` are the overrides that differ between runs.", "",
             "| " + " | ".join(["run", *keys, "method", *(f"T={T}" for T in ts)]) + " |",
             "|---" * (len(keys) + 2 + len(ts)) + "|"]
    groups: dict[tuple, dict[int, float]] = {}
    for r in rows:
        groups.setdefault((r["run"], *(r[k] for k in keys), r["method"]), {})[r["T"]] = (
            r["val_top1"])
    for g, vals in groups.items():
        lines.append("| " + " | ".join([*(f"`{v}`" if v != "" else "" for v in g[:-1]), g[-1],
                                        *(f"{vals[T]:.2f}" if T in vals else "—" for T in ts)])
                     + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    return out / "sweep.md", out / "sweep.csv"


# ---------------------------------------------------------------- CLI


def _sweep_out(paths: Sequence[str]) -> Path:
    """``<multirun>/report`` for one folder, else ``<common parent>/report`` (``./report``)."""
    common = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    if len(paths) > 1:
        common = common if common != Path(common.anchor) else Path.cwd()
    return common / "report"



def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lowlat.report", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="run folders (with results.json) or multirun folders")
    ap.add_argument("--out", type=Path, help="output folder (default: <run>/report, or "
                    "<common parent>/report for the sweep table)")
    ap.add_argument("--paper", help="paper column: " + ", ".join(load_paper()["papers"])
                    + ", none (default: from the run's config)")
    ap.add_argument("--T", type=int, help="T of the per-layer figures (default: smallest "
                    "calibrated T)")
    a = ap.parse_args(argv)
    try:
        explicit, nested = find_runs(a.paths)
        for run in explicit:
            out = a.out if a.out and len(explicit) == 1 and not nested else (
                a.out / run.path.name if a.out else run.path / "report")
            print(write_report(run, out, a.paper, a.T))
        runs = explicit + nested
        if len(runs) > 1:
            for p in write_sweep(runs, a.out or _sweep_out(a.paths)):
                print(p)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
