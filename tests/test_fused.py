"""The compiled (fused) IF scan gives exactly the plain scan's spikes and membrane potential."""

import os

import hydra
import pytest
import torch

from lowlat import fused
from lowlat.convert import to_snn
from lowlat.models import create_model
from lowlat.neurons import IFNeuron, configure, reset_states, spiking_layers
from lowlat.simulate import evaluate_snn, run_snn

pytestmark = pytest.mark.skipif(not fused.available(), reason="torch.compile unsupported here")


def _neuron(theta, v0, shift, fused_flag):
    n = IFNeuron(theta=theta, fused=fused_flag)
    n.v0, n.shift = v0.clone(), shift.clone()
    return n


CL = torch.channels_last


def _run(n: IFNeuron, x: torch.Tensor, plan: list[int], b: int, static: bool,
         layout=torch.contiguous_format):
    """Feed ``x`` ([T, B, ...], or [B, ...] if static) chunk by chunk; outputs, counts, v."""
    reset_states(n)
    outs, t = [], 0
    for k in plan:
        configure(n, steps=k, batch=b, record=True)
        inp = (x if static else x[t:t + k].flatten(0, 1)).contiguous(memory_format=layout)
        with torch.no_grad():
            outs.append(n(inp))
            assert outs[-1].is_contiguous(memory_format=layout)  # read and written as it lies
        t += k
    return torch.cat(outs), n.spike_count, n.v


# Compiling costs seconds per chunk length and layout on a CPU (about 2 min for this file with a
# cold inductor cache), so the default suite compiles two graphs and the rest is marked slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("static,plan", [
    (False, [3, 5]),  # two chunks: v from v(0), then v carried over
    pytest.param(True, [3, 5], marks=SLOW),  # constant input (first layer, direct encoding)
    pytest.param(False, [8], marks=SLOW),
    pytest.param(False, [20], marks=SLOW),  # longer than fused.BLOCK: several kernels a chunk
    pytest.param(True, [20], marks=SLOW),
])
def test_fused_neuron_bit_identical(static, plan):
    g = torch.Generator().manual_seed(0)
    T, b, c = sum(plan), 5, 3
    theta = torch.tensor([1.0, 0.5, 2.0]).view(c, 1, 1)
    # inputs on a 1/8 grid: v lands exactly on θ often, so the >= tie is exercised
    x = (torch.randint(-4, 12, (b, c, 4, 4) if static else (T, b, c, 4, 4), generator=g) / 8.0)
    x = x + 1e-3 * torch.randn(x.shape, generator=g) * (torch.rand(x.shape, generator=g) < 0.5)
    v0 = torch.rand(c, 4, 4, generator=g)
    shift = torch.full((c, 1, 1), 0.0625)
    plain = _run(_neuron(theta, v0, shift, False), x, plan, b, static)
    fast = _run(_neuron(theta, v0, shift, True), x, plan, b, static)
    assert not fused._state["failed"] and fused._state["fn"] is not None
    for a, f in zip(plain, fast, strict=True):
        assert torch.equal(a, f)
    assert plain[1].sum() > 0  # something spiked


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_fused_signed_neuron_bit_identical(layout):
    """The compiled scan of a signed neuron: the same ±1 spikes, events, v and memory."""
    g = torch.Generator().manual_seed(3)
    T, b, c = 8, 5, 3
    theta = torch.tensor([1.0, 0.5, 2.0]).view(c, 1, 1)
    x = torch.randint(-8, 12, (T, b, c, 4, 4), generator=g) / 8.0
    v0, shift = theta / 2, torch.zeros(())
    res = {}
    for f in (False, True):
        n = _neuron(theta, v0, shift, f).set_signed(True)
        res[f] = (*_run(n, x, [3, 5], b, False, layout), n.count)
    assert not fused._state["failed"]
    for a, f in zip(res[False], res[True], strict=True):
        assert torch.equal(a, f)
    assert bool((res[True][0] < 0).any())  # −1 spikes were sent


@pytest.mark.parametrize("static", [False, True])
def test_fused_neuron_reads_channels_last_as_it_lies(static):
    """Channels-last activations (``phase2.finetune.channels_last``): the kernel flattens x, θ,
    v(0), the shift and v in the same H, W, C order, so spikes and v equal the plain scan's on
    the same values in the default layout, per-channel and per-neuron parameters alike."""
    g = torch.Generator().manual_seed(0)
    plan, b, c = [2, 3], 5, 3
    T = sum(plan)
    theta = torch.tensor([1.0, 0.5, 2.0]).view(c, 1, 1)
    x = torch.randint(-4, 12, (b, c, 4, 4) if static else (T, b, c, 4, 4), generator=g) / 8.0
    v0, shift = torch.rand(c, 4, 4, generator=g), torch.full((c, 1, 1), 0.0625)
    plain = _run(_neuron(theta, v0, shift, False), x, plan, b, static)
    fast = _run(_neuron(theta, v0, shift, True), x, plan, b, static, layout=CL)
    assert not fused._state["failed"]
    for a, f in zip(plain, fast, strict=True):
        assert torch.equal(a, f)
    assert plain[1].sum() > 0


@SLOW
def test_fused_network_bit_identical():
    torch.manual_seed(0)
    qc = create_model("vgg16", num_classes=10, act_layer="qc", width=0.125).eval()
    snn = to_snn(qc).eval()
    x = torch.randn(4, 3, 32, 32)
    res = {}
    for flag in (False, True):
        out = run_snn(snn, x, 12, chunk=8, record=True, fused=flag)  # chunks 8 + 4
        res[flag] = (out, [(m.spike_count.clone(), m.v.clone()) for _, m in spiking_layers(snn)])
    assert torch.equal(res[False][0], res[True][0])
    for (c0, v0), (c1, v1) in zip(res[False][1], res[True][1], strict=True):
        assert torch.equal(c0, c1) and torch.equal(v0, v1)
    assert sum(float(c.sum()) for c, _ in res[True][1]) > 0
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    acc = [evaluate_snn(snn, batches, [1, 4, 12], max_chunk=8, fused=f, progress=False)
           for f in (False, True)]
    assert acc[0].spikes == acc[1].spikes and acc[0].rmpe == acc[1].rmpe


def _train_case(fused_flag: bool, static: bool, plan: list[int], neurons: bool,
                scaled: bool = False, layout=torch.contiguous_format, signed: bool = False):
    """One IF layer under BPTT (surrogate on), fed chunk by chunk; its outputs and gradients."""
    g = torch.Generator().manual_seed(1)
    T, b, c = sum(plan), 4, 3
    n = IFNeuron(theta=torch.tensor([1.0, 0.5, 2.0]).view(c, 1, 1)).set_signed(signed)
    n.v0, n.shift = torch.rand(c, 4, 4, generator=g) * 0.5, torch.full((c, 1, 1), 0.0625)
    n.surrogate, n.fused_train, n.gamma = True, fused_flag, 0.8
    n.scaled_surrogate = scaled  # finetune(surrogate="scaled"): the triangle divided by θ
    if neurons:  # finetune(neurons=True): θ, amplitude and v(0) learn
        for p in (n.theta, n.amplitude, n.v0):
            p.requires_grad_(True)
    x = torch.randn((b, c, 4, 4) if static else (T, b, c, 4, 4), generator=g).requires_grad_()
    w = torch.randn(T, b, c, 4, 4, generator=g)
    reset_states(n)
    outs, t = [], 0
    for k in plan:  # the membrane state carries the graph from one chunk to the next
        configure(n, steps=k, batch=b)
        inp = (x if static else x[t:t + k].flatten(0, 1)).contiguous(memory_format=layout)
        outs.append(n(inp).reshape(k, b, c, 4, 4))
        t += k
    y = torch.cat(outs)
    ((y * w).sum() + n.v.square().sum()).backward()  # a gradient into v(T) as well
    grads = [x.grad] + ([n.theta.grad, n.amplitude.grad, n.v0.grad] if neurons else [])
    return y.detach(), grads


@pytest.mark.parametrize("static,plan,neurons,scaled", [
    (False, [2, 3], True, False),
    (False, [2, 3], True, True),
    (True, [3], False, False),  # constant input: its gradient sums the steps
    pytest.param(False, [20], True, False, marks=SLOW),  # longer than fused.BLOCK
])
def test_fused_training_kernels_give_the_plain_graphs_gradients(static, plan, neurons, scaled):
    y0, g0 = _train_case(False, static, plan, neurons, scaled)
    y1, g1 = _train_case(True, static, plan, neurons, scaled)
    assert fused._train_state["bwd"] is not None and not fused._state["failed"]
    assert torch.equal(y0, y1) and y0.sum() > 0  # the same spikes
    for a, f in zip(g0, g1, strict=True):  # the same gradients up to float rounding
        assert a.abs().sum() > 0
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("static,plan,layout", [
    (False, [2, 3], torch.contiguous_format), (False, [5], CL),
    (True, [3], torch.contiguous_format)])
def test_fused_training_kernels_of_signed_neurons_give_the_plain_graphs_gradients(static, plan,
                                                                                  layout):
    y0, g0 = _train_case(False, static, plan, True, True, signed=True)
    y1, g1 = _train_case(True, static, plan, True, True, layout=layout, signed=True)
    assert not fused._state["failed"]
    assert torch.equal(y0, y1)  # the same spikes
    for a, f in zip(g0, g1, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-5)
    if not static:  # a constant input never takes a spike back; this uneven one does
        assert bool((y0 < 0).any())
        assert not torch.equal(_train_case(False, static, plan, True, True)[0], y0)


@pytest.mark.parametrize("static", [False, True])
def test_fused_training_kernels_read_channels_last(static):
    y0, g0 = _train_case(False, static, [2, 3], True)
    y1, g1 = _train_case(True, static, [2, 3], True, layout=CL)
    assert torch.equal(y0, y1) and y0.sum() > 0
    for a, f in zip(g0, g1, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-5)


def test_finetune_with_fused_kernels_learns_and_says_so():
    from itertools import cycle

    from torch import nn

    from lowlat.activations import QCActivation
    from lowlat.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), QCActivation(levels=4, shift=0.5, init_lambda=1.0),
                        nn.Linear(32, 3)).eval()
    x = torch.rand(512, 8) * 2
    y = (x @ torch.randn(8, 3)).argmax(1)
    snn = to_snn(net)

    def acc(s):
        return float((run_snn(s, x[384:], 2).mean(0).argmax(1) == y[384:]).float().mean())

    start = acc(snn)
    cfg = FinetuneConfig(iterations=100, lr=5e-3, batch_size=64, kd=0.0, eval_every=50,
                         neurons=True, fused=True)
    rep = finetune(snn, cycle([(x[i:i + 64], y[i:i + 64]) for i in range(0, 384, 64)]), 2, cfg,
                   acc, progress=False)
    assert rep["ft_fused"] and rep["ft_val_best"] >= start + 0.2, rep
    assert not any(m.fused_train or m.surrogate for _, m in spiking_layers(snn))


@pytest.mark.parametrize("backward,frozen", [("bptt", 0), ("rate", 0), ("bptt", 1)])
def test_channels_last_finetune_takes_the_same_steps(backward, frozen):
    """``channels_last``: how the steps are computed, not what they compute: the weights after
    a few steps equal the default layout's up to float rounding, and come back contiguous."""
    from lowlat.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    qc = create_model("small_cnn", 4, 3, "qc", width=8).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
               for _ in range(3)]
    teacher = create_model("small_cnn", 4, 3, "relu", width=8).eval()
    out = {}
    for cl in (False, True):
        snn = to_snn(qc)
        cfg = FinetuneConfig(iterations=3, lr=1e-2, batch_size=8, eval_every=10, neurons=True,
                             channels_last=cl, backward=backward, frozen=frozen)
        rep = finetune(snn, iter(batches), 2, cfg, lambda s: 0.0, teacher=teacher,
                       progress=False, start=-1.0)  # every check "wins": the last state is kept
        assert rep["ft_channels_last"] is cl
        out[cl] = snn.state_dict()
        assert all(t.is_contiguous() for t in out[cl].values())
        assert all(t.is_contiguous() for t in teacher.state_dict().values())
    moved = 0
    for k, v in out[False].items():
        torch.testing.assert_close(out[True][k], v, rtol=1e-4, atol=1e-5)
        moved += int(not torch.equal(v, to_snn(qc).state_dict()[k]))
    assert moved > 0  # the steps changed something


def test_training_compile_failure_falls_back(monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(fused._train_state, "fwd", broken)
    monkeypatch.setitem(fused._train_state, "bwd", broken)
    monkeypatch.setitem(fused._state, "failed", False)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        y1, g1 = _train_case(True, False, [2], True)
    y0, g0 = _train_case(False, False, [2], True)
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    assert not fused.available()


def test_compile_failure_falls_back(monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(fused._state, "fn", broken)
    monkeypatch.setitem(fused._state, "failed", False)
    n = IFNeuron(theta=1.0, fused=True)
    x = torch.rand(4, 6)
    configure(n, steps=2, batch=2)
    with pytest.warns(RuntimeWarning, match="no compiler"), torch.no_grad():
        y = n(x)
    ref = IFNeuron(theta=1.0, fused=False)
    configure(ref, steps=2, batch=2)
    with torch.no_grad():
        assert torch.equal(y, ref(x))
    assert not fused.available()


def test_env_default(monkeypatch):
    monkeypatch.setenv("LOWLAT_FUSED", "1")
    assert fused.default_enabled()
    monkeypatch.setenv("LOWLAT_FUSED", "0")
    assert not fused.default_enabled()


def test_config_key_sets_env(monkeypatch):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    monkeypatch.delenv("LOWLAT_FUSED", raising=False)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        for flag in (False, True):
            c = compose("config", overrides=[f"eval.fused={flag}"], return_hydra_config=True)
            cb = hydra.utils.instantiate(c.hydra.callbacks.fused)
            cb.on_job_start(config=c)
            assert fused.default_enabled() is flag
            cb.on_job_end(config=c, job_return=None)
            assert "LOWLAT_FUSED" not in os.environ


@SLOW
def test_eval_fused_key_end_to_end(tiny_run, tmp_path, monkeypatch):
    """``eval.fused=true`` on the CLI reaches the neurons (Hydra callback) and changes nothing."""
    import shutil

    monkeypatch.setenv("TORCH_LOGS", "recompiles")  # evidence that the kernel was compiled

    from tests.conftest import run_cli

    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    for name in ("ann.pt", "qcann.pt", "ratenorm.pt"):  # up to date: only phase2 and eval run
        shutil.copy(tiny_run / name, run / name)
    r = run_cli("stage=all", "experiment=tiny", f"paths.root_dir={tmp_path}", "eval.fused=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "_scan" in r.stderr and "FusedFromConfig" not in r.stderr
    assert (run / "results.csv").read_text() == (tiny_run / "results.csv").read_text()
