import pytest
import torch

from lowlat.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("act", ["relu", "qc", "ratenorm"])
def test_forward_backward_every_model(name, act):
    kwargs = {"width": 0.125} if name != "small_cnn" else {"width": 4}
    model = create_model(name, num_classes=7, in_channels=3, act_layer=act, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_paper_sizes():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 4.2e6 < n(create_model("resnet20")) < 4.4e6
    assert 0.26e6 < n(create_model("resnet20_thin")) < 0.28e6
    vgg = create_model("vgg16")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13


def test_unknown_model():
    with pytest.raises(ValueError, match="registered models"):
        create_model("vgg17")
