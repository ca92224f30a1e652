"""End-to-end fine-tuning of a calibrated SNN (lowlat.finetune, method lowlat-ft): it learns,
keeps the best state on validation (never ends below its start), leaves the neurons' thresholds
and flags as they were, refuses bad settings, and runs through stages phase2 and eval."""

from __future__ import annotations

import copy
import shutil
from itertools import cycle
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from lowlat.activations import QCActivation
from lowlat.artifacts import load_artifact, snn_name
from lowlat.convert import to_snn
from lowlat.finetune import FinetuneConfig, finetune, frozen_prefix, lr_factor
from lowlat.methods import load_snn, recipe
from lowlat.neurons import spiking_layers
from lowlat.simulate import run_snn
from lowlat.stages import evaluate, phase2
from lowlat.stages.common import ConfigError, Context, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
T = 2
# The logic tests run the neurons' autograd graph: compiling the kernels (lowlat.fused, the
# default) costs more than these few steps; tests/test_fused.py checks the kernels and a fine-tune
# that uses them.
PLAIN = {"fused": False}


def _task(seed: int = 0):
    """A 4-level QC network and labels from a different (linear) rule it has to learn."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 32), QCActivation(levels=4, shift=0.5, init_lambda=1.0),
                        nn.Linear(32, 32), QCActivation(levels=4, shift=0.5, init_lambda=1.0),
                        nn.Linear(32, 3)).eval()
    w = torch.randn(8, 3)
    x = torch.rand(1024, 8) * 2
    return net, x[:768], (x[:768] @ w).argmax(1), x[768:], (x[768:] @ w).argmax(1)


def _acc(snn, x, y) -> float:
    return float((run_snn(snn, x, T).mean(0).argmax(1) == y).float().mean())


def _batches(x, y, size=64):
    return cycle([(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)])


def test_finetune_learns_and_keeps_the_best_state():
    net, xt, yt, xv, yv = _task()
    snn = to_snn(net)
    theta = {n: m.theta.clone() for n, m in spiking_layers(snn)}
    req = [p.requires_grad for p in snn.parameters()]
    start = _acc(snn, xv, yv)
    cfg = FinetuneConfig(iterations=150, lr=5e-3, batch_size=64, kd=0.0, eval_every=50,
                         **PLAIN)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: _acc(s, xv, yv), progress=False)
    assert rep["ft_val_start"] == pytest.approx(start)
    assert rep["ft_val_best"] >= start + 0.3, rep  # a new rule is learnt through the spikes
    assert _acc(snn, xv, yv) == pytest.approx(rep["ft_val_best"])  # ends in the best state
    assert rep["ft_loss_last"] < rep["ft_loss_first"] and not rep["ft_diverged"]
    assert set(rep["ft_val_curve"]) == {"0", "50", "100", "150"}
    for n, m in spiking_layers(snn):  # only weights and biases move; flags restored
        assert torch.equal(m.theta, theta[n]) and not m.surrogate
    assert [p.requires_grad for p in snn.parameters()] == req
    assert all(p.grad is None for p in snn.parameters())
    assert not snn.training


def test_finetune_can_learn_the_neurons_too():
    net, xt, yt, xv, yv = _task(3)
    snn = to_snn(net)
    for _, m in spiking_layers(snn):
        m.v0 = torch.full((32,), 0.5)  # per neuron, as LMPC leaves it
    before = {n: (m.theta.clone(), m.amplitude.clone(), m.v0.clone())
              for n, m in spiking_layers(snn)}
    cfg = FinetuneConfig(iterations=40, lr=5e-2, batch_size=64, kd=0.0, eval_every=40,
                         neurons=True, **PLAIN)
    finetune(snn, _batches(xt, yt), T, cfg, lambda s: 1.0 + float(s.get_submodule("1").v0.std()),
             progress=False)  # every check "better": the last state is kept
    for n, m in spiking_layers(snn):
        th, amp, v0 = before[n]
        assert not torch.equal(m.v0, v0) and not torch.equal(m.theta, th), n
        assert not m.theta.requires_grad and not m.v0.requires_grad
        assert bool((m.theta >= 0.05 * th - 1e-7).all()) and bool((m.amplitude > 0).all())
    assert "neurons" not in FinetuneConfig().fingerprint()  # older artifacts stay valid
    assert FinetuneConfig(neurons=True).fingerprint()["neurons"] is True


def test_a_frozen_prefix_keeps_its_layers_and_never_runs_their_backward():
    net, xt, yt, xv, yv = _task(4)
    snn = to_snn(net)
    assert frozen_prefix(snn, 1) == ["0", "1"]  # the first layer and the neurons after it
    assert frozen_prefix(snn, 2) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match=r"phase2.finetune.frozen=3.*3 conv/linear.*0 to 2"):
        frozen_prefix(snn, 3)
    before = copy.deepcopy(snn.state_dict())
    req = [p.requires_grad for p in snn.parameters()]
    calls = {"0": 0, "2": 0}
    for name in calls:
        snn.get_submodule(name).register_full_backward_hook(
            lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    cfg = FinetuneConfig(iterations=20, lr=5e-2, batch_size=64, kd=0.0, eval_every=20,
                         neurons=True, frozen=1, **PLAIN)
    finetune(snn, _batches(xt, yt), T, cfg, lambda s: 1.0 + float(s.get_submodule("2").bias[0]),
             progress=False)  # every check "better": the last state is kept
    after = snn.state_dict()
    learnt = [k for k in before if k.endswith(("weight", "bias", "theta", "amplitude", "v0"))]
    assert len(learnt) == 12  # 3 layers × (weight, bias), 2 IF layers × (θ, amplitude, v0)
    for k in learnt:  # the prefix (layer 0 and its neurons) as it was, everything else learnt
        assert torch.equal(after[k], before[k]) == k.startswith(("0.", "1.")), k
    assert calls == {"0": 0, "2": 20}  # no backward through the frozen layer at all
    assert [p.requires_grad for p in snn.parameters()] == req
    assert "frozen" not in FinetuneConfig().fingerprint()  # older artifacts stay valid
    assert FinetuneConfig(frozen=2).fingerprint()["frozen"] == 2
    with pytest.raises(ValueError, match="frozen"):
        FinetuneConfig(frozen=-1)


@pytest.mark.parametrize("backward", ["rate", "rate_weights"])
def test_finetune_with_the_rate_backward_learns(backward):
    """lowlat.ratebackward: other gradients for the layers between the neurons, still a descent
    direction that learns the task; refused with bf16."""
    net, xt, yt, xv, yv = _task()
    snn = to_snn(net)
    start = _acc(snn, xv, yv)
    cfg = FinetuneConfig(iterations=150, lr=5e-3, batch_size=64, kd=0.0, eval_every=50,
                         backward=backward, **PLAIN)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: _acc(s, xv, yv), progress=False)
    assert rep["ft_val_best"] >= start + 0.3, rep
    assert rep["ft_loss_last"] < rep["ft_loss_first"]
    assert all("forward" not in vars(m) for m in snn.modules())  # layers restored
    assert FinetuneConfig(backward=backward).fingerprint()["backward"] == backward
    assert "backward" not in FinetuneConfig().fingerprint()  # older artifacts stay valid
    with pytest.raises(ValueError, match="fp32 only"):
        FinetuneConfig(backward=backward, precision="bf16")


def test_finetune_in_bf16_learns_and_keeps_float32_state():
    net, xt, yt, xv, yv = _task()
    snn = to_snn(net)
    start = _acc(snn, xv, yv)
    cfg = FinetuneConfig(iterations=150, lr=5e-3, batch_size=64, kd=0.5, eval_every=50,
                         precision="bf16", **PLAIN)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: _acc(s, xv, yv), teacher=net,
                   progress=False)
    assert rep["ft_val_best"] >= start + 0.3, rep  # learns through bf16 linear layers
    assert all(v.dtype == torch.float32 for v in snn.state_dict().values()
               if v.is_floating_point())  # (and each neuron's bool `signed` flag)
    neuron = next(m for _, m in spiking_layers(snn))
    neuron.steps, neuron.batch = T, 4
    with torch.autocast("cpu", torch.bfloat16):  # a bf16 input does not round the membrane
        neuron(torch.rand(T * 4, 32, dtype=torch.bfloat16, requires_grad=True))
    assert neuron.v.dtype == torch.float32
    assert FinetuneConfig(precision="bf16").fingerprint()["precision"] == "bf16"
    assert "precision" not in FinetuneConfig().fingerprint()  # older artifacts stay valid


def test_finetune_never_ends_below_its_start():
    net, xt, yt, xv, yv = _task(1)
    snn = to_snn(net)
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    scores = iter([0.9, 0.5, 0.4, 0.3])  # every check is worse than the start
    cfg = FinetuneConfig(iterations=30, lr=1e-2, batch_size=64, kd=0.0, eval_every=10,
                         **PLAIN)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: next(scores), progress=False)
    assert rep["ft_val_best"] == 0.9 and rep["ft_best_iteration"] == 0
    for k, v in snn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_finetune_with_a_teacher_and_its_refusals():
    net, xt, yt, xv, yv = _task(2)
    snn = to_snn(net)
    cfg = FinetuneConfig(iterations=20, lr=1e-3, batch_size=64, kd=1.0, eval_every=10,
                         **PLAIN)
    with pytest.raises(ValueError, match="needs a teacher"):
        finetune(snn, _batches(xt, yt), T, cfg, lambda s: 0.0, progress=False)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: _acc(s, xv, yv), teacher=net,
                   progress=False)
    assert rep["ft_loss_last"] < rep["ft_loss_first"]  # KL to the teacher falls
    bad = cycle([(torch.full((64, 8), float("nan")), yt[:64])])
    with pytest.raises(FloatingPointError, match="phase2.finetune.lr"):
        finetune(snn, bad, T, cfg, lambda s: 0.0, teacher=net, progress=False)
    for kw, key in [({"iterations": 0}, "iterations"), ({"kd": 1.5}, "kd"), ({"lr": 0.0}, "lr")]:
        with pytest.raises(ValueError, match=key):
            FinetuneConfig(**kw)


def _ctx(root: Path, *overrides: str) -> Context:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tiny", f"paths.root_dir={root}",
                                           "logger={}", *overrides])
    return Context.from_cfg(cfg)


FT = ["phase2.methods=[lowlat-lmpc,lowlat-ft]", "phase2.timesteps=[2]", "eval.timesteps=[2]",
      "eval.methods=[lowlat-lmpc,lowlat-ft]", "phase2.finetune.iterations=6",
      "phase2.finetune.eval_every=3", "phase2.finetune.batch_size=32"]


def test_stage_phase2_fine_tunes_and_eval_reads_it(tiny_run, tmp_path):
    shutil.copytree(tiny_run.parent.parent, tmp_path / "run")
    ctx = _ctx(tmp_path / "run", *FT)
    assert recipe("lowlat-ft").finetune and not recipe("lowlat-lmpc").finetune
    phase2.run_phase2(ctx)
    lm = load_artifact(ctx.run_dir / snn_name(2, "lowlat-lmpc"), "snn")
    ft = load_artifact(ctx.run_dir / snn_name(2, "lowlat-ft"), "snn")
    m = ft["metrics"]
    # the fine-tune starts from the same LMPC pass: its start is lowlat-lmpc's score
    assert m["val_top1_before_ft"] == pytest.approx(lm["metrics"]["val_top1"])
    assert m["val_top1"] >= m["val_top1_before_ft"]
    assert m["layers"][-1]["layer"] == "finetune" and ft["recipe"]["finetune"]["iterations"] == 6
    assert ft["fingerprint"] != lm["fingerprint"]
    load_snn(ft)  # self-describing: rebuilds without the config
    assert phase2.run_phase2(ctx) == {}  # up to date: nothing redone
    ctx2 = _ctx(tmp_path / "run", *FT[:-1], "phase2.finetune.batch_size=16")
    assert set(phase2.run_phase2(ctx2)) == {"lowlat-ft/T2"}  # its budget is in its fingerprint
    bf16 = _ctx(tmp_path / "run", *FT[:-1], "phase2.finetune.batch_size=16",
                "phase2.finetune.precision=bf16")
    assert phase2.artifact_fp(bf16, "lowlat-ft", 2, "s") != phase2.artifact_fp(ctx2, "lowlat-ft",
                                                                             2, "s")
    res = evaluate.run_eval(ctx2)
    assert {r["method"] for r in res["rows"]} == {"lowlat-lmpc", "lowlat-ft"}


@pytest.mark.parametrize("key", ["precision", "warmup", "seed", "frozen", "backward"])
def test_options_at_their_default_leave_older_fingerprints(tmp_path, key):
    """Artifacts fine-tuned before an option existed stay up to date; a change is seen."""
    from omegaconf import open_dict

    ctx = _ctx(tmp_path, *FT)
    now = phase2.artifact_fp(ctx, "lowlat-ft", 2, "src", teacher_fp="t")
    with open_dict(ctx.cfg):
        del ctx.cfg.phase2.finetune[key]  # a config from before the option
    assert phase2.artifact_fp(ctx, "lowlat-ft", 2, "src", teacher_fp="t") == now
    with open_dict(ctx.cfg):
        ctx.cfg.phase2.finetune[key] = {"precision": "bf16", "warmup": 2, "seed": 1,
                                        "frozen": 2, "backward": "rate"}[key]
    assert phase2.artifact_fp(ctx, "lowlat-ft", 2, "src", teacher_fp="t") != now


def test_fused_kernels_never_enter_a_fingerprint(tmp_path):
    """How the steps run (compiled kernels or the plain graph) is not what they compute."""
    from omegaconf import open_dict

    ctx = _ctx(tmp_path, *FT)
    now = phase2.artifact_fp(ctx, "lowlat-ft", 2, "src", teacher_fp="t")
    for val in (False, True, None):
        with open_dict(ctx.cfg):
            if val is None:
                del ctx.cfg.phase2.finetune["fused"]  # a config from before the option
            else:
                ctx.cfg.phase2.finetune["fused"] = val
        assert phase2.artifact_fp(ctx, "lowlat-ft", 2, "src", teacher_fp="t") == now, val
    assert "fused" not in FinetuneConfig(fused=False).fingerprint()
    assert FinetuneConfig().fused and OmegaConf.load(CONF / "config.yaml").phase2.finetune.fused
    assert not phase2.finetune_config(_ctx(tmp_path, *FT)).fused  # experiment=tiny: too short
    assert phase2.finetune_config(_ctx(tmp_path, *FT, "phase2.finetune.fused=true")).fused
    assert not phase2.finetune_config(_ctx(tmp_path, *FT, "phase2.finetune.fused=false")).fused


def test_a_frozen_prefix_too_long_for_the_network_is_refused_before_any_work(tiny_run,
                                                                            tmp_path):
    shutil.copytree(tiny_run.parent.parent, tmp_path / "run")
    ctx = _ctx(tmp_path / "run", *FT, "phase2.finetune.frozen=99")
    files = sorted(p.name for p in ctx.run_dir.iterdir())
    with pytest.raises(ConfigError, match=r"phase2.finetune.frozen=99.*valid: 0 to"):
        phase2.run_phase2(ctx)
    assert sorted(p.name for p in ctx.run_dir.iterdir()) == files  # nothing written
    assert phase2.finetune_config(_ctx(tmp_path, *FT, "phase2.finetune.frozen=2")).frozen == 2


def test_a_frozen_prefix_too_long_for_the_configured_model_is_refused_at_validation():
    """Before stage ann trains anything: the configured model is built from its name."""
    def cfg(k: int):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("config", overrides=["experiment=tiny", f"phase2.finetune.frozen={k}",
                                                "phase2.methods=[lowlat-ft]",
                                                "eval.methods=[lowlat-ft]"])
    with pytest.raises(ConfigError, match=r"phase2.finetune.frozen=99: .* valid: 0 to"):
        validate(cfg(99))
    validate(cfg(1))


def test_the_rate_backward_in_bf16_is_refused_by_name():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tiny", "phase2.finetune.backward=rate",
                                           "phase2.finetune.precision=bf16"])
    with pytest.raises(ConfigError, match="phase2.finetune.backward=rate runs in fp32 only"):
        validate(cfg)


def test_the_fine_tune_seed_is_read_and_defaults_to_the_runs(tmp_path):
    assert phase2.finetune_config(_ctx(tmp_path, *FT)).seed is None  # the run's seed
    assert phase2.finetune_config(_ctx(tmp_path, *FT, "phase2.finetune.seed=3")).seed == 3


def test_warmup_rises_linearly_then_follows_the_cosine():
    cfg = FinetuneConfig(iterations=10, warmup=4)
    f = [lr_factor(i, cfg) for i in range(10)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and f[4] == 1.0
    assert all(a > b for a, b in zip(f[4:], f[5:], strict=False)) and f[-1] > 0
    plain = FinetuneConfig(iterations=10)  # no warm-up: torch's cosine schedule, step for step
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for i in range(10):
        assert lr_factor(i, plain) == pytest.approx(cos.get_last_lr()[0])
        opt.step()
        cos.step()


@pytest.mark.parametrize("key,val", [("iterations", 0), ("kd", 2), ("lr", 0), ("batch_size", -1),
                                     ("neurons", "'yes'"), ("fused", "'yes'"),
                                     ("precision", "fp16"),
                                     ("warmup", -1), ("warmup", 10**6), ("seed", -1),
                                     ("seed", "'a'"), ("frozen", -1), ("frozen", 1.5),
                                     ("frozen", "'a'"), ("frozen", "true"),
                                     ("backward", "sgd"), ("surrogate", "fast")])
def test_bad_finetune_settings_are_refused_by_name(key, val):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tiny", f"phase2.finetune.{key}={val}"])
    with pytest.raises(ConfigError, match=f"phase2.finetune.{key}"):
        validate(cfg)


def test_options_added_later_are_recorded_with_their_defaults():
    from lowlat.finetune import ADDED_LATER

    moved = {"surrogate"}  # defaults changed since, on validation evidence (README, lever 8)
    for key, default in ADDED_LATER.items():
        assert (getattr(FinetuneConfig(), key) == default) != (key in moved), key
    assert "surrogate" not in FinetuneConfig(surrogate="eq15").fingerprint()
    assert FinetuneConfig().fingerprint()["surrogate"] == "scaled"


def _if_grad(c: float, surrogate: str) -> torch.Tensor:
    """d loss / d x through one IF layer over 4 steps (time-varying input), with θ, amplitude
    and input all scaled by ``c`` and the loss divided by it: the spikes and the loss are the
    same for every c."""
    from lowlat.neurons import IFNeuron, configure, reset_states

    g = torch.Generator().manual_seed(0)
    n = IFNeuron(torch.full((6,), 1.0) * c)
    n.surrogate, n.scaled_surrogate = True, surrogate == "scaled"
    x = (torch.rand(4 * 8, 6, generator=g) * 2.0 * c).requires_grad_()
    w = torch.randn(4 * 8, 6, generator=g)
    reset_states(n)
    configure(n, steps=4, batch=8)
    ((n(x) * w).sum() / c).backward()
    return x.grad


def test_the_scaled_surrogate_is_invariant_to_the_threshold_scale():
    """A network whose thresholds (and inputs) are c times larger spikes the same; with the
    scaled triangle its gradients are the exact 1/c of the unit network's, as the chain rule
    of y(x) = c·y₁(x/c) says. The printed triangle (eq. 15 on v/θ) gives c times that: the
    gain through each neuron and its reset grows with θ (at θ·γ > 2 the reset path amplifies
    the gradient from step to step, which is why fine-tunes of large-θ networks diverged)."""
    g1, g4 = _if_grad(1.0, "scaled"), _if_grad(4.0, "scaled")
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g4, g1 / 4, rtol=1e-4, atol=1e-6)
    e1, e4 = _if_grad(1.0, "eq15"), _if_grad(4.0, "eq15")
    torch.testing.assert_close(e1, g1)  # at θ = 1 the two are one
    assert e4.abs().max() > 4 * g4.abs().max()  # the printed one's gradient grows with θ



def test_artifacts_fine_tuned_before_the_surrogate_option_are_valid_only_with_eq15(tmp_path):
    """Their fingerprint has no surrogate key: the same as a config that says eq15 (what they
    were made with); under the new default (scaled) they are stale and are made again."""
    eq15 = _ctx(tmp_path, *FT, "phase2.finetune.surrogate=eq15")
    default = _ctx(tmp_path / "d", *FT)
    assert default.cfg.phase2.finetune.surrogate == "scaled"
    assert "surrogate" not in phase2.finetune_config(eq15).fingerprint()
    assert phase2.artifact_fp(eq15, "lowlat-ft", 2, "s", teacher_fp="t") != phase2.artifact_fp(
        default, "lowlat-ft", 2, "s", teacher_fp="t")


class _ViewHead(nn.Module):
    """A user-style CNN whose forward flattens with .view (fine in the default layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = QCActivation(levels=2, shift=0.5, init_lambda=1.0)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


def test_channels_last_refusals_name_the_cause():
    """``channels_last`` on a model it cannot serve: a 3-d conv is refused before any change;
    an activation reshaped with .view() stops with the option and the fix in the message, and
    the weights are back in the default layout either way."""
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    cfg = FinetuneConfig(iterations=2, batch_size=4, kd=0.0, eval_every=5, channels_last=True)
    snn = to_snn(_ViewHead().eval())
    with pytest.raises(RuntimeError, match=r"channels_last=true.*\.view\(\).*reshape"):
        finetune(snn, cycle([(x, y)]), 2, cfg, lambda s: 0.0, progress=False, start=0.0)
    assert snn.conv.weight.is_contiguous()
    ok = FinetuneConfig(iterations=2, batch_size=4, kd=0.0, eval_every=5)
    finetune(snn, cycle([(x, y)]), 2, ok, lambda s: 0.0, progress=False, start=0.0)  # default
    net3d = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), QCActivation(2, 0.5, init_lambda=1.0),
                          nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 3)).eval()
    snn3d = to_snn(net3d)
    before = copy.deepcopy(snn3d.state_dict())
    with pytest.raises(ValueError, match=r"'0.weight' is 5-d.*channels_last=false"):
        finetune(snn3d, cycle([(torch.randn(4, 1, 4, 4, 4), y)]), 2, cfg, lambda s: 0.0,
                 progress=False, start=0.0)
    assert all(torch.equal(v, before[k]) for k, v in snn3d.state_dict().items())


def test_finetune_learns_through_signed_neurons():
    """The take-back spikes are in the graph (their surrogate carries gradient) and the state
    that comes back is still signed."""
    net, xt, yt, xv, yv = _task(5)
    from lowlat.methods import convert

    snn = convert("signed", net)
    start = _acc(snn, xv, yv)
    cfg = FinetuneConfig(iterations=150, lr=5e-3, batch_size=64, kd=0.0, eval_every=50,
                         **PLAIN)
    rep = finetune(snn, _batches(xt, yt), T, cfg, lambda s: _acc(s, xv, yv), progress=False)
    assert rep["ft_val_best"] >= start + 0.3, rep
    assert all(m.is_signed for _, m in spiking_layers(snn))


def test_stage_phase2_fine_tunes_the_signed_start_without_lmpc(tiny_run, tmp_path):
    shutil.copytree(tiny_run.parent.parent, tmp_path / "run")
    sft = ["phase2.methods=[lowlat-ft-signed]", "eval.methods=[signed,lowlat-ft-signed]",
           *[o for o in FT if not o.startswith(("phase2.methods", "eval.methods"))]]
    ctx = _ctx(tmp_path / "run", *sft, "phase2.lowlat.start=opti")
    r = recipe("lowlat-ft-signed", {"start": "opti"})
    assert r.start == "signed" and not r.lmpc and not r.lwc and r.finetune  # its own start
    phase2.run_phase2(ctx)
    art = load_artifact(ctx.run_dir / snn_name(2, "lowlat-ft-signed"), "snn")
    assert [x["layer"] for x in art["metrics"]["layers"]] == ["finetune"]  # no layer pass
    assert art["recipe"]["start"] == "signed"
    assert all(m.is_signed for _, m in spiking_layers(load_snn(art)))
    res = evaluate.run_eval(ctx)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"signed", "lowlat-ft-signed"}
    # the fine-tune starts from the signed conversion's validation score and never ends below
    assert art["metrics"]["val_top1_before_ft"] == pytest.approx(rows["signed"]["val_top1"])
    assert rows["lowlat-ft-signed"]["val_top1"] >= rows["signed"]["val_top1"]
