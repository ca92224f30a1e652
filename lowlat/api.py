"""Bring your own model: the whole conversion path as plain Python calls, no Hydra.

``prepare`` (QC activations at every ReLU/clip-ReLU/``F.relu`` call site, λ from activation
statistics, optionally max→average pooling) → ``fine_tune`` (Lightning, or the user's own loop)
→ ``convert`` → ``calibrate`` (LMPC + LWC) → ``evaluate`` → ``save_snn`` / ``load_snn``.
:class:`Converter` does prepare + convert + calibrate in one call, in the spirit of SpikingJelly's
``Converter(dataloader, mode=...)(model)``.

Data arguments take a tensor of images, or any iterable (a ``DataLoader``) of ``(x, y)`` batches
or of image batches; images are in the network's input space unless ``mean``/``std`` are given, in
which case the :class:`SpikingNetwork` normalises its raw input (and records it in the artifact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowlat.activations import QCActivation, RateNorm, relu_cap
from lowlat.artifacts import fingerprint, import_factory, load_artifact, save_artifact
from lowlat.calibrate import CalibConfig
from lowlat.calibrate import calibrate as _calibrate
from lowlat.convert import (
    activation_sites,
    activation_stats,
    check_convertible,
    fold_bn,
    replace_max_pooling,
    swap_activations,
    trace,
)
from lowlat.finetune import FinetuneConfig, finetune
from lowlat.methods import (
    CALIBRATED,
    METHODS,
    START_SOURCE,
    STARTS,
    clip_target,
    get_method,
    recipe,
)
from lowlat.methods import convert as convert_method
from lowlat.methods import load_snn as _rebuild
from lowlat.neurons import reset_states, spiking_layers
from lowlat.simulate import check_steps, evaluate_snn
from lowlat.spiking import Recording, SpikingNetwork, normalizer

Data = Tensor | Iterable


def _what(b: Any) -> str:
    return f"a dict with keys {list(b)}" if isinstance(b, dict) else type(b).__name__


def _images(b: Any, who: str) -> Tensor:
    """The images of one batch (a tensor, or the first item of an ``(images, labels)`` pair)."""
    x = b[0] if isinstance(b, list | tuple) and b else b
    if not isinstance(x, Tensor):
        raise ValueError(f"{who}: a batch must be an image tensor or an (images, labels) pair, "
                         f"got {_what(x)}; map it first, e.g. ((b['image'], b['label']) for b in "
                         "loader)")
    return x


def _float(x: Tensor, who: str) -> Tensor:
    """``x`` as the network sees it (after ``mean``/``std``), refused unless floating point."""
    if not x.is_floating_point():
        raise ValueError(f"{who}: the images are {x.dtype}; give floating-point images in the "
                         "space the model was trained on (e.g. x.float() / 255), or mean=/std= "
                         "to normalise raw pixels")
    return x


def _pairs(data: Iterable, who: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches of ``data``, each checked."""
    for b in data:
        if not (isinstance(b, list | tuple) and len(b) >= 2):
            raise ValueError(f"{who}: the data must yield (images, labels) batches, got "
                             f"{_what(b)}")
        yield _images(b, who), b[1]


def _inputs(data: Data, batch_size: int = 256, who: str = "data") -> Iterator[Tensor]:
    """Image batches from a tensor or an iterable of ``(x, y)`` / ``x`` batches."""
    if isinstance(data, Tensor):
        data = data.split(batch_size)
    for b in data:
        yield _images(b, who)


def gather(data: Data, n: int | None = None, who: str = "gather") -> Tensor:
    """At most ``n`` images of ``data`` as one tensor ``[N, ...]`` (calibration wants a tensor)."""
    out, have = [], 0
    for x in _inputs(data, who=who):
        out.append(x)
        have += x.shape[0]
        if n is not None and have >= n:
            break
    if not out:
        raise ValueError("gather: no images in the data")
    return torch.cat(out)[:n]


def prepare(
    model: nn.Module, data: Data | None = None, *, levels: int = 8, shift: float = 0.0,
    pool: str = "keep", init: str | float = "percentile", percentile: float = 99.9,
    max_batches: int | None = None, mean=None, std=None,
) -> nn.Module:
    """The QC-ANN of ``model`` (a copy): every ReLU or clip-ReLU call site becomes a
    :class:`QCActivation` with λ from its activation statistics on ``data`` (``init`` =
    ``percentile`` or ``max``; a number sets λ directly). A clip-ReLU (ReLU6, Hardtanh(0, c),
    ``clamp(x, 0, c)``) caps λ at its ceiling.
    ``pool='avg'`` first replaces max pooling by average pooling of the same window.
    A model the converter would refuse (an unsupported layer or op, max pooling kept) is refused
    here, before statistics or fine-tuning are spent on it.
    """
    if pool not in ("keep", "avg"):
        raise ValueError(f"prepare: pool must be 'keep' or 'avg', got {pool!r}")
    numeric = isinstance(init, int | float)
    QCActivation(levels, shift, init_lambda=init if numeric else 1.0)  # its checks, before work
    model = replace_max_pooling(model) if pool == "avg" else model
    check_convertible(fold_bn(model))
    sites = activation_sites(model)
    if not sites:
        raise ValueError("prepare: the model has no ReLU or clip-ReLU (ReLU6, Hardtanh(0, c), "
                         "F.relu, clamp(min=0)) to turn into a QC activation; only those become "
                         "IF neurons")
    stats = None
    if not numeric:
        if init not in ("percentile", "max"):
            raise ValueError(f"prepare: init must be 'percentile', 'max' or a number, got {init!r}")
        if data is None:
            raise ValueError("prepare: give data to initialise λ from statistics, or init=<λ>")
        norm = normalizer(mean, std)
        xs = (_float(norm(x), "prepare") for i, x in enumerate(_inputs(data, who="prepare"))
              if max_batches is None or i < max_batches)
        stats = activation_stats(model, xs, percentile=percentile)

    def make(name: str) -> QCActivation:
        lam = float(init) if stats is None else stats[name][init]
        lam = min(lam, relu_cap(sites[name]))  # a clip-ReLU's λ stays at or under its ceiling
        return QCActivation(levels, shift, init_lambda=max(lam, 1e-3))

    return swap_activations(model, make)


def fine_tune(qcann: nn.Module, train: Iterable, val: Iterable | None = None, *,
              num_classes: int, epochs: int = 1, lr: float = 1e-3, threshold_lr: float = 1e-2,
              weight_decay: float = 5e-4, teacher: nn.Module | None = None, kd: float = 0.0,
              **trainer_kwargs: Any) -> nn.Module:
    """Fine-tune the QC-ANN with lowlat's Lightning :class:`~lowlat.lit.Classifier` (SGD,
    cosine decay, λ in its own parameter group; with ``teacher`` and ``kd`` > 0 the loss mixes
    in KL to the teacher's softmax, e.g. the ReLU model the QC-ANN came from). Any training loop
    works instead: the QC-ANN is a plain ``nn.Module``."""
    import lightning as L

    from lowlat.lit import Classifier

    lit = Classifier(qcann, num_classes, lr=lr, epochs=epochs, weight_decay=weight_decay,
                     threshold_lr=threshold_lr, teacher=teacher, kd=kd)
    kw = dict(max_epochs=epochs, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, accelerator="auto")
    L.Trainer(**{**kw, **trainer_kwargs}).fit(lit, train, val)
    return lit.model.eval()


def _check_source(model: nn.Module, method: str) -> None:
    """Refuse a model of the wrong kind for ``method``: a QC-ANN converted by a ReLU-ANN method
    would keep its λ as θ and silently ignore the statistics, and the reverse cannot convert."""
    kinds = {type(m) for m in model.modules()}
    source = get_method(method).source
    start = recipe(method).start if method in CALIBRATED else None
    if start is not None:
        source = START_SOURCE[start]
    has_qc, has_rn = QCActivation in kinds, RateNorm in kinds
    if source == "ann" and (has_qc or has_rn):
        raise ValueError(f"{method!r} converts the ReLU ANN (θ from its statistics), but the "
                         "model holds QC/RateNorm activations; pass the original ReLU model")
    if source == "qcann" and not has_qc:
        raise ValueError(f"{method!r} converts a QC-ANN; run api.prepare(model, data) (and "
                         "fine-tune it) first, or pick a ReLU-ANN method: "
                         f"{', '.join(n for n, m in METHODS.items() if m.source == 'ann')}")
    if source == "ratenorm" and not has_rn:
        raise ValueError("'ratenorm' converts a Rate Norm Layer ANN (lowlat.activations."
                         "RateNorm at every activation); this model has none")


def convert(model: nn.Module, method: str = "opti", T: int = 4, data: Data | None = None, *,
            mean=None, std=None, percentile: float = 99.9) -> SpikingNetwork:
    """The SNN of ``method`` (see :mod:`lowlat.methods`): a QC-ANN conversion (``phase1``,
    ``opti``, ``opt``, ``unbiased``), the start of a calibrated method (Phase I for the paper's
    ``lmpc``/``lwc``/``lmpc+lwc``, θ/2 for ``lowlat*``; then call :func:`calibrate`), or a ReLU
    ANN's (``maxnorm``/``robustnorm``/``robustnorm_all``/``channelnorm``, and ``lowlat-cn``'s
    start: θ from statistics on ``data``)."""
    m = get_method(method)
    T = check_steps(T)
    _check_source(model, method)
    start = recipe(m).start if m.calibrated else None
    stats = None
    if m.source == "ann":
        if data is None:
            raise ValueError(f"convert: {method} needs data for the activation statistics")
        norm = normalizer(mean, std)
        stats = activation_stats(model, (_float(norm(x), "convert")
                                         for x in _inputs(data, who="convert")),
                                 percentile=percentile)
    if start is not None:
        net = STARTS[start](trace(model), stats=stats)
    else:
        net = convert_method(method, trace(model), T=T, stats=stats)
    return SpikingNetwork(net, T, mean, std, method)


def calibrate(snn: SpikingNetwork, qcann: nn.Module, data: Data, *, n_images: int = 256,
              method: str | None = None, progress: bool = False, **config: Any) -> list[dict]:
    """LMPC and/or LWC of ``snn`` in place at its T against ``qcann`` (the network it was
    converted from: the QC-ANN, or the ReLU ANN for ``lowlat-cn``), layer by layer, on at
    most ``n_images`` of ``data``, with the recipe of a calibrated ``method`` (default: the one
    given to :func:`convert`, else ``lowlat``); ``config`` overrides the budget fields of
    :class:`~lowlat.calibrate.CalibConfig` (``iterations``, ``lr``, ``batch_size`` ...).
    The recipe's validation accept rule needs a validation split, which this call does not
    have: here every LWC update is kept (compare with ``lwc=False`` on your own validation
    data to apply it). ``lowlat-ft``'s fine-tune is :func:`fine_tune_snn`. Returns the
    per-layer MSE reports."""
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"calibrate: n_images must be an int >= 1, got {n_images!r}")
    method = method or (snn.method if snn.method in CALIBRATED else "lowlat")
    if method not in CALIBRATED:
        raise ValueError(f"calibrate: method must be one of {', '.join(CALIBRATED)}")
    if get_method(method).finetune:
        raise ValueError(f"calibrate: {method!r} is lowlat-lmpc followed by an end-to-end "
                         "fine-tune on labelled data: convert and calibrate with "
                         "method='lowlat-lmpc', then call api.fine_tune_snn(snn, train, val, "
                         "teacher=<ReLU ANN>)")
    if snn.method in CALIBRATED and snn.method != method:
        raise ValueError(f"calibrate: the SNN was converted as the start of {snn.method!r}; "
                         f"convert it with method={method!r} to calibrate it as {method!r}")
    r = recipe(method)
    _check_source(qcann, method)
    cfg = CalibConfig(**{"T": snn.T, "lmpc": r.lmpc, "lwc": r.lwc, "formula": r.formula,
                         "granularity": r.granularity, "optimizer": r.optimizer,
                         "accept": "always" if r.accept == "val" else r.accept,
                         "lmpc_iterations": r.lmpc_iterations, "surrogate": r.surrogate,
                         **config})
    if START_SOURCE[r.start] == "ann":  # match the ReLU ANN clipped at each neuron's θ
        target = clip_target(qcann, {n: m.theta.detach().clone()
                                     for n, m in spiking_layers(snn.net)})
    else:
        target = trace(qcann)
    xs = _float(snn.normalize(gather(data, n_images, who="calibrate")), "calibrate")
    reports = _calibrate(snn.net, target, xs, cfg, progress=progress)
    reset_states(snn.net)
    snn.method = method
    return reports


def _cycle(train: Iterable, normalize: Callable[[Tensor], Tensor],
           ) -> Iterator[tuple[Tensor, Tensor]]:
    """Labelled batches of ``train``, pass after pass (the fine-tune counts steps, not epochs)."""
    while True:
        n = 0
        for x, y in _pairs(train, "fine_tune_snn: train"):
            n += 1
            yield _float(normalize(x), "fine_tune_snn: train"), y
        if n == 0:
            raise ValueError("fine_tune_snn: train gave no batches")


def fine_tune_snn(snn: SpikingNetwork, train: Iterable, val: Iterable, *,
                  teacher: nn.Module | None = None, seed: int = 0, progress: bool = False,
                  **config: Any) -> dict:
    """Train the whole SNN end to end by BPTT at its T (``lowlat-ft``'s second half, after
    ``lowlat-lmpc``), in place, keeping the best state on ``val``: the calibrated start
    included, so it never ends below where it began. ``train`` yields augmented ``(x, y)``
    batches and is cycled (its batch size is the step's); ``teacher`` (the ReLU ANN, same
    input) is needed while ``kd`` > 0. ``config`` sets :class:`~lowlat.finetune.FinetuneConfig`
    fields (``iterations``, ``lr``, ``kd``, ``neurons``, ``eval_every`` ...). Returns the
    report (``ft_val_best``, ``ft_val_curve`` ...)."""
    if "batch_size" in config:
        raise ValueError("fine_tune_snn: the batch size is train's own (set it in your "
                         "DataLoader); batch_size would be ignored")
    cfg = FinetuneConfig(**config)
    if cfg.kd > 0 and teacher is None:
        raise ValueError(f"fine_tune_snn: kd={cfg.kd} distils from a teacher: pass "
                         "teacher=<your ReLU ANN> or set kd=0 (labels only)")

    snn._batch = None
    rep = finetune(snn.net, _cycle(train, snn.normalize), snn.T, cfg,
                   lambda _net: evaluate(snn, val)[snn.T],  # _net is snn.net
                   teacher=teacher.eval() if teacher is not None and cfg.kd > 0 else None,
                   seed=seed, progress=progress)
    reset_states(snn.net)
    snn.net.eval()
    named = {"lowlat-lmpc": "lowlat-ft", "signed": "lowlat-ft-signed"}  # the table's recipes
    snn.method = named.get(snn.method, f"{snn.method}+ft")
    return rep


def evaluate(snn: SpikingNetwork, data: Iterable, timesteps: Iterable[int] | None = None,
             max_chunk: int = 16, channels_last: bool | None = None) -> dict[int, float]:
    """Top-1 accuracy at every T in ``timesteps`` (default: the SNN's T) from one run.

    ``channels_last``: run a 2-d CNN channels-last (faster on a CPU with the compiled neuron
    kernels, ``lowlat.fused``); the network keeps its own layout afterwards."""
    ts = sorted(set(timesteps or [snn.T]))
    st = evaluate_snn(snn.net, _pairs(data, "evaluate"), ts,
                      transform=lambda x: _float(snn.normalize(x), "evaluate"),
                      max_chunk=max_chunk, stats=False, progress=False,
                      channels_last=channels_last)
    return st.accuracy()


def _factory_path(factory: str | Callable) -> str:
    path = factory if isinstance(factory, str) else f"{factory.__module__}:{factory.__qualname__}"
    mod, _, name = path.partition(":")
    if not name or "<locals>" in name or mod == "__main__":
        raise ValueError(f"save_snn: factory {path!r} is not importable; give a module-level "
                         "function as 'package.module:function'")
    import_factory(path)  # fails now rather than at load time
    return path


def save_snn(path: str | Path, snn: SpikingNetwork, factory: str | Callable,
             kwargs: dict | None = None, metrics: dict | None = None) -> None:
    """Write ``snn`` as a ``weights_only`` artifact that :func:`load_snn` rebuilds.

    ``factory`` builds the user's original ANN from ``kwargs`` (JSON-able): an importable
    ``'module:function'`` or a module-level function; a name of :mod:`lowlat.models`' registry
    also works. The artifact stores the fx graph code (checked on load), T, the preprocessing
    and, in the state dict, every neuron's θ, v(0) and shift.
    """
    kwargs = dict(kwargs or {})
    qc = [m for m in snn.net.modules() if isinstance(m, QCActivation)]
    if qc:
        raise ValueError("save_snn: the network still holds QC activations; convert it first")
    from lowlat.models.registry import list_models

    if isinstance(factory, str) and ":" not in factory and factory in list_models():
        arch = {"name": factory, "num_classes": kwargs.pop("num_classes", 10),
                "in_channels": kwargs.pop("in_channels", 3), "kwargs": kwargs}
    else:
        arch = {"factory": _factory_path(factory), "kwargs": kwargs}
    act = {"name": "qc", "kwargs": {}}
    save_artifact(path, "snn", snn.net, arch, act, metrics or {}, {},
                  fingerprint([arch, snn.net.code]), T=snn.T, method=snn.method,
                  graph=snn.net.code,
                  preprocess={"mean": snn.mean, "std": snn.std})


def load_snn(path: str | Path) -> SpikingNetwork:
    """The :class:`SpikingNetwork` saved by :func:`save_snn` (``torch.load(weights_only=True)``)."""
    art = load_artifact(path, "snn")
    net = _rebuild(art)
    pre = art.get("preprocess") or {}
    return SpikingNetwork(net, int(art.get("T") or 1), pre.get("mean"), pre.get("std"),
                          art.get("method", ""))


class Converter:
    """``Converter(data, T=4, method='lowlat')(model)``: prepare, optional fine-tuning
    (``fine_tune(qcann) -> qcann``), convert and calibrate in one call. The QC-ANN stays
    available as ``converter.qcann`` (the calibration reference)."""

    def __init__(self, data: Data, T: int = 4, method: str = "lowlat", *, levels: int = 8,
                 shift: float = 0.0, pool: str = "keep", n_images: int = 256,
                 fine_tune: Callable[[nn.Module], nn.Module] | None = None,
                 mean=None, std=None, **calib: Any) -> None:
        if calib and not get_method(method).calibrated:
            raise ValueError(f"Converter: {method!r} is not calibrated; the calibration "
                             f"settings {', '.join(calib)} would be ignored")
        self.data, self.T, self.method = data, T, method
        self.levels, self.shift, self.pool, self.n_images = levels, shift, pool, n_images
        self.fine_tune, self.mean, self.std, self.calib = fine_tune, mean, std, calib
        self.qcann: nn.Module | None = None

    def __call__(self, model: nn.Module) -> SpikingNetwork:
        m = get_method(self.method)
        if m.finetune:
            raise ValueError(f"Converter: {self.method!r} needs labelled training and "
                             "validation data: use method='lowlat-lmpc', then "
                             "api.fine_tune_snn(snn, train, val, teacher=model)")
        if m.source == "ann":  # θ from the ReLU ANN's own statistics: no QC-ANN
            if self.fine_tune is not None:
                raise ValueError(f"Converter: {self.method!r} converts the ReLU ANN itself; "
                                 "fine_tune= (a QC-ANN step) would be ignored")
            ann = (replace_max_pooling(model) if self.pool == "avg" else model).eval()
            snn = convert(ann, self.method, self.T, self.data, mean=self.mean, std=self.std)
            if m.calibrated:
                calibrate(snn, ann, self.data, n_images=self.n_images, method=self.method,
                          **self.calib)
            return snn
        qc = prepare(model, self.data, levels=self.levels, shift=self.shift, pool=self.pool,
                     mean=self.mean, std=self.std)
        if self.fine_tune is not None:
            qc = self.fine_tune(qc)
        self.qcann = qc.eval()
        snn = convert(qc, self.method, self.T, mean=self.mean, std=self.std)
        if m.calibrated:
            calibrate(snn, qc, self.data, n_images=self.n_images, method=self.method,
                      **self.calib)
        return snn


__all__ = ["Converter", "Recording", "SpikingNetwork", "calibrate", "convert",
           "evaluate", "fine_tune", "fine_tune_snn", "gather", "load_snn", "prepare",
           "save_snn"]
