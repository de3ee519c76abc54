"""The network of the CIFAR-10 speed-run records (Keller Jordan's airbench94, after Page's ResNet-9
and tysam-code's hlb-CIFAR10): a 2x2 stem conv, three conv-pool-BN-GELU groups of widths 64, 256,
256, a max-pool to 1x1 and a bias-free linear head scaled by 1/9. ~1.97 M parameters, ~0.36 GFLOP
per 32 px image forward.

With airbench's initialisation (`airbench_init`, the default): the 3x3 convs start as partial
identities (dirac), the batch norms learn their biases only (scales fixed at 1, eps 1e-12), and
the stem is a whitening filter of the training images' 2x2 patches, frozen: `init_from_images`,
which ClassifierModule calls with the training split before a fresh fit."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

WIDTHS = (64, 256, 256)
WHITENING_EPS = 5e-4  # airbench's: added to the patch covariance's eigenvalues


def conv3x3(in_channels: int, out_channels: int, dirac: bool) -> nn.Conv2d:
    """A bias-free 3x3 conv; with `dirac`, its first `in_channels` filters start as the identity
    (airbench's Conv): the group passes its input through at initialisation, which deep nets
    without skip connections need to start training fast."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    if dirac:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(in_channels, out_channels)])
    return conv


def batch_norm(channels: int, momentum: float, airbench_init: bool) -> nn.BatchNorm2d:
    # BatchNorm momentum 0.4 in torch's convention is airbench's 0.6 (the running stats' weight)
    if not airbench_init:
        return nn.BatchNorm2d(channels, momentum=momentum)
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(False)  # scale fixed at 1: the next conv's weights can rescale
    return norm


class ConvGroup(nn.Sequential):
    def __init__(
        self, in_channels: int, out_channels: int, momentum: float = 0.4, airbench_init: bool = True
    ):
        super().__init__(
            conv3x3(in_channels, out_channels, dirac=airbench_init),
            nn.MaxPool2d(2),
            batch_norm(out_channels, momentum, airbench_init),
            nn.GELU(),
            conv3x3(out_channels, out_channels, dirac=airbench_init),
            batch_norm(out_channels, momentum, airbench_init),
            nn.GELU(),
        )


class SpeedrunCNN(nn.Module):
    """airbench94's layout, with timm's head API (get_classifier, reset_classifier, num_features)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        drop_rate: float = 0.0,
        airbench_init: bool = True,
    ):
        super().__init__()
        widths = [round(w * width) for w in WIDTHS]
        stem = 2 * in_chans * 2 * 2  # airbench's whitening width: each patch direction and its negative
        self.airbench_init = airbench_init
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, stem, kernel_size=2, bias=True),
            nn.GELU(),
            ConvGroup(stem, widths[0], airbench_init=airbench_init),
            ConvGroup(widths[0], widths[1], airbench_init=airbench_init),
            ConvGroup(widths[1], widths[2], airbench_init=airbench_init),
        )
        if airbench_init:
            nn.init.zeros_(self.features[0].bias)
            self.features[0].weight.requires_grad_(False)  # set by init_from_images, then kept
        self.num_features = widths[2]
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, bias=False)
        self.logit_scale = 1 / 9

    @torch.no_grad()
    def init_from_images(self, batches: Iterable[torch.Tensor]) -> None:
        """Set the stem to whiten the 2x2 patches of `batches` (normalised training images): its
        filters are the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue + eps), each
        with its negative (airbench's init_whitening_conv). The covariance is summed over every
        batch in float64."""
        if not self.airbench_init:
            return
        stem = self.features[0]
        kh, kw = stem.kernel_size
        moment, count, seen = None, 0, 0
        for images in batches:
            # (B, C, H, W) -> every kh x kw patch as a row of C*kh*kw values, in the weight's layout
            patches = images.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5)
            flat = patches.reshape(-1, stem.in_channels * kh * kw).double()
            part = flat.T @ flat
            moment = part if moment is None else moment + part
            count += len(flat)
            seen += len(images)
        if not count:
            return
        eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)
        order = eigenvalues.argsort(descending=True)
        filters = eigenvectors.T[order] / (eigenvalues[order, None] + WHITENING_EPS).sqrt()
        filters = filters.reshape(-1, stem.in_channels, kh, kw)
        stem.weight.copy_(torch.cat((filters, -filters)).to(stem.weight.dtype))
        log.info("speedrun_cnn: the stem whitens the 2x2 patches of %d training images", seen)

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
