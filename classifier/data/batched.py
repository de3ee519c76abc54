"""Augmentation of whole uint8 batches on any device: what the per-image train transform does to small
images (pad-and-crop with reflection, flip, random erasing, normalisation), drawn independently for
each image from the same distributions, in a handful of tensor operations instead of a Python call
chain per image. Used by the decoded-image cache (classifier/data/decoded.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# torchvision's RandomErasing defaults, which the per-image path uses.
ERASING_SCALE = (0.02, 0.33)
ERASING_RATIO = (0.3, 3.3)
ERASING_TRIES = 10


@dataclass(frozen=True)
class BatchAugment:
    """The train transform of a small-image run as batch operations.

    padding: reflect padding of the random crop (0: no crop, augment.crop=false).
    flip: horizontal flips with probability 0.5.
    erasing: probability of erasing a box (set to the mean colour: 0 after normalising).
    mean, std: the normalisation.
    """

    padding: int
    flip: bool
    erasing: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> augmented, normalised float32."""
        if self.padding:
            images = random_crops(images, self.padding)
        if self.flip:
            flipped = torch.rand(len(images), device=images.device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        out = normalize(images, self.mean, self.std)
        if self.erasing:
            out = random_erasing(out, self.erasing)
        return out


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] -> (x - mean) / std, as ToDtype(scale=True) + Normalize compute it
    (the same operations in the same order, so the same floats)."""
    x = images.to(torch.float32).mul_(1.0 / 255)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def random_crops(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image padded by reflection on every side and cropped back to its size at a uniformly
    drawn offset, as RandomCrop(size, padding, padding_mode='reflect')."""
    batch, _, height, width = images.shape
    # reflect padding works on float tensors only
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)
    top = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[index, channels, rows, cols]


def random_erasing(images: torch.Tensor, p: float) -> torch.Tensor:
    """Erase one box per image with probability p, sized and placed as torchvision's RandomErasing
    draws it (area fraction in ERASING_SCALE, log-uniform aspect ratio in ERASING_RATIO, up to 10
    tries for a box that fits, else none), set to 0 (the mean colour once normalised)."""
    batch, _, height, width = images.shape
    device = images.device
    area = height * width
    scale = torch.empty(batch, ERASING_TRIES, device=device).uniform_(*ERASING_SCALE) * area
    log_ratio = torch.empty(batch, ERASING_TRIES, device=device).uniform_(
        math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
    )
    ratio = log_ratio.exp()
    h = (scale * ratio).sqrt().round().long()
    w = (scale / ratio).sqrt().round().long()
    fits = (h < height) & (w < width)
    first = torch.where(
        fits.any(1), fits.float().argmax(1), torch.zeros(batch, dtype=torch.long, device=device)
    )
    pick = torch.arange(batch, device=device)
    h, w, fits = h[pick, first], w[pick, first], fits[pick, first]
    erase = fits & (torch.rand(batch, device=device) < p)
    top = (torch.rand(batch, device=device) * (height - h + 1).clamp(min=1)).long()
    left = (torch.rand(batch, device=device) * (width - w + 1).clamp(min=1)).long()
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    box = inside_rows[:, :, None] & inside_cols[:, None, :] & erase[:, None, None]
    return images.masked_fill(box[:, None], 0.0)
