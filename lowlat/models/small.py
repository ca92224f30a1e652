"""A small CNN for the quickstart (8x8 digits or 32x32 images, a few seconds an epoch on a CPU)."""

from __future__ import annotations

from torch import nn

from lowlat.activations import ActFactory
from lowlat.models.layers import conv_bn_act
from lowlat.models.registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, act_layer: ActFactory,
                 width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_bn_act(in_channels, w, act_layer),
            *conv_bn_act(w, 2 * w, act_layer),
            nn.AvgPool2d(2),
            *conv_bn_act(2 * w, 4 * w, act_layer),
            nn.AvgPool2d(2),
            *conv_bn_act(4 * w, 4 * w, act_layer),
            nn.AdaptiveAvgPool2d(1),
        )
        self.flatten = nn.Flatten(1)  # [B, 4w, 1, 1] -> [B, 4w]
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


@register_model
def small_cnn(num_classes: int = 10, in_channels: int = 3, act_layer: ActFactory = nn.ReLU,
              **kwargs) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, act_layer, **kwargs)
