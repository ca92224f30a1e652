"""``trainer=gpu`` tested on the CPU as far as it goes: bf16 autocast, channels-last, no host
sync per step, torch.compile of the model."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning import Callback
from torch.utils.data import DataLoader, TensorDataset

from lowlat.lit import Classifier, GpuSpeedups
from lowlat.models import create_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def _gpu_trainer(**kw):
    """The real ``trainer=gpu`` config, moved to the CPU."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=gpu", "trainer.accelerator=cpu"])
    return hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False, **kw)


def _loader(n: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=8)


class _Record(Callback):
    """Training losses and the dtype the first conv produced (bf16 under autocast)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())

    def __init__(self, lit: Classifier) -> None:
        self.losses: list[torch.Tensor] = []
        self.dtypes: set[torch.dtype] = set()
        conv = next(m for m in lit.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda _m, _a, out: self.dtypes.add(out.dtype))


def test_bf16_mixed_step_on_cpu():
    torch.manual_seed(0)
    lit = Classifier(create_model("vgg16", 10, 3, "relu", width=0.125), 10, lr=0.01)
    rec = _Record(lit)
    trainer = _gpu_trainer(max_steps=2, callbacks=[rec])
    assert trainer.precision == "bf16-mixed"
    assert any(isinstance(c, GpuSpeedups) for c in trainer.callbacks)
    trainer.fit(lit, train_dataloaders=_loader(16))
    assert len(rec.losses) == 2 and all(torch.isfinite(v) for v in rec.losses)
    assert torch.bfloat16 in rec.dtypes  # autocast really ran the convs in bf16
    # after fit: default layout again, nothing compiled, weights float32
    assert not lit.channels_last and lit.compiled_forward is None
    w = next(lit.model.parameters())
    assert w.dtype == torch.float32 and w.is_contiguous()


def test_channels_last_matches_default():
    torch.manual_seed(0)
    model = create_model("vgg16", 10, 3, "relu", width=0.25).eval()
    lit = Classifier(model, 10)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = lit(x)
        cb = GpuSpeedups(channels_last=True)
        cb.setup(None, lit, "fit")
        assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(
            memory_format=torch.channels_last)
        out = lit(x)
        cb.on_fit_end(None, lit)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def _host_syncs(monkeypatch, sync_free: bool, batches: int) -> int:
    """Tensor -> Python conversions (each a device sync on a GPU) during a 2-epoch fit."""
    calls = [0]
    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            calls[0] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    from lowlat.lit import make_trainer

    torch.manual_seed(0)
    lit = Classifier(create_model("small_cnn", 10, 3, "relu", width=4), 10, lr=0.01)
    trainer = make_trainer(sync_free=sync_free, accelerator="cpu", max_epochs=2, logger=False,
                           enable_checkpointing=False, enable_model_summary=False,
                           log_every_n_steps=1000, enable_progress_bar=True)
    trainer.fit(lit, train_dataloaders=_loader(8 * batches))
    monkeypatch.undo()
    return calls[0]


def test_no_host_sync_per_step(monkeypatch):
    # twice the steps, the same number of syncs: none of them is per step
    assert _host_syncs(monkeypatch, True, 3) == _host_syncs(monkeypatch, True, 6)
    # the check can fail: with the loss on the progress bar, every step syncs
    assert _host_syncs(monkeypatch, False, 3) < _host_syncs(monkeypatch, False, 6)


@pytest.mark.slow
def test_compiled_forward_matches():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 3, "relu", width=4).eval()
    lit = Classifier(model, 10)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = lit(x)
        GpuSpeedups(channels_last=False, compile_model=True).setup(None, lit, "fit")
        out = lit(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
