"""A small, fast CNN for 32 px images, trained from scratch."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalMaxPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), the maximum over each map: nn.AdaptiveMaxPool2d(1) as a plain
    reduction, which every ONNX exporter version translates (onnxscript 0.6 has no adaptive max pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1), keepdim=True)


class ScratchCNN(nn.Module):
    """ResNet-9 layout (Page's DAWNBench CIFAR net) at a quarter of its width by default:
    conv, then three stages that double the channels and halve the resolution, residual blocks
    after the first and last, global max-pool and a linear head. Batch norm and the residual
    paths are what let it beat the plain three-conv tutorial CNN; at width 16 it is ~0.4 M
    parameters and ~25 MMAC per 32 px image, so a CPU trains it at hundreds of images/s.

    Follows timm's head API (`get_classifier`, `reset_classifier`, `num_features`) so weight
    loading and the optimizer treat it like any timm model.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, c),
            conv_bn_relu(c, 2 * c),
            nn.MaxPool2d(2),
            Residual(2 * c),
            conv_bn_relu(2 * c, 4 * c),
            nn.MaxPool2d(2),
            conv_bn_relu(4 * c, 8 * c),
            nn.MaxPool2d(2),
            Residual(8 * c),
        )
        self.num_features = 8 * c
        self.num_classes = num_classes
        self.pool = GlobalMaxPool()  # any input size works; 32 px gives 4x4 maps here
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's layer grouping (for layer-wise lr decay and gradual unfreezing): the first conv,
        then each later layer of `features`; the head, unmatched, comes last."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
