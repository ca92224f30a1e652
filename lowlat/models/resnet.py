"""CIFAR ResNets: the calibration papers' wide ResNet-20, He et al.'s thin one, and ResNet-18."""

from __future__ import annotations

from torch import nn

from lowlat.activations import ActFactory
from lowlat.models.registry import register_model


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN, plus the shortcut, then the activation on the summed current."""

    def __init__(self, cin: int, cout: int, stride: int, act_layer: ActFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act2 = act_layer()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, blocks: list[int], widths: list[int], num_classes: int, in_channels: int,
        act_layer: ActFactory, stem_width: int | None = None,
    ) -> None:
        super().__init__()
        stem = stem_width or widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), act_layer()
        )
        layers: list[nn.Module] = []
        c = stem
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c, w, stride, act_layer))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)  # [B, C, 1, 1] -> [B, C]
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, act_layer: ActFactory = nn.ReLU,
             width: float = 1.0) -> ResNet:
    """The calibration papers' ResNet-20: 64/128/256 channels, 3 blocks a stage (~4.3 M params)."""
    w = [max(1, int(round(c * width))) for c in (64, 128, 256)]
    return ResNet([3, 3, 3], w, num_classes, in_channels, act_layer)


@register_model
def resnet20_thin(num_classes: int = 10, in_channels: int = 3, act_layer: ActFactory = nn.ReLU,
                  width: float = 1.0) -> ResNet:
    """He et al.'s ResNet-20 for CIFAR: 16/32/64 channels (~0.27 M params)."""
    w = [max(1, int(round(c * width))) for c in (16, 32, 64)]
    return ResNet([3, 3, 3], w, num_classes, in_channels, act_layer)


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, act_layer: ActFactory = nn.ReLU,
             width: float = 1.0) -> ResNet:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), 64/128/256/512 channels."""
    w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    return ResNet([2, 2, 2, 2], w, num_classes, in_channels, act_layer)
