"""End-to-end fine-tuning of a calibrated SNN by BPTT (method ``lowlat-ft``; not in the paper).

Why: layer-wise calibration (LMPC, LWC) matches each layer's rate to the QC-ANN's activation, so
the SNN can at best inherit the QC-ANN's accuracy, and every layer's residual error compounds.
Training the whole SNN for a few hundred steps at its own T, on the training split with the
triangle surrogate, lets later layers compensate earlier ones' temporal error and learn from the
labels and from the ReLU ANN (the hybrid conversion of Rathi et al., ICLR 2020, here starting from
lowlat's LMPC). The network is scored on validation every ``eval_every`` steps and the best state
is kept, the calibrated start included: fine-tuning never ends below where it began.

Loss: ``(1 − kd)·CE(mean logits, y) + kd·KL(softmax(teacher) ‖ softmax(mean logits))`` with the
logits averaged over the T steps (what the SNN classifies by).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lowlat import fused
from lowlat.head import distill_kl
from lowlat.layout import as_layout, is_view_error, relayout, view_error
from lowlat.neurons import SURROGATES, configure, reset_states, spiking_layers
from lowlat.ratebackward import rate_backward

log = logging.getLogger("lowlat")
PRECISIONS = ("fp32", "bf16")
BACKWARDS = ("bptt", "rate", "rate_weights")
# Options added after fine-tuned artifacts existed, each with the value those artifacts were made
# with: at that value an option stays out of fingerprints, so the older artifacts stay valid
# (surrogate's default has since moved to "scaled": those artifacts are valid with "eq15").
ADDED_LATER = {"precision": "fp32", "warmup": 0, "seed": None, "frozen": 0, "backward": "bptt",
               "surrogate": "eq15"}
# How the steps are computed, not what they compute (the same gradients up to float rounding, as
# with another thread count): never in a fingerprint, recorded in the fine-tune's report.
EXECUTION = ("fused", "channels_last")
KEY_CL = "phase2.finetune.channels_last"


@dataclass(frozen=True)
class FinetuneConfig:
    """The budget and loss of one fine-tune (``phase2.finetune``)."""

    iterations: int = 500
    lr: float = 1.0e-3           # Adam, cosine to 0
    warmup: int = 0              # steps of linear warm-up to lr before the cosine (0: none)
    batch_size: int = 128
    kd: float = 0.5              # weight of the KL term to the teacher (0: labels only)
    gamma: float = 1.0           # triangle surrogate height
    surrogate: str = "scaled"    # "scaled": γ/θ, the gain through a neuron independent of its
    #                              θ (neurons.triangle); "eq15": height γ for every θ, as LWC
    #                              and every fine-tune before the option (diverges at large θ)
    eval_every: int = 250        # validation checks (the best is kept)
    neurons: bool = False        # also learn each IF layer's θ, spike amplitude and v(0)
    precision: str = "fp32"      # "bf16": autocast the convolutions in the training steps
    seed: int | None = None      # batch order and augmentation (None: the run's seed); a repeat
    #                              of the fine-tune alone, on the same split and calibration
    fused: bool = True           # each IF layer's T steps as one compiled forward and one
    #                              backward kernel (lowlat.fused): a step 1.6-2x faster on a CPU
    channels_last: bool = False  # weights and activations in torch.channels_last during the
    #                              steps (the neuron kernels read that layout as it lies)
    frozen: int = 0              # leading conv/linear layers (with the neurons before the next
    #                              one) kept as calibrated: no backward through them at all
    backward: str = "bptt"       # "rate": the conv/linear/pool layers' backward on time averages
    #                              (lowlat.ratebackward; other gradients, a cheaper step);
    #                              "rate_weights": only their weight gradients from averages

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError(f"finetune: iterations, batch_size and eval_every must be >= 1, "
                             f"got {self.iterations}, {self.batch_size}, {self.eval_every}")
        if not 0 <= self.warmup < self.iterations:
            raise ValueError(f"finetune.warmup must be in [0, iterations={self.iterations}), "
                             f"got {self.warmup}")
        if not 0.0 <= self.kd <= 1.0:
            raise ValueError(f"finetune.kd must be in [0, 1], got {self.kd}")
        if not self.lr > 0:
            raise ValueError(f"finetune.lr must be > 0, got {self.lr}")
        if self.frozen < 0:
            raise ValueError(f"finetune.frozen must be >= 0, got {self.frozen}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"finetune.backward must be one of {', '.join(BACKWARDS)}, "
                             f"got {self.backward!r}")
        if self.backward != "bptt" and self.precision != "fp32":
            raise ValueError(f"finetune.backward={self.backward} runs in fp32 only (its time "
                             "averages would mix bf16 gradients with fp32 inputs), got "
                             f"precision={self.precision!r}: set precision=fp32 or "
                             "backward=bptt")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"finetune.surrogate must be one of {', '.join(SURROGATES)}, "
                             f"got {self.surrogate!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"finetune.precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")

    def fingerprint(self) -> dict:
        d = asdict(self)
        for key, default in {"neurons": False, **ADDED_LATER}.items():
            if d[key] == default:  # artifacts fine-tuned before the option existed stay valid
                d.pop(key)
        for key in EXECUTION:
            d.pop(key)
        return d


WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)  # what frozen=k counts


def frozen_prefix(net: nn.Module, k: int) -> list[str]:
    """Names of the leaf modules defined before ``net``'s (k+1)-th conv/linear layer (definition
    = forward order, as :func:`lowlat.neurons.spiking_layers` assumes): what ``frozen=k`` keeps.

    Why: the first layers run at full resolution, where most of a step's neuron, pooling and
    convolution-backward work lies; a fine-tune that leaves them as calibrated never computes
    their backward. Raises if ``k`` would leave no conv/linear layer to train.
    """
    names, seen = [], 0
    weighted = [n for n, m in net.named_modules() if isinstance(m, WEIGHTED)]
    if not 0 <= k < len(weighted):
        raise ValueError(f"phase2.finetune.frozen={k}: the network has {len(weighted)} "
                         f"conv/linear layers; valid: 0 to {len(weighted) - 1} (at least one "
                         "must train)")
    for n, m in net.named_modules():
        if isinstance(m, WEIGHTED):
            seen += 1
            if seen > k:
                break
        if not any(True for _ in m.children()):
            names.append(n)
    return names


def snn_logits(snn: nn.Module, x: Tensor, T: int) -> Tensor:
    """Mean output over T steps ``[B, K]``, with the graph through all steps (BPTT)."""
    b = x.shape[0]
    reset_states(snn)
    configure(snn, steps=T, batch=b)
    out = _fp32_at_least(snn(x))  # under autocast: averaged in float32
    return out.view(T, b, -1).mean(0) if out.shape[0] == T * b else out  # [T·B, K] -> [B, K]


def _fp32_at_least(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def finetune_loss(logits: Tensor, y: Tensor, teacher_logits: Tensor | None, kd: float) -> Tensor:
    ce = F.cross_entropy(logits, y)
    if kd == 0.0 or teacher_logits is None:
        return ce
    return (1.0 - kd) * ce + kd * distill_kl(logits, teacher_logits)


def lr_factor(step: int, cfg: FinetuneConfig) -> float:
    """Multiplier of ``cfg.lr`` after ``step`` optimizer steps: linear warm-up, then cosine to 0.

    Why a warm-up: Adam's first updates have size ~lr in every parameter whatever its gradient,
    and they knock a calibrated SNN off its start (validation falls during the first few hundred
    steps at lr 1e-3, README "Lever 8").
    """
    if step < cfg.warmup:
        return (step + 1) / (cfg.warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup) / (cfg.iterations - cfg.warmup)))


def finetune(snn: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], T: int,
             cfg: FinetuneConfig, validate: Callable[[nn.Module], float],
             teacher: nn.Module | None = None, seed: int = 0, progress: bool = True,
             start: float | None = None) -> dict:
    """Fine-tune the weights and biases of ``snn`` in place; return a report.

    ``batches`` yields normalised (augmented) training batches; ``validate(snn)`` returns the
    top-1 the best state is chosen by (the validation split). The thresholds, amplitudes and
    v(0) from the conversion and LMPC stay as they are unless ``cfg.neurons`` (then they learn
    too, θ and the amplitude kept above 5 % of their start). ``snn`` ends in the best state
    seen.
    ``start``: the top-1 ``snn`` already has on that split (saves one validation pass).
    ``cfg.precision='bf16'`` runs the convolutions of the training steps in bfloat16 (the
    membrane potentials, the loss and validation stay in float32): fewer CPU/GPU seconds a step.
    ``cfg.fused`` runs the neurons as compiled kernels (:func:`lowlat.fused.fused_train_forward`;
    the plain graph where compiling fails, with a warning); the report says which ran.
    ``cfg.frozen`` keeps the :func:`frozen_prefix` as it is (no graph through it);
    ``cfg.backward='rate'`` runs the layers between the neurons backward on time averages
    (:mod:`lowlat.ratebackward`).
    """
    if cfg.kd > 0 and teacher is None:
        raise ValueError("finetune: kd > 0 needs a teacher network (the ReLU ANN)")
    relayout((snn, teacher), cfg.channels_last, KEY_CL)
    torch.manual_seed(seed)
    keep = set(frozen_prefix(snn, cfg.frozen)) if cfg.frozen else set()
    neurons = [m for n, m in spiking_layers(snn) if n not in keep]
    all_params = list(snn.named_parameters())
    params = [p for n, p in all_params if n.rpartition(".")[0] not in keep]
    fixed = [p for n, p in all_params if n.rpartition(".")[0] in keep]
    req = [p.requires_grad for p in params]
    req_fixed = [p.requires_grad for p in fixed]
    floors: list[tuple[Tensor, Tensor]] = []
    if cfg.neurons:
        for m in neurons:
            floors += [(m.theta, 0.05 * m.theta.detach().clone()),
                       (m.amplitude, 0.05 * m.amplitude.detach().clone())]
        seen = {id(p) for p in params}
        extra = [t for m in neurons for t in (m.theta, m.amplitude, m.v0)
                 if not (id(t) in seen or seen.add(id(t)))]  # each tensor once
        params, req = params + extra, req + [False] * len(extra)
    start = validate(snn) if start is None else start
    best, best_state, curve = start, copy.deepcopy(snn.state_dict()), {0: start}
    losses: list[float] = []
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, cfg))
    if teacher is not None:
        teacher = teacher.eval()
    bar = tqdm(range(1, cfg.iterations + 1), desc=f"finetune T={T}", disable=not progress,
               leave=False, mininterval=2.0)
    try:
        for p in params:
            p.requires_grad_(True)
        for p in fixed:  # no graph through the frozen prefix: its backward is never computed
            p.requires_grad_(False)
        for m in neurons:
            m.surrogate, m.gamma, m.fused_train = True, cfg.gamma, cfg.fused
            m.scaled_surrogate = cfg.surrogate == "scaled"
        for it in bar:
            x, y = next(batches)
            x = as_layout(x, cfg.channels_last)
            snn.train()
            with (rate_backward(snn, T, x.shape[0], exact_input=cfg.backward == "rate_weights")
                  if cfg.backward != "bptt" else contextlib.nullcontext()):
                with torch.autocast(x.device.type, torch.bfloat16,
                                    enabled=cfg.precision == "bf16"):
                    try:
                        with torch.no_grad():
                            z = teacher(x) if teacher is not None and cfg.kd > 0 else None
                        logits = snn_logits(snn, x, T)
                    except RuntimeError as e:
                        if cfg.channels_last and is_view_error(e):
                            raise view_error(e, KEY_CL) from e
                        raise
                loss = finetune_loss(logits, y, None if z is None else _fp32_at_least(z), cfg.kd)
                val = float(loss.detach())
                if not math.isfinite(val):
                    raise FloatingPointError(f"finetune: the loss became {val} at step {it} "
                                             f"(T={T}); lower phase2.finetune.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for t, lo in floors:
                    torch.maximum(t, lo, out=t)
            losses.append(val)
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                snn.eval()
                reset_states(snn)
                with torch.no_grad():
                    acc = validate(snn)
                curve[it] = acc
                bar.set_postfix(val=f"{acc:.4f}", loss=f"{val:.3f}")
                if acc > best:
                    best, best_state = acc, copy.deepcopy(snn.state_dict())
    finally:
        for m in neurons:
            m.surrogate, m.fused_train, m.scaled_surrogate = False, False, False
        for p, r in zip(params + fixed, req + req_fixed, strict=True):
            p.requires_grad_(r)
            p.grad = None
        snn.eval()
        reset_states(snn)
        relayout((snn, teacher), False, KEY_CL)  # saved and simulated as before
    snn.load_state_dict(best_state)
    first = sum(losses[:20]) / max(1, len(losses[:20]))
    last = sum(losses[-20:]) / max(1, len(losses[-20:]))
    diverged = len(losses) >= 40 and last > 1.5 * first and best == start
    if diverged:  # the start was kept, so the artifact is sound, but the steps were wasted
        log.warning("finetune T=%d: the training loss rose from %.4g to %.4g and no check beat "
                    "the start (%.4f, kept): the fine-tune diverged; try surrogate=scaled (if "
                    "eq15) or a lower lr", T, first, last, start)
    return {"layer": "finetune", "ft_val_start": start, "ft_val_best": best,
            "ft_diverged": diverged,
            "ft_best_iteration": min(i for i, a in curve.items() if a == best),
            "ft_val_curve": {str(k): v for k, v in curve.items()},
            "ft_fused": bool(cfg.fused and fused.available()),
            "ft_channels_last": cfg.channels_last,
            "ft_loss_first": losses[0] if losses else float("nan"),
            "ft_loss_last": last}
