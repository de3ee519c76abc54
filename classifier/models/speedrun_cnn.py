"""The network of the CIFAR-10 speed-run records (Keller Jordan's airbench94, after Page's ResNet-9
and tysam-code's hlb-CIFAR10): a 2x2 stem conv, three conv-pool-BN-GELU groups of widths 64, 256,
256, a max-pool to 1x1 and a bias-free linear head scaled by 1/9. ~1.97 M parameters, ~0.36 GFLOP
per 32 px image forward. airbench also initialises the stem as a whitening filter of the training
images' 2x2 patches and freezes it; here the stem is learned like every other layer."""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 256, 256)


class ConvGroup(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.4):
        # BatchNorm momentum 0.4 in torch's convention is airbench's 0.6 (the running stats' weight)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.GELU(),
        )


class SpeedrunCNN(nn.Module):
    """airbench94's layout, with timm's head API (get_classifier, reset_classifier, num_features)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, drop_rate: float = 0.0):
        super().__init__()
        widths = [round(w * width) for w in WIDTHS]
        stem = 2 * in_chans * 2 * 2  # airbench's whitening width: 24 for RGB
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, stem, kernel_size=2, bias=True),
            nn.GELU(),
            ConvGroup(stem, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.num_features = widths[2]
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, bias=False)
        self.logit_scale = 1 / 9

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.amax(dim=(-2, -1)))  # 3x3 maps at 32 px: airbench's MaxPool2d(3)
        return x if pre_logits else self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
