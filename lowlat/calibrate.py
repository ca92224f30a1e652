"""Phase II: layer-wise calibration of the initial membrane potential (LMPC) and weights (LWC).

Both walk the spiking layers in order; layer l is calibrated on the spikes of the already
calibrated layers before it, against the QC-ANN's activation ``h^l`` on the same images.

* LMPC (paper eq. 13): ``v^l(0) = (T/N)·Σ_n |h − φ|`` as printed (``formula='abs'``), or the
  sign-preserving ``v^l(0) = T·mean_n(h − φ)`` (``'signed'``, Li et al. 2021), per neuron or per
  channel, added to the v(0) the network was converted with (the start: 0 = s·θ for Phase I,
  θ/2 for OptI), from which φ is measured.
* LWC (eqs. 14-17): minimise ``mean((θ·count/T − h)^2)`` over the weights feeding layer l, by
  BPTT through the T steps with the triangle surrogate. ``accept='always'`` keeps every update
  (the paper); ``'mse'`` discards a layer's update that raises its MSE on the calibration set.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lowlat.head import HEAD_LOSSES, calibrate_head
from lowlat.neurons import SURROGATES, IFNeuron, configure, reset_states, spiking_layers
from lowlat.simulate import chunk_plan


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def _capture(module: nn.Module, store: dict, stop: bool = True):
    def hook(_m, _i, out):
        store["out"] = out
        if stop:
            raise _Stop
    return module.register_forward_hook(hook)


@torch.no_grad()
def ann_activation(ann: nn.Module, name: str, x: Tensor) -> Tensor:
    """The QC-ANN's activation ``h^l`` at layer ``name`` for inputs ``x``."""
    store: dict = {}
    h = _capture(ann.get_submodule(name), store)
    try:
        ann(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return store["out"]


def snn_rate(snn: nn.Module, name: str, x: Tensor, T: int, max_chunk: int = 16) -> Tensor:
    """``φ^l = amplitude·count/T`` of layer ``name`` after T steps (gradients kept if enabled)."""
    neuron = snn.get_submodule(name)
    assert isinstance(neuron, IFNeuron)
    b = x.shape[0]
    reset_states(snn)
    store: dict = {}
    h = _capture(neuron, store)
    total = None
    try:
        for k in chunk_plan([T], max_chunk):
            configure(snn, steps=k, batch=b)
            try:
                snn(x)
            except _Stop:
                pass
            s = store["out"].view(k, b, *store["out"].shape[1:]).sum(0)  # [k·B, ...] -> [B, ...]
            total = s if total is None else total + s
    finally:
        h.remove()
    return total / T


@dataclass
class LayerReport:
    name: str
    mse_before: float
    mse_after: float
    kept: bool = True


def _batches(xs: Tensor, size: int) -> list[Tensor]:
    return [xs[i:i + size] for i in range(0, xs.shape[0], size)]


@torch.no_grad()
def _measure(snn, ann, name: str, xs: Tensor, T: int, batch: int, formula: str = "signed",
             max_chunk: int = 16) -> tuple[Tensor, float]:
    """One pass over ``xs``: the mean over the images of ``h − φ`` (or ``|h − φ|``) per neuron
    (``[C, H, W]`` or ``[F]``) and the layer's rate MSE, so LMPC's error and the report's MSE
    cost one simulation, not two."""
    err_sum, sq, n, numel = None, 0.0, 0, 0
    for x in _batches(xs, batch):
        e = ann_activation(ann, name, x) - snn_rate(snn, name, x, T, max_chunk)  # [B, ...]
        sq += float((e * e).sum())
        numel += e.numel()
        s = (e.abs() if formula == "abs" else e).sum(0)
        err_sum = s if err_sum is None else err_sum + s
        n += x.shape[0]
    return err_sum / n, sq / max(1, numel)


def layer_mse(snn, ann, name: str, xs: Tensor, T: int, batch: int, max_chunk: int = 16) -> float:
    return _measure(snn, ann, name, xs, T, batch, max_chunk=max_chunk)[1]


@torch.no_grad()
def lmpc_layer(snn: nn.Module, ann: nn.Module, name: str, xs: Tensor, T: int, batch: int,
               formula: str = "signed", granularity: str = "neuron",
               max_chunk: int = 16, iterations: int = 1,
               report: dict | None = None) -> Tensor:
    """Correct ``v^l(0)`` of layer ``name`` by the rate error on the calibration images ``xs``.

    φ is measured with the v(0) the layer has now (its start); the correction is added to it.
    ``iterations > 1`` repeats measurement and correction (signed only), because the rate
    responds to v(0) in steps of θ/T, so one correction leaves part of the bias; it stops, and
    keeps the best v(0), when the summed absolute bias no longer shrinks (cf. Hao et al. 2023).
    ``report``: gets ``mse_start``, the layer's rate MSE before the correction (measured in
    the same pass as the first error).
    """
    if formula not in ("abs", "signed"):
        raise ValueError(f"LMPC formula must be abs or signed, got {formula!r}")
    if granularity not in ("neuron", "channel"):
        raise ValueError(f"LMPC granularity must be neuron or channel, got {granularity!r}")
    if iterations < 1 or (formula == "abs" and iterations != 1):
        raise ValueError(f"LMPC iterations must be >= 1 (1 for formula 'abs'), got {iterations}")
    neuron: IFNeuron = snn.get_submodule(name)
    best_v0, best_bias = neuron.v0, float("inf")
    for i in range(iterations):
        err, mse = _measure(snn, ann, name, xs, T, batch, formula, max_chunk)
        if i == 0 and report is not None:
            report["mse_start"] = mse
        if granularity == "channel" and err.dim() >= 2:  # [C, ...] -> [C, 1, ...], any rank
            err = err.mean(dim=tuple(range(1, err.dim())), keepdim=True)
        bias = float(err.abs().sum())
        if bias >= best_bias:
            break  # the last correction did not help: keep the best v(0)
        best_v0, best_bias = neuron.v0, bias
        neuron.v0 = (neuron.v0 + T * err).detach()  # per neuron [C, H, W] / [F] or [C, 1, 1]
    else:
        if iterations > 1 and float(_measure(snn, ann, name, xs, T, batch, formula,
                                             max_chunk)[0].abs().sum()) < best_bias:
            best_v0 = neuron.v0
    neuron.v0 = best_v0 if iterations > 1 else neuron.v0
    return neuron.v0


def lwc_layer(snn: nn.Module, ann: nn.Module, name: str, xs: Tensor, T: int, iterations: int,
              batch_size: int, lr: float, optimizer: str = "adam", momentum: float = 0.9,
              weight_decay: float = 0.0, gamma: float = 1.0, eval_batch: int = 256,
              max_chunk: int = 16, seed: int = 0,
              on_step: Callable[[int, float], None] | None = None,
              accept: str = "always", mse_before: float | None = None,
              surrogate: str = "eq15") -> LayerReport:
    """Calibrate the weights feeding layer ``name`` by BPTT (eqs. 14-17).

    ``surrogate``: ``eq15`` (the triangle as printed, height γ) or ``scaled`` (divided by θ, so
    the gradient through the reset does not grow step by step where θ·γ > 2; lowlat.neurons).

    ``accept='mse'`` restores the weights if the layer's MSE rose; ``'always'`` keeps them.
    ``mse_before``: the layer's rate MSE in its current state, where the caller measured it.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"LWC optimizer must be sgd or adam, got {optimizer!r}")
    if accept not in ("always", "mse"):
        raise ValueError(f"LWC accept must be always or mse, got {accept!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"LWC surrogate must be one of {', '.join(SURROGATES)}, "
                         f"got {surrogate!r}")
    neurons = dict(spiking_layers(snn))
    order = list(neurons)
    idx = order.index(name)
    before = (layer_mse(snn, ann, name, xs, T, eval_batch, max_chunk) if mse_before is None
              else mse_before)
    saved = copy.deepcopy(snn.state_dict())
    req = {p: p.requires_grad for p in snn.parameters()}
    # Probe which parameters feed this layer: earlier neurons cut the graph, so only the
    # weights between the previous spiking layers and this one receive a gradient.
    for i, n in enumerate(order):
        neurons[n].detach_output = i < idx
        neurons[n].surrogate = n == name
        neurons[n].scaled_surrogate = surrogate == "scaled"
        neurons[n].gamma = gamma
    try:
        for p in snn.parameters():
            p.requires_grad_(True)
            p.grad = None
        probe = snn_rate(snn, name, xs[:2], T, max_chunk)
        if probe.requires_grad:  # False where an activation follows another: no weights between
            probe.sum().backward()
        params = [p for p in snn.parameters() if p.grad is not None]
        for p in snn.parameters():
            p.grad = None
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        if not params:
            return LayerReport(name, before, before, kept=False)
        if optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations))
        gen = torch.Generator().manual_seed(seed)
        for it in range(iterations):
            sel = torch.randperm(xs.shape[0], generator=gen)[:batch_size].to(xs.device)
            x = xs[sel]
            target = ann_activation(ann, name, x)
            loss = ((snn_rate(snn, name, x, T, max_chunk) - target) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if on_step is not None:
                on_step(it, float(loss.detach()))
    finally:
        for n in order:
            neurons[n].detach_output = False
            neurons[n].surrogate = False
            neurons[n].scaled_surrogate = False
        for p, r in req.items():
            p.requires_grad_(r)
            p.grad = None
        reset_states(snn)
    after = layer_mse(snn, ann, name, xs, T, eval_batch, max_chunk)
    if not math.isfinite(after):
        raise FloatingPointError(f"LWC made layer {name!r} non-finite (MSE {after}) at T={T}; "
                                 "lower phase2.lwc.lr")
    if accept == "mse" and after > before:
        snn.load_state_dict(saved)
        return LayerReport(name, before, after, kept=False)
    return LayerReport(name, before, after)


@dataclass
class CalibConfig:
    T: int
    lmpc: bool = True
    lwc: bool = True
    formula: str = "signed"
    granularity: str = "neuron"
    iterations: int = 100
    batch_size: int = 1024
    lr: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    gamma: float = 1.0
    accept: str = "always"
    lmpc_iterations: int = 1
    eval_batch: int = 256
    max_chunk: int = 16
    seed: int = 0
    head: str = "none"  # output-head refit after the layers (lowlat.head): none | kl | mse
    head_iterations: int = 200
    head_lr: float = 1e-3
    surrogate: str = "eq15"  # LWC's triangle: eq15 (as printed; what the scripts' tables used) |
    #                          scaled (÷ θ; the lowlat recipe's default in phase2 and lowlat.api)

    def fingerprint(self) -> dict:
        """The settings an artifact depends on; the head keys only when a head is fitted, so
        artifacts calibrated before the option existed stay valid."""
        d = asdict(self)
        if self.surrogate == "eq15" or not self.lwc:  # eq15: the only form before the option
            d.pop("surrogate")
        if self.head == "none":
            for k in ("head", "head_iterations", "head_lr"):
                d.pop(k)
        return d


def calibrate(snn: nn.Module, ann: nn.Module, xs: Tensor, cfg: CalibConfig,
              layers: Sequence[str] | None = None, progress: bool = True,
              log: Callable[[dict], None] | None = None,
              done: Sequence[str] = ()) -> list[dict]:
    """Calibrate ``snn`` in place, layer by layer (v(0) first, then the weights, as in Fig. 2).

    ``snn`` comes converted with its starting v(0) and shifts (e.g. Phase I or OptI).
    Returns one report per layer: MSE before LMPC, after LMPC and after LWC.
    ``log`` is called after every finished layer (where a caller can save its progress);
    ``done`` names layers that ``snn`` already holds calibrated (a resumed run): they are
    skipped and get no report. A layer's randomness depends only on ``cfg.seed``, so a resumed
    calibration gives what an uninterrupted one gives.
    """
    if cfg.head not in HEAD_LOSSES:
        raise ValueError(f"head must be one of {', '.join(HEAD_LOSSES)}, got {cfg.head!r}")
    if cfg.head != "none" and layers is not None:
        raise ValueError(f"head={cfg.head!r} refits the output after all layers; it cannot be "
                         "combined with a subset of layers (layers=...)")
    if xs.shape[0] == 0 or not bool(torch.isfinite(xs).all()):
        raise ValueError(f"calibrate: the {xs.shape[0]} calibration images must be at least one "
                         "and hold no NaN or inf")
    names = list(layers) if layers is not None else [n for n, _ in spiking_layers(snn)]
    ann = ann.eval()
    snn.eval()
    reports = []
    bar = tqdm(names, desc=f"calibrate T={cfg.T}", disable=not progress, leave=False,
               mininterval=2.0)
    for name in bar:
        if name in done:
            continue
        # Each state of the layer is simulated once: the start in LMPC's first pass, the end
        # by LMPC's check or LWC's (a state's MSE is read again, not re-measured).
        rep: dict = {"layer": name}
        if cfg.lmpc:
            lmpc_layer(snn, ann, name, xs, cfg.T, cfg.eval_batch, cfg.formula, cfg.granularity,
                       cfg.max_chunk, cfg.lmpc_iterations, report=rep)
            rep["mse_after_lmpc"] = layer_mse(snn, ann, name, xs, cfg.T, cfg.eval_batch,
                                              cfg.max_chunk)
        else:
            rep["mse_start"] = layer_mse(snn, ann, name, xs, cfg.T, cfg.eval_batch,
                                         cfg.max_chunk)
        rep["mse_end"] = rep.get("mse_after_lmpc", rep["mse_start"])
        if cfg.lwc:
            def on_step(it: int, loss: float, name=name) -> None:
                bar.set_postfix(layer=name, it=it, loss=f"{loss:.4g}",
                                refresh=it % 20 == 0)
            r = lwc_layer(snn, ann, name, xs, cfg.T, cfg.iterations, cfg.batch_size, cfg.lr,
                          cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.gamma,
                          cfg.eval_batch, cfg.max_chunk, cfg.seed, on_step, cfg.accept,
                          mse_before=rep["mse_end"], surrogate=cfg.surrogate)
            rep.update(mse_before_lwc=r.mse_before, mse_after_lwc=r.mse_after, lwc_kept=r.kept)
            rep["mse_end"] = r.mse_before if not r.kept else r.mse_after
        reports.append(rep)
        if log is not None:
            log(rep)
    if cfg.head != "none" and not any(d.startswith("head:") for d in done):
        rep = calibrate_head(snn, ann, xs, cfg.T, cfg.head, cfg.head_iterations, cfg.head_lr,
                             cfg.eval_batch, cfg.max_chunk)
        reports.append(rep)
        if log is not None:
            log(rep)
    return reports
