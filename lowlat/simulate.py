"""Multi-step SNN simulation: accuracy at every T in one run, firing rates, RMPE and energy.

The network runs on chunks of time steps: stateless layers see ``[k·B, ...]``, neurons scan over
the k steps and keep their membrane potential for the next chunk. ``chunk=1`` is the step-by-step
mode (O(B) state memory, same spikes); a chunk as long as the run is the fully time-folded mode.
:func:`evaluate_snn` shortens the chunk so that its largest tensor stays within ``CHUNK_MB``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from lowlat.fused import set_fused
from lowlat.layout import as_layout, is_channels_last, layout
from lowlat.neurons import configure, reset_states, spiking_layers

# Largest neuron tensor of one chunk (MiB) in evaluate_snn on a CPU. Why: tensors above glibc's
# mmap threshold (at most 32 MiB) are mapped fresh and page-faulted on every allocation, which
# made long chunks 1.5-1.9x slower than step by step (docs/profile_snn.md); below it the heap
# reuses them. None: chunks of max_chunk whatever their size.
CHUNK_MB: float | None = 16.0
ALPHA_PJ = 4.6  # energy of one multiply-accumulate (Horowitz 2014), paper eq. 18
BETA_PJ = 0.9  # energy of one accumulate


def chunk_plan(timesteps: Sequence[int], max_chunk: int) -> list[int]:
    """Chunk lengths that end exactly at every requested T and never exceed ``max_chunk``."""
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
    plan, t = [], 0
    for T in sorted(set(timesteps)):
        while t < T:
            k = min(max_chunk, T - t)
            plan.append(k)
            t += k
    return plan


def auto_chunk(step_bytes: int, max_chunk: int, chunk_mb: float | None = CHUNK_MB) -> int:
    """The longest chunk <= ``max_chunk`` whose largest neuron tensor (``k·step_bytes``) stays
    within ``chunk_mb`` MiB, at least 1 (step by step); ``max_chunk`` when ``chunk_mb`` is None."""
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
    if chunk_mb is None:
        return max_chunk
    return max(1, min(max_chunk, int(chunk_mb * 2**20) // max(1, step_bytes)))


def neuron_step_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the largest neuron input of one time step for the batch ``x`` (a one-sample
    forward with hooks; the neurons are reset before and after)."""
    largest = 0

    def hook(_m, args) -> None:
        nonlocal largest
        largest = max(largest, args[0][0].numel() * args[0].element_size())

    neurons = [m for _, m in spiking_layers(model)]
    hooks = [m.register_forward_pre_hook(hook) for m in neurons]
    fused = [getattr(m, "fused", None) for m in neurons]
    try:
        for m in neurons:  # the plain scan: no compilation for a one-sample shape
            m.fused = False
        reset_states(model)
        configure(model, steps=1, batch=None)
        model(x[:1])
    finally:
        reset_states(model)
        for m, f in zip(neurons, fused, strict=True):
            m.fused = f
        for h in hooks:
            h.remove()
    return largest * x.shape[0]


@torch.no_grad()
def run_snn(model: nn.Module, x: Tensor, T: int, chunk: int | None = None,
            record: bool = False, fused: bool | None = None,
            channels_last: bool | None = None) -> Tensor:
    """Run one batch for T steps. Returns the last layer's outputs per step ``[T, B, classes]``.

    ``fused``, ``channels_last``: as in :func:`evaluate_snn` (None keeps the model's setting).
    """
    b, T = x.shape[0], check_steps(T)
    if fused is not None:
        set_fused(model, fused)
    reset_states(model)
    outs = []
    with layout(model, channels_last, "channels_last"):
        x = as_layout(x, is_channels_last(model))
        for k in chunk_plan([T], chunk or T):
            configure(model, steps=k, batch=b, record=record)
            y = model(x)  # [k·B, classes] (or [B, classes] if nothing spiked in between)
            outs.append(y.view(k, b, -1) if y.shape[0] == k * b
                        else y.unsqueeze(0).expand(k, -1, -1))
    return torch.cat(outs)  # [T, B, classes]


@dataclass
class SimStats:
    """Counts accumulated over a test set; rates and shares are derived on demand."""

    timesteps: list[int]
    correct: dict[int, int] = field(default_factory=dict)
    n: int = 0
    spikes: dict[int, dict[str, float]] = field(default_factory=dict)  # T -> layer -> spikes
    neurons: dict[str, int] = field(default_factory=dict)  # layer -> neurons per sample
    rmpe: dict[int, dict[str, int]] = field(default_factory=dict)  # T -> layer -> count
    ops: dict[int, float] = field(default_factory=dict)  # T -> synaptic ops (all samples)
    first_ops: dict[int, float] = field(default_factory=dict)  # T -> first-layer MACs
    layer_ops: dict[int, dict[str, float]] = field(default_factory=dict)  # T -> layer -> ops
    chunk: int = 0  # time steps per chunk actually used (0: no batch was run)

    def accuracy(self) -> dict[int, float]:
        return {T: self.correct[T] / max(1, self.n) for T in self.timesteps}

    def firing_rates(self) -> dict[int, dict[str, float]]:
        """Spikes per neuron per time step, per layer."""
        return {T: {k: v / (self.neurons[k] * self.n * T) for k, v in s.items()}
                for T, s in self.spikes.items()}

    def network_firing_rate(self) -> dict[int, float]:
        """Spikes per neuron per time step over the whole network (the paper's Sec. 4.4 figure:
        every spike of every layer over every neuron, not the mean of the layers' rates)."""
        total = sum(self.neurons.values())
        return {T: sum(s.values()) / (total * self.n * T) for T, s in self.spikes.items()
                if total and self.n}

    def rmpe_share(self) -> dict[int, dict[str, float]]:
        """Share of neurons whose residual potential v(T) lies outside [0, θ) (paper Figs. 4-5)."""
        return {T: {k: v / (self.neurons[k] * self.n) for k, v in s.items()}
                for T, s in self.rmpe.items()}


class OpCounter:
    """Counts synaptic operations: nonzero inputs x fan-out of every conv/linear layer."""

    def __init__(self, model: nn.Module, fan_out: dict[str, float]) -> None:
        self.total = 0.0
        self.first = 0.0
        self.first_name: str | None = None
        self.per_layer: dict[str, float] = {}  # layer -> operations (all samples)
        self.steps = 1  # time steps in the current chunk
        self.batch = 1  # samples in the current batch
        self.handles = []
        mods = dict(model.named_modules())
        for name, per_input in fan_out.items():
            self.handles.append(mods[name].register_forward_pre_hook(self._hook(name, per_input)))

    def _hook(self, name: str, per_input: float):
        def fn(_m, args):
            x = args[0]
            if self.first_name is None:
                self.first_name = name
            if name == self.first_name:  # analog input: one MAC per input value and step
                ops = x[0].numel() * per_input * self.steps * self.batch
                self.first += ops
            else:
                ops = float(torch.count_nonzero(x)) * per_input
                self.total += ops
            self.per_layer[name] = self.per_layer.get(name, 0.0) + ops
        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layer_macs(model: nn.Module, sample: Tensor) -> dict[str, float]:
    """MACs per sample of every conv/linear layer (PyTorch's FLOP counter, FLOPs / 2)."""
    model = model.eval()
    with FlopCounterMode(display=False) as fc:
        model(sample[:1])
    counts = fc.get_flop_counts()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            key = next((k for k in counts if k.endswith(name) and k.split(".", 1)[-1] == name),
                       None)
            flops = sum(counts.get(key, {}).values()) if key else 0
            out[name] = flops / 2.0
    return out


@torch.no_grad()
def evaluate_snn(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], timesteps: Sequence[int],
    transform: Callable[[Tensor], Tensor] = lambda x: x, max_chunk: int = 16,
    device: str | torch.device = "cpu", stats: bool = True, progress: bool = True,
    desc: str = "snn", fused: bool | None = None, chunk_mb: float | None = CHUNK_MB,
    channels_last: bool | None = None,
) -> SimStats:
    """Accuracy (and statistics) at every T in ``timesteps`` from one run to max(T).

    ``fused``: compiled IF scan (``lowlat.fused``, same spikes); None keeps each neuron's setting.
    ``channels_last``: weights and activations channels-last for the run (same spikes up to float
    rounding; with ``fused``, faster on a CPU), False the default layout, None the model's own
    layout (inputs follow it); the model's layout comes back afterwards.
    Chunks are at most ``max_chunk`` steps and, on a CPU unless ``chunk_mb`` is None, short
    enough that the largest neuron tensor of the first batch stays within ``chunk_mb`` MiB
    (same spikes; :func:`auto_chunk`). The chunk used is ``SimStats.chunk``.
    """
    timesteps = sorted(set(check_steps(t, "timesteps") for t in timesteps))
    if not timesteps:
        raise ValueError("timesteps: give at least one T >= 1")
    model = model.to(device).eval()
    if fused is not None:
        set_fused(model, fused)
    plan: list[int] | None = None
    res = SimStats(timesteps=timesteps)
    res.correct = dict.fromkeys(timesteps, 0)
    layers = spiking_layers(model)
    counter = None
    for T in timesteps:
        res.spikes[T] = {n: 0.0 for n, _ in layers}
        res.rmpe[T] = {n: 0 for n, _ in layers}
        res.ops[T] = 0.0
        res.first_ops[T] = 0.0
        res.layer_ops[T] = {}
    with layout(model, channels_last, "eval.channels_last"):
        cl = is_channels_last(model)  # the inputs follow the network's layout
        for i, (x, y) in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
            x, y = as_layout(transform(x.to(device)), cl), y.to(device)
            b = x.shape[0]
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"evaluate_snn: batch {i} holds NaN or inf inputs; an IF neuron "
                                 "never fires on NaN, so its accuracy would be silently wrong")
            if plan is None:  # from the first (largest) batch; CUDA's caching allocator reuses
                probe = chunk_mb is not None and max_chunk > 1 and x.device.type == "cpu"
                res.chunk = auto_chunk(neuron_step_bytes(model, x) if probe else 0, max_chunk,
                                       chunk_mb if probe else None)
                plan = chunk_plan(timesteps, res.chunk)
            if stats and counter is None:
                counter = op_counter(model, x)
            reset_states(model)
            acc_out = None
            t = 0
            for k in plan:
                configure(model, steps=k, batch=b, record=stats)
                if counter is not None:
                    counter.steps, counter.batch = k, b
                y_out = model(x)
                y_out = y_out.view(k, b, -1) if y_out.shape[0] == k * b else y_out.unsqueeze(0)
                s = y_out.sum(0) if y_out.shape[0] == k else y_out[0] * k  # [B, classes]
                acc_out = s if acc_out is None else acc_out + s
                t += k
                if acc_out is s:  # a batch's first chunk: the class count is known from here
                    _check_labels(y, s.shape[1], i)
                if t in res.correct:
                    res.correct[t] += int((acc_out.argmax(1) == y).sum())
                    if stats:
                        _accumulate(res, t, layers, counter)
            if counter is not None:
                counter.total = counter.first = 0.0
                counter.per_layer.clear()
            res.n += b
    if counter is not None:
        counter.remove()
    if res.n == 0:
        raise ValueError("evaluate_snn: the data gave no batches")
    return res


def _accumulate(res: SimStats, t: int, layers: list, counter: OpCounter | None) -> None:
    """Add the spikes, RMPE counts and synaptic operations of the steps up to ``t`` to ``res``."""
    for name, m in layers:
        if m.spike_count is not None:
            res.spikes[t][name] += float(m.spike_count.sum())
            res.neurons[name] = m.spike_count[0].numel()
        if m.v is not None:
            outside = (m.v < 0) | (m.v >= m.theta)
            res.rmpe[t][name] += int(outside.sum())
    if counter is not None:
        res.ops[t] += counter.total
        res.first_ops[t] += counter.first
        for name, ops in counter.per_layer.items():
            res.layer_ops[t][name] = res.layer_ops[t].get(name, 0.0) + ops


def check_steps(T, key: str = "T") -> int:
    """``T`` as an int >= 1; a float such as 2.5 or a bool is refused, not truncated."""
    if isinstance(T, bool) or not isinstance(T, int | float | Tensor) or T != int(T) or T < 1:
        raise ValueError(f"{key}: time steps must be whole numbers >= 1, got {T!r}")
    return int(T)


def _check_labels(y: Tensor, classes: int, i: int) -> None:
    """Class indices in [0, classes): a label the network cannot output would count as wrong."""
    if y.dim() != 1 or y.dtype.is_floating_point:
        raise ValueError(f"evaluate_snn: batch {i}'s labels must be class indices [B], got "
                         f"{tuple(y.shape)} {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"evaluate_snn: batch {i} has label {hi if hi >= classes else lo}, "
                         f"outside the network's {classes} classes (0 to {classes - 1})")


def model_without_state(model: nn.Module) -> nn.Module:
    """The same model for a one-step MAC count (neurons reset, one step)."""
    reset_states(model)
    configure(model, steps=1, batch=None)
    return model


def op_counter(model: nn.Module, x: Tensor) -> OpCounter:
    """An :class:`OpCounter` hooked into ``model`` (fan-outs measured on one sample of ``x``);
    call ``remove()`` when done."""
    macs = layer_macs(model_without_state(model), x)
    return OpCounter(model, _fan_out(model, x, macs))


def _fan_out(model: nn.Module, x: Tensor, macs: dict[str, float]) -> dict[str, float]:
    """Operations each input value of a layer triggers: MACs / input elements (one sample)."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if name in macs:
            hooks.append(m.register_forward_pre_hook(
                lambda _m, a, name=name: sizes.__setitem__(name, a[0][0].numel())))
    reset_states(model)
    configure(model, steps=1, batch=None)
    model(x[:1])
    reset_states(model)
    for h in hooks:
        h.remove()
    return {n: macs[n] / sizes[n] for n in macs if sizes.get(n)}


def energy_ratio(ann_macs: float, snn_ops: float, first_ops: float) -> float:
    """Paper eq. 18: ``(c·α + (b − c)·β) / (a·α)`` with b = all SNN ops, c = first-layer MACs."""
    b = snn_ops + first_ops
    return (first_ops * ALPHA_PJ + (b - first_ops) * BETA_PJ) / (ann_macs * ALPHA_PJ)
