"""Output-head calibration: refit the last conv/linear layer of a calibrated SNN (lowlat only).

Why: LWC matches each IF layer's rate to the QC-ANN's activation, but the classifier after the
last IF layer has no neuron, so no layer-wise loss ever sees it, and a falling rate MSE does not
protect the accuracy (issue 9). At low T the last layer's rates are coarse; refitting the head
on the SNN's own rates, against the teacher's logits, is an output-level term at the cost of one
simulation of the calibration images (the fit itself sees no SNN).

The head is linear in its input and every step adds its output, so the SNN's mean output over T
is ``head(mean input)``: the fit runs on the mean input captured once. That identity is checked
on the calibration images and a network where it does not hold is refused, naming the layer.
Not in the paper: the paper's rows never use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowlat.neurons import IFNeuron, configure, reset_states
from lowlat.simulate import chunk_plan

HEAD_LOSSES = ("none", "mse", "kl")
_PARAM_LAYERS = nn.Linear | nn.modules.conv._ConvNd


def find_head(snn: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """The one conv/linear layer that runs after the last IF neuron (traced on ``x[:1]``)."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a, n=n: order.append((n, mod)))
             for n, m in snn.named_modules() if isinstance(m, _PARAM_LAYERS | IFNeuron)]
    try:
        reset_states(snn)
        configure(snn, steps=1, batch=1)
        with torch.no_grad():
            snn(x[:1])
    finally:
        reset_states(snn)
        for h in hooks:
            h.remove()
    last = max((i for i, (_, m) in enumerate(order) if isinstance(m, IFNeuron)), default=None)
    after = [(n, m) for n, m in order[(last or 0) + 1:] if not isinstance(m, IFNeuron)]
    if last is None or len(after) != 1:
        raise ValueError("head calibration needs exactly one conv/linear layer after the last IF "
                         f"layer; found {[n for n, _ in after] or 'none'}")
    return after[0]


@torch.no_grad()
def head_inputs(snn: nn.Module, head: nn.Module, x: Tensor, T: int,
                max_chunk: int = 16) -> tuple[Tensor, Tensor]:
    """``(mean input of the head over T [B, ...], mean SNN output over T [B, classes])``."""
    b = x.shape[0]
    store: list[Tensor] = []
    h = head.register_forward_pre_hook(lambda _m, a: store.append(a[0]))
    total_in, total_out = None, None
    try:
        reset_states(snn)
        for k in chunk_plan([T], max_chunk):
            configure(snn, steps=k, batch=b)
            y = snn(x)
            z = store.pop()
            # [k·B, ...] -> summed over the k steps [B, ...]; [B, ...] is constant in time
            zs = z.view(k, b, *z.shape[1:]).sum(0) if z.shape[0] == k * b else k * z
            ys = y.view(k, b, -1).sum(0) if y.shape[0] == k * b else k * y
            total_in = zs if total_in is None else total_in + zs
            total_out = ys if total_out is None else total_out + ys
    finally:
        h.remove()
        reset_states(snn)
    return total_in / T, total_out / T


def distill_kl(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(softmax(teacher) ‖ softmax(logits)), batch mean: the distillation term of the head
    fit and of ``lowlat-ft``."""
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher_logits, -1),
                    log_target=True, reduction="batchmean")


def _loss(kind: str, out: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(out, target) if kind == "mse" else distill_kl(out, target)


def calibrate_head(snn: nn.Module, teacher: nn.Module, xs: Tensor, T: int, loss: str = "kl",
                   iterations: int = 200, lr: float = 1e-3, batch: int = 256,
                   max_chunk: int = 16) -> dict:
    """Refit the head of ``snn`` in place so its mean output over T matches ``teacher(xs)``.

    ``loss``: ``'kl'`` (KL from the teacher's softmax) or ``'mse'`` (on the logits). Full-batch
    Adam on the captured mean inputs. Returns a report with the loss before and after.
    """
    if loss not in HEAD_LOSSES[1:]:
        raise ValueError(f"head loss must be one of {', '.join(HEAD_LOSSES[1:])}, got {loss!r}")
    name, head = find_head(snn, xs)
    snn.eval()
    teacher = teacher.eval()
    feats, outs, targets = [], [], []
    with torch.no_grad():
        for i in range(0, xs.shape[0], batch):
            f, o = head_inputs(snn, head, xs[i:i + batch], T, max_chunk)
            feats.append(f)
            outs.append(o)
            targets.append(teacher(xs[i:i + batch]))
        r, y, z = torch.cat(feats), torch.cat(outs), torch.cat(targets)
        err = float((head(r) - y).abs().max())
        scale = float(y.abs().max()) + 1e-6
    if err > 1e-4 * scale + 1e-5:
        raise ValueError(f"head calibration: the SNN's output is not linear in the input of "
                         f"{name!r} (max difference {err:.3g}); layers after it are not supported")
    params = list(head.parameters())
    req = [p.requires_grad for p in params]
    before = float(_loss(loss, y, z))
    try:
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iterations):
            opt.zero_grad(set_to_none=True)
            val = _loss(loss, head(r), z)
            val.backward()
            opt.step()
    finally:
        for p, q in zip(params, req, strict=True):
            p.requires_grad_(q)
            p.grad = None
    with torch.no_grad():
        after = float(_loss(loss, head(r), z))
    if not torch.isfinite(torch.tensor(after)):
        raise FloatingPointError(f"head calibration made {name!r} non-finite; lower its lr")
    return {"layer": f"head:{name}", "head_loss": loss, "head_loss_before": before,
            "head_loss_after": after}
