"""Test-time augmentation: the network sees a few views of each (already eval-transformed) image and
their class probabilities are averaged, as timm's and torchvision's references average crops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from classifier.data.transforms import is_small

# Multi-crop for photos: the four corners at this fraction of the side, resized back to the side
# (the centre is the plain view, which is already timm's centre crop).
CORNER_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Which views of a batch to average: the batch itself, its mirror image (`flip`: only when the
    model was trained with flips; a mirrored digit is another glyph) and, for photos, four corner
    crops; small images (<= 64 px, trained with pad-and-crop) get two shifts of side/16 pixels
    instead, the translations their training crops taught them."""

    img_size: int
    flip: bool = True

    __test__ = False  # not a pytest test class, whatever its name says

    @property
    def view_names(self) -> list[str]:
        """What each of `views` is, in order."""
        names = ["plain"] + (["flip"] if self.flip else [])
        if is_small(self.img_size):
            return names + ["shift +", "shift -"]
        return names + ["top-left crop", "top-right crop", "bottom-left crop", "bottom-right crop"]

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = [images]
        if self.flip:
            views.append(images.flip(-1))
        if is_small(self.img_size):
            shift = max(1, self.img_size // 16)
            views += [shifted(images, shift, shift), shifted(images, -shift, -shift)]
        else:
            views += corner_crops(images, CORNER_CROP_FRACTION)
        return views

    def probabilities(
        self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of softmax(forward(view) / temperature) over the views, the plain view's logits)."""
        views = self.views(images)
        logits = [forward(view) for view in views]
        probabilities = torch.stack([(v.float() / temperature).softmax(dim=-1) for v in logits]).mean(0)
        return probabilities, logits[0]


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The batch moved by (dx, dy) pixels, the uncovered border filled by reflection (as the
    training pad-and-crop pads)."""
    pad = max(abs(dx), abs(dy))
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    height, width = images.shape[-2:]
    top, left = pad - dy, pad - dx
    return padded[..., top : top + height, left : left + width]


def corner_crops(images: torch.Tensor, fraction: float) -> list[torch.Tensor]:
    """The four corner crops of `fraction` of each side, resized back to the batch's size."""
    height, width = images.shape[-2:]
    h, w = round(height * fraction), round(width * fraction)
    crops = []
    for top, left in ((0, 0), (0, width - w), (height - h, 0), (height - h, width - w)):
        crop = images[..., top : top + h, left : left + w]
        crops.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
    return crops
