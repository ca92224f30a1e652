"""Lightning wrapper used by the ``ann`` and ``phase1`` stages."""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lowlat.activations import QCActivation, RateNorm
from lowlat.head import distill_kl


class Classifier(L.LightningModule):
    """Cross-entropy classifier trained with SGD + cosine decay (the paper's recipe).

    Thresholds (QC λ, Rate-Norm p) form their own parameter group with their own learning rate
    and weight decay, because at the QC-ANN's lr of 1e-5 they would barely move.

    ``teacher`` and ``kd`` (lowlat, not the paper): the loss becomes (1 − kd)·CE + kd·KL to the
    frozen teacher's softmax, so that a QC-ANN learns from the ReLU ANN it was made from.
    ``optimizer``: ``sgd`` (the paper's) or ``adam``.
    """

    def __init__(self, model: nn.Module, num_classes: int, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 5e-4, epochs: int = 1,
                 threshold_lr: float | None = None, threshold_weight_decay: float = 0.0,
                 nesterov: bool = False, freeze_bn: bool = False,
                 teacher: nn.Module | None = None, kd: float = 0.0,
                 optimizer: str = "sgd") -> None:
        super().__init__()
        if not 0.0 <= kd <= 1.0:
            raise ValueError(f"kd must be in [0, 1], got {kd}")
        if kd > 0 and teacher is None:
            raise ValueError(f"kd={kd} needs a teacher network")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
        self.model = model
        # In a tuple, not a submodule: not saved in checkpoints, and never put in training
        # mode by Lightning (its BatchNorm statistics must not move).
        self.teacher = (teacher.eval().requires_grad_(False),) if kd > 0 else ()
        self.kd, self.optimizer_name = kd, optimizer
        self.freeze_bn = freeze_bn
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.epochs = max(1, epochs)
        self.threshold_lr = lr if threshold_lr is None else threshold_lr
        self.threshold_weight_decay = threshold_weight_decay
        self.nesterov = nesterov
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        # Set by the GpuSpeedups callback (trainer=gpu); plain attributes, not in the state dict.
        self.channels_last = False
        self.loss_in_progress_bar = True  # the bar reads the loss every step: a host sync
        self.compiled_forward = None  # torch.compile(self.model.forward), a function

    def set_train_mode(self) -> None:
        """Every module trains, except BatchNorm when ``freeze_bn`` (statistics kept fixed;
        its affine parameters still learn). Called before fit and at every epoch start, so no
        module is left in a mode nobody chose."""
        self.model.train()
        if self.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_train_epoch_start(self) -> None:
        self.set_train_mode()

    def on_fit_start(self) -> None:
        for t in self.teacher:
            t.to(self.device)

    def on_train_epoch_end(self) -> None:
        """Stop at the first epoch that leaves a non-finite weight (one check per epoch, not a
        host synchronisation per step)."""
        bad = first_nonfinite(self.model)
        if bad is not None:
            raise FloatingPointError(
                f"training diverged at epoch {self.current_epoch}: parameter {bad!r} is NaN/inf "
                f"(lr {self.lr}); lower the learning rate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        fn = self.compiled_forward or self.model
        return fn(x)

    def training_step(self, batch, _idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if self.teacher:
            with torch.no_grad():
                teacher_logits = self.teacher[0](x)
            loss = (1.0 - self.kd) * loss + self.kd * distill_kl(logits, teacher_logits)
        self.train_acc.update(logits.detach(), y)  # no per-batch value: computed once an epoch
        self.log("train/loss", loss.detach(), prog_bar=self.loss_in_progress_bar)
        self.log("train/top1", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)  # mean over ranks
        self.log("val/top1", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        thr, rest = [], []
        for m in self.model.modules():
            if isinstance(m, QCActivation | RateNorm):
                thr += list(m.parameters(recurse=False))
        thr_ids = {id(p) for p in thr}
        rest = [p for p in self.model.parameters() if id(p) not in thr_ids]
        groups = [{"params": rest, "lr": self.lr, "weight_decay": self.weight_decay}]
        if thr:
            groups.append({"params": thr, "lr": self.threshold_lr,
                           "weight_decay": self.threshold_weight_decay})
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(groups, lr=self.lr)
        else:
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum,
                                  nesterov=self.nesterov)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class GpuSpeedups(L.Callback):
    """Channels-last weights and inputs, optional ``torch.compile`` and no host sync per step.

    Why a callback: the stages build the Classifier and the Trainer from the config; this lets
    ``trainer=gpu`` switch the speed-ups on without the stages knowing. Undone when fitting ends,
    so the weights that are saved and evaluated afterwards are in the default layout.
    """

    def __init__(self, channels_last: bool = True, compile_model: bool = False,
                 sync_free: bool = True) -> None:
        self.channels_last, self.compile_model, self.sync_free = (
            channels_last, compile_model, sync_free)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.channels_last:
            pl_module.model.to(memory_format=torch.channels_last)
            pl_module.channels_last = True
        if self.compile_model:
            pl_module.compiled_forward = torch.compile(pl_module.model.forward)
        if self.sync_free:
            pl_module.loss_in_progress_bar = False

    def on_fit_end(self, trainer, pl_module) -> None:
        pl_module.compiled_forward = None
        if pl_module.channels_last:
            pl_module.model.to(memory_format=torch.contiguous_format)
            pl_module.channels_last = False


def make_trainer(channels_last: bool = False, compile_model: bool = False,
                 sync_free: bool = False, callbacks: list | None = None, **kwargs) -> L.Trainer:
    """``lightning.Trainer`` plus :class:`GpuSpeedups` (the ``_target_`` of ``trainer=gpu``)."""
    callbacks = list(callbacks or [])
    if channels_last or compile_model or sync_free:
        callbacks.append(GpuSpeedups(channels_last, compile_model, sync_free))
    return L.Trainer(callbacks=callbacks, **kwargs)


class BestWeights(L.Callback):
    """Keeps, in memory, the weights of the epoch with the best ``monitor`` (model selection on
    the validation split) and restores them when training ends."""

    def __init__(self, monitor: str = "val/top1") -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.state: dict | None = None
        self.epoch = -1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get(self.monitor)
        if v is None:
            return
        v = float(v)
        if self.best is None or v > self.best:
            self.best, self.epoch = v, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.model.state_dict())

    def state_dict(self) -> dict:
        """Saved in the epoch checkpoints, so a resumed fit still returns the best epoch."""
        return {"monitor": self.monitor, "best": self.best, "epoch": self.epoch,
                "state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.epoch = state_dict["best"], state_dict["epoch"]
        self.state = state_dict["state"]

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.state is not None:
            pl_module.model.load_state_dict(self.state)
        # ddp_spawn sends callback_metrics (not callbacks) back to the main process
        trainer.callback_metrics.update({
            "best/value": torch.tensor(float("nan") if self.best is None else self.best),
            "best/epoch": torch.tensor(self.epoch),
            "best/epochs_run": torch.tensor(trainer.current_epoch)})

    def recover(self, trainer) -> None:
        """In the main process of a spawned fit: what ``on_fit_end`` left in callback_metrics."""
        cm = trainer.callback_metrics
        if self.best is None and "best/value" in cm:
            v = float(cm["best/value"])
            self.best = None if v != v else v
            self.epoch = int(cm["best/epoch"])


def first_nonfinite(model: nn.Module) -> str | None:
    """Name of the first parameter or buffer holding a NaN or inf, else None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


@torch.no_grad()
def evaluate(model: nn.Module, loader, transform, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of an ANN on a loader of uint8 batches."""
    model = model.to(device).eval()
    correct = n = 0
    for x, y in loader:
        x, y = transform(x.to(device)), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        n += y.numel()
    return correct / max(1, n)
