"""VGG-16 with BN for CIFAR-sized inputs."""

from __future__ import annotations

from torch import nn

from lowlat.activations import ActFactory
from lowlat.models.layers import conv_bn_act, make_pool
from lowlat.models.registry import register_model

VGG16_CFG: list[int | str] = [
    64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P",
]


class VGG(nn.Module):
    """VGG with BN; ``classifier='linear'`` (calibration papers) or ``'mlp'`` (QCFS 4096-4096)."""

    def __init__(
        self, cfg: list[int | str], num_classes: int, in_channels: int, act_layer: ActFactory,
        width: float = 1.0, pool: str = "avg", classifier: str = "linear", hidden: int = 4096,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "P":
                layers.append(make_pool(pool))
            else:
                cout = max(1, int(round(int(v) * width)))
                layers += conv_bn_act(c, cout, act_layer)
                c = cout
        layers.append(nn.AdaptiveAvgPool2d(1))  # identity for 32x32 inputs (already 1x1)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)  # [B, C, 1, 1] -> [B, C]
        if classifier == "linear":
            self.classifier = nn.Sequential(nn.Linear(c, num_classes))
        elif classifier == "mlp":
            h = max(1, int(round(hidden * width)))
            self.classifier = nn.Sequential(
                nn.Linear(c, h), act_layer(), nn.Linear(h, h), act_layer(),
                nn.Linear(h, num_classes),
            )
        else:
            raise ValueError(f"classifier must be 'linear' or 'mlp', got {classifier!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


@register_model
def vgg16(num_classes: int = 10, in_channels: int = 3, act_layer: ActFactory = nn.ReLU,
          **kwargs) -> VGG:
    """13 conv layers with BN, average pooling by default, then the classifier."""
    return VGG(VGG16_CFG, num_classes, in_channels, act_layer, **kwargs)
