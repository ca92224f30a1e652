"""The paper-style report: right methods and T in each table, the paper's figures in the right
cells, figures written, sweeps gathered, and a clear error for a folder without results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowlat import report

ROOT = Path(__file__).resolve().parents[1]
# `tiny_run` (tests/conftest.py): the tiny experiment run end to end once per session.


def _table(md: str, title: str) -> list[list[str]]:
    """Rows (cells stripped) of the Markdown table under the heading containing ``title``."""
    part = md.split(title, 1)[1].split("###", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in part.splitlines() if line.startswith("|") and "---" not in line]


def _cell(rows: list[list[str]], method: str, column: str) -> str:
    head = rows[0]
    row = next(r for r in rows if r[0] == method)
    return row[head.index(column)]


def test_paper_data_is_complete_and_sourced() -> None:
    data = report.load_paper()
    entries = data["entries"]
    assert all({"table", "row", "column"} <= set(e["source"]) for e in entries)
    top1 = [e for e in entries if e["metric"] == "top1"]
    assert len([e for e in top1 if e["table"] == 1]) == 15
    assert len([e for e in top1 if e["table"] == 2]) == 16
    assert {e["paper"] for e in entries if e["table"] == 1} == {"cifar10_vgg16"}
    assert {e["paper"] for e in entries if e["table"] == 2} == {"cifar100_vgg16",
                                                                "cifar100_resnet20"}
    for key, ann in [("cifar10_vgg16", 95.71), ("cifar10_resnet20", 95.23),
                     ("cifar100_vgg16", 77.10), ("cifar100_resnet20", 76.07)]:
        assert report.paper_value(key, 3, "lmpc+lwc", None, "ann_top1") == ann
    # no duplicated cell
    cells = [(e["paper"], e["table"], e["method"], e["T"], e["metric"]) for e in entries]
    assert len(cells) == len(set(cells))


def test_paper_values_distinguish_tables() -> None:
    assert report.paper_value("cifar10_vgg16", 3, "lmpc+lwc", 4) == 93.28
    assert report.paper_value("cifar10_vgg16", 1, "phase1", 16) == 94.09  # Table 1 ...
    assert report.paper_value("cifar10_vgg16", 3, "phase1", 16) == 94.98  # ... differs from 3
    assert report.paper_value("cifar100_resnet20", 2, "lmpc", 16) == 71.99
    assert report.paper_value("cifar100_vgg16", 3, "opt", 4) is None  # printed as "—"


@pytest.mark.parametrize(("dataset", "model", "key"), [
    ({"_target_": "lowlat.data.CIFARDataModule", "name": "cifar100"}, {"name": "resnet20"},
     "cifar100_resnet20"),
    ({"_target_": "lowlat.data.ImageFolderDataModule", "root": "/d/cifar10-jpeg.tar.gz",
      "num_classes": 10}, {"name": "vgg16"}, "cifar10_vgg16"),
    ({"_target_": "lowlat.data.ImageFolderDataModule", "root": "/d/imagenet",
      "num_classes": 1000}, {"name": "vgg16"}, None),
    ({"_target_": "lowlat.data.DigitsDataModule"}, {"name": "small_cnn"}, None),
    (None, None, None),  # results written before eval recorded data and model
])
def test_paper_column_from_results(dataset: dict | None, model: dict | None,
                                   key: str | None) -> None:
    """The column the run's recorded data set and model match; None: no column matches, so the
    headline column is shown, saying so."""
    run = report.Run(Path("x"), {"rows": [], "dataset": dataset, "model": model})
    chosen, why = report.paper_key(run)
    assert chosen == (key or report.DEFAULT_PAPER)
    assert ("matches no paper column" in why) == (key is None)
    assert report.paper_key(run, "cifar100_vgg16")[0] == "cifar100_vgg16"
    assert report.paper_key(run, "none")[0] is None
    with pytest.raises(report.ReportError, match="valid"):
        report.paper_key(run, "mnist_lenet")


def test_cell_format() -> None:
    assert report.cell(90.0, 93.28) == "90.00 / 93.28 (-3.28)"
    assert report.cell(None, 93.28) == "— / 93.28"
    assert report.cell(12.5, None) == "12.50 / —"
    assert report.cell(None, None) == "—"


def test_report_tables(tiny_run: Path, tmp_path: Path) -> None:
    assert report.main([str(tiny_run), "--out", str(tmp_path), "--paper", "cifar10_vgg16"]) == 0
    md = (tmp_path / "report.md").read_text()
    results = json.loads((tiny_run / "results.json").read_text())
    ours = {(r["method"], r["T"]): 100 * r["top1"] for r in results["rows"]}

    t1 = _table(md, "Table 1")
    assert t1[0] == ["Method", "T=8", "T=16", "T=32", "T=64", "T=128"]
    assert [r[0] for r in t1[1:]] == ["Max Norm", "Robust Norm", "Phase I",
                                      "Robust Norm (all values) (lowlat)", "Unbiased (lowlat)"]
    assert _cell(t1, "Phase I", "T=16") == "— / 94.09"
    assert _cell(t1, "Unbiased (lowlat)", "T=8").startswith(f"{ours['unbiased', 8]:.2f} / —")
    assert "full test split, 128 images" in md
    assert _cell(t1, "Max Norm", "T=8").startswith(f"{ours['maxnorm', 8]:.2f} / 10.00 (")

    t2 = _table(md, "Table 2")
    assert t2[0] == ["Method", "T=4", "T=16"]
    assert {"Phase I", "Phase I+OptI", "Phase I+Opt"} <= {r[0] for r in t2[1:]}
    assert _cell(t2, "Phase I+Opt", "T=4") == f"{ours['opt', 4]:.2f} / —"  # no CIFAR-10 figures

    t3 = _table(md, "Table 3")
    assert t3[0] == ["Method", "ANN"] + [f"T={T}" for T in (2, 4, 8, 16, 32, 64, 128)]
    assert _cell(t3, "Phase I+LMPC+LWC", "T=4") == "— / 93.28"
    assert _cell(t3, "Phase I+LMPC+LWC", "T=2").startswith(f"{ours['lmpc+lwc', 2]:.2f} / 89.97")
    assert _cell(t3, "Phase I+LMPC+LWC", "ANN").startswith(
        f"{100 * results['ann_top1']:.2f} / 95.71")
    assert {"Phase I", "Phase I+LWC", "QCFS* [19] (L=8)"} <= {r[0] for r in t3[1:]}
    names = [r[0] for r in t3[1:]]  # lowlat's own rows come after the paper's, not in place
    assert names.index("lowlat (LMPC+LWC) (lowlat)") > names.index("Phase I+LMPC+LWC")
    assert _cell(t3, "lowlat (LMPC+LWC) (lowlat)", "T=2") == f"{ours['lowlat', 2]:.2f} / —"

    csv = (tmp_path / "tables.csv").read_text()
    assert "3,lmpc+lwc,4,,93.28," in csv


def test_accuracy_figure_plots_the_rows(tiny_run: Path) -> None:
    """Fig. 3: one solid line per method through its (T, top-1 %) rows, the paper's Table 3
    curves dashed in the same colour, the ANN as a horizontal line."""
    run = report.load_run(tiny_run)
    ax = report.plot_accuracy(run, "cifar10_vgg16").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for m in run.methods():
        rows = sorted((r["T"], 100 * r["top1"]) for r in run.results["rows"] if r["method"] == m)
        line = lines[report.label(m)]
        assert list(line.get_xdata()) == [T for T, _ in rows]
        assert list(line.get_ydata()) == pytest.approx([v for _, v in rows])
        assert line.get_linestyle() == "-"
    dashed = [m for m in ("phase1", "lwc", "lmpc+lwc") if m in run.methods()]
    assert dashed == ["phase1", "lwc", "lmpc+lwc"]
    for m in dashed:
        paper = lines[f"{report.label(m)} (paper)"]
        assert paper.get_linestyle() == "--"
        assert paper.get_color() == lines[report.label(m)].get_color()
        assert list(paper.get_ydata()) == [report.paper_value("cifar10_vgg16", 3, m, T)
                                           for T in paper.get_xdata()]
    assert list(lines["ANN"].get_ydata()) == pytest.approx([100 * run.results["ann_top1"]] * 2)
    assert len(lines) == len(run.methods()) + len(dashed) + 1
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("time steps T", "top-1 (%)")
    assert report.plot_accuracy(run).axes[0].get_title() == "Accuracy vs T"  # no paper: no dashes
    assert not any("(paper)" in str(x.get_label())
                   for x in report.plot_accuracy(run).axes[0].get_lines())


def test_layer_figures_plot_each_methods_layers(tiny_run: Path) -> None:
    """Per-layer figures at the smallest calibrated T: firing rate, one line per method; RMPE
    share, one bar group per layer for Phase I and the calibrated methods."""
    run = report.load_run(tiny_run)
    assert report.default_layer_T(run) == 2  # the smallest calibrated T of the tiny run

    ax = report.plot_firing(run).axes[0]
    assert ax.get_title() == "Firing rate per layer, T=2"
    layers = [t.get_text() for t in ax.get_xticklabels()]
    lines = {line.get_label(): line for line in ax.get_lines()}
    with_rates = [m for m in run.methods() if (run.row(m, 2) or {}).get("firing_rate")]
    assert set(lines) == {report.label(m) for m in with_rates} and len(with_rates) > 5
    for m in with_rates:
        rates = run.row(m, 2)["firing_rate"]
        assert layers == list(rates)
        assert list(lines[report.label(m)].get_ydata()) == [rates[n] for n in layers]

    ax = report.plot_rmpe(run).axes[0]
    assert ax.get_title() == "RMPE share per layer, T=2"
    shown = ["phase1", "lmpc", "lwc", "lmpc+lwc", "lowlat"]  # phase1 + the calibrated rows at T=2
    assert [c.get_label() for c in ax.containers] == [report.label(m) for m in shown]
    for m, bars in zip(shown, ax.containers, strict=True):
        share = run.row(m, 2)["rmpe_share"]
        assert [b.get_height() for b in bars] == pytest.approx(list(share.values()))


def test_write_figures(tiny_run: Path, tmp_path: Path) -> None:
    """All three PNGs for a run with layer statistics; only accuracy vs T for one without."""
    figs = report.write_figures(report.load_run(tiny_run), tmp_path / "a", "cifar10_vgg16")
    assert [p.name for p in figs] == ["accuracy_vs_T.png", "rmpe_per_layer.png",
                                      "firing_rate_per_layer.png"]
    assert all(p.is_file() for p in figs)
    bare = report.Run(Path("x"), {"rows": [{"method": "phase1", "T": 4, "top1": 0.5}]})
    assert report.plot_rmpe(bare) is None and report.plot_firing(bare) is None
    assert [p.name for p in report.write_figures(bare, tmp_path / "b")] == ["accuracy_vs_T.png"]


def test_default_out_and_paper_fallback(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    assert report.main([str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "matches no paper column" in md  # digits: compared with the headline column
    assert "Phase II: per-layer rate MSE" in md and "snn_T2_lmpc+lwc.pt" in md


def test_bad_input_exits_nonzero(tmp_path: Path) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-m", "lowlat.report", str(empty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert str(empty) in p.stderr and "results.json" in p.stderr
    assert report.main([str(tmp_path / "missing")]) == 2


def test_sweep_gathering(tiny_run: Path, tmp_path: Path) -> None:
    multirun = tmp_path / "multirun"
    for job, levels in enumerate((4, 8)):
        d = multirun / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(
            f"- stage=all\n- experiment=tiny\n- phase1.levels={levels}\n")
        shutil.copy(tiny_run / "results.json", d / "results.json")
    assert report.main([str(multirun)]) == 0
    md = (multirun / "report" / "sweep.md").read_text()
    assert "| run | phase1.levels | method |" in md and "experiment" not in md.split("|---")[0]
    assert "| `1` | `8` | lmpc+lwc |" in md
    csv = (multirun / "report" / "sweep.csv").read_text().splitlines()
    assert csv[0] == "run,phase1.levels,method,T,val_top1"  # sweeps choose on validation
    assert len(csv) == 1 + 2 * len(json.loads((tiny_run / "results.json").read_text())["rows"])
