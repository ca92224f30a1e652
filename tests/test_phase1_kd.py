"""Phase I with a teacher (``phase1.kd``) and Adam (``phase1.optimizer``): lowlat options, off
by default, that must leave the teacher untouched and the paper's recipe unchanged."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lowlat.activations import QCActivation
from lowlat.convert import swap_activations
from lowlat.lit import Classifier
from lowlat.models import create_model


def _data(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 4, (n,), generator=g)), batch_size=8)


def _nets():
    torch.manual_seed(0)
    ann = create_model("small_cnn", 4, 3, "relu", width=8)
    with torch.no_grad():  # BatchNorm statistics that a training-mode teacher would move
        for m in ann.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    qc = swap_activations(copy.deepcopy(ann), lambda _n: QCActivation(2, 0.5, init_lambda=2.0))
    return ann, qc


def _fit(lit: Classifier, steps: int) -> list[float]:
    losses: list[float] = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[Rec()])
    trainer.fit(lit, train_dataloaders=_data())
    return losses


def test_kd_teacher_stays_frozen_and_outside_the_state():
    ann, qc = _nets()
    before = copy.deepcopy(ann.state_dict())
    lit = Classifier(qc, 4, lr=0.05, teacher=ann, kd=0.5, freeze_bn=True)
    losses = _fit(lit, 3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for k, v in ann.state_dict().items():  # BatchNorm statistics and weights alike
        assert torch.equal(v, before[k]), k
    assert not any(k.startswith("teacher") for k in lit.state_dict())
    assert not any(p.requires_grad for p in ann.parameters())


def test_kd_loss_is_the_mix_of_ce_and_kl():
    """kd = 1 against a teacher that computes the same function: the KL is 0, so is the loss;
    kd = 0.5: half the cross-entropy."""
    ann, _ = _nets()
    student = copy.deepcopy(ann)
    x, y = next(iter(_data()))
    ce = torch.nn.functional.cross_entropy(student.eval()(x), y)
    for kd, want in ((1.0, 0.0), (0.5, 0.5 * float(ce))):
        lit = Classifier(copy.deepcopy(student), 4, teacher=copy.deepcopy(ann), kd=kd,
                         freeze_bn=True)
        lit.set_train_mode()
        lit.log = lambda *a, **k: None  # outside a Trainer
        assert float(lit.training_step((x, y), 0)) == pytest.approx(want, abs=1e-5)


def test_adam_and_bad_settings():
    ann, qc = _nets()
    opt = Classifier(qc, 4, lr=1e-3, optimizer="adam").configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.Adam)
    assert len(opt.param_groups) == 2  # λ keeps its own learning rate
    with pytest.raises(ValueError, match="teacher"):
        Classifier(qc, 4, kd=0.5)
    with pytest.raises(ValueError, match="kd"):
        Classifier(qc, 4, teacher=ann, kd=1.5)
    with pytest.raises(ValueError, match="sgd or adam"):
        Classifier(qc, 4, optimizer="rmsprop")
