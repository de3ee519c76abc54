"""Grad-CAM heat maps (Selvaraju et al. 2017) through the grad-cam package (pytorch_grad_cam): where
in an image the evidence for a class lies, for CNNs and ViTs, laid over the image as the user gave it,
beside the image, under the predicted label and its probability."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from classifier.data.transforms import InputSpec
from classifier.errors import UserError
from classifier.evaluation.fonts import use_fonts_for
from classifier.extras import import_for

OVERLAY_ALPHA = 0.5  # share of the heat map's colour in the overlay
# Pixels of the short side a picture is drawn at, at least (a 32 px image is a stamp on a screen) and
# of the long side, at most (a photo's full resolution only makes the file large).
MIN_SIDE, MAX_SIDE = 224, 1024
DPI = 100


def _require_grad_cam():
    grad_cam = import_for("gradcam=true", "gradcam", "pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return grad_cam.GradCAM, ClassifierOutputTarget


def target_layer(net: nn.Module) -> tuple[nn.Module, Callable | None]:
    """The layer whose activations Grad-CAM weighs, and how to turn them into (B, C, H, W) maps.

    ViTs (timm's `blocks` after a `patch_embed`): the last block's first norm, its tokens without
    the class/register tokens laid out on the patch grid (the choice of the grad-cam package's ViT
    tutorial: the last block's output only feeds the class token through the final norm). CNNs:
    the last feature stage timm lists in `feature_info` (ResNet layer4, EfficientNet blocks.6,
    ConvNeXt stages.3), our scratch CNN's last residual block, else the last convolution.
    """
    blocks, patch_embed = getattr(net, "blocks", None), getattr(net, "patch_embed", None)
    if blocks is not None and patch_embed is not None and hasattr(blocks[-1], "norm1"):
        prefix = int(getattr(net, "num_prefix_tokens", 1))
        grid = getattr(patch_embed, "grid_size", None)
        return blocks[-1].norm1, lambda tokens: tokens_to_maps(tokens, prefix, grid)
    info = getattr(net, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        channels = last.get("num_chs")
        return net.get_submodule(last["module"]), lambda x: channels_first(x, channels)
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        return features[-1], None
    convolutions = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise UserError(f"gradcam=true: {type(net).__name__} has neither convolutions nor ViT blocks")
    return convolutions[-1], None


def tokens_to_maps(tokens: torch.Tensor, prefix: int, grid: tuple[int, int] | None) -> torch.Tensor:
    """(B, prefix + H*W, C) ViT tokens as (B, C, H, W) maps."""
    patches = tokens[:, prefix:, :]
    if grid is None:  # square
        side = math.isqrt(patches.shape[1])
        grid = (side, patches.shape[1] // side)
    return patches.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2]).permute(0, 3, 1, 2)


def channels_first(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """NHWC stage outputs (Swin-like models) as NCHW; NCHW ones unchanged."""
    if x.ndim == 4 and channels and x.shape[1] != channels and x.shape[-1] == channels:
        return x.permute(0, 3, 1, 2)
    return x


def gradcam_maps(model: nn.Module, net: nn.Module, images: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(B, H, W) Grad-CAM maps in [0, 1] at the input's size, each for its class in `classes`.
    `model` maps images to logits (the LightningModule, or `net` itself); `net` is the backbone whose
    layer is weighed."""
    GradCAM, ClassifierOutputTarget = _require_grad_cam()
    layer, reshape = target_layer(net)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    # An input that wants its gradient: gradients reach the layer even when the backbone is frozen.
    images = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), GradCAM(model, [layer], reshape) as cam:
        return cam(input_tensor=images, targets=targets)


def crop_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the region of an image of `size` (width, height) that the eval
    transform (resize to img_size / crop_pct, centre crop img_size) shows the model, in the image's
    pixels; with crop_mode 'border' it extends past the image where the input is padding."""
    width, height = size
    scale = math.floor(spec.img_size / spec.crop_pct)
    if spec.crop_mode == "squash":
        box_w, box_h = spec.img_size * width / scale, spec.img_size * height / scale
    else:  # 'center' fits the short side to `scale`, 'border' the long side
        side = min(width, height) if spec.crop_mode == "center" else max(width, height)
        box_w = box_h = spec.img_size * side / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def heat_on_image(cam: np.ndarray, size: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """A Grad-CAM map of the model's input as an (height, width) map of the original image: the
    map resized onto the region the model saw, 0 elsewhere."""
    width, height = size
    left, top, right, bottom = crop_box(size, spec)
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    resized = np.asarray(
        Image.fromarray(cam.astype(np.float32)).resize((box_w, box_h), Image.Resampling.BILINEAR)
    )
    heat = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    xs, ys = slice(max(0, x0), min(width, x0 + box_w)), slice(max(0, y0), min(height, y0 + box_h))
    heat[ys, xs] = resized[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return heat


def overlay(image: Image.Image, heat: np.ndarray, seen: np.ndarray | None = None) -> Image.Image:
    """The image with the heat map (jet colours) blended over it, where `seen` (a boolean mask;
    default everywhere) says the model saw it."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    alpha = OVERLAY_ALPHA * (np.ones_like(heat) if seen is None else seen.astype(np.float32))
    blended = rgb * (1 - alpha[..., None]) + colours * alpha[..., None]
    return Image.fromarray(np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8))


def seen_mask(size: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """Which pixels of an image of `size` the eval crop keeps."""
    width, height = size
    left, top, right, bottom = crop_box(size, spec)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((ys >= top) & (ys <= bottom))[:, None] & ((xs >= left) & (xs <= right))[None, :]


def display_scale(size: tuple[int, int]) -> float:
    """How much to enlarge (or shrink) an image of `size` for display: a whole factor that brings its
    short side to MIN_SIDE for small images (so each pixel stays a sharp square), its long side to
    MAX_SIDE for big ones, else 1."""
    short, long = min(size), max(size)
    if short < MIN_SIDE:
        return float(min(math.ceil(MIN_SIDE / short), max(1, MAX_SIDE // long)))
    return min(1.0, MAX_SIDE / long)


def gradcam_figure(
    image: Image.Image, cam: np.ndarray, spec: InputSpec, label: str, probability: float
) -> Figure:
    """The image and its Grad-CAM overlay side by side at a readable size (display_scale), under
    "predicted: <label> (probability <p>)". `cam` is the map of the model's input (gradcam_maps);
    the region the eval crop cut away is left untinted. Small images are enlarged pixel by pixel
    (nearest), the heat map smoothly (bilinear)."""
    use_fonts_for([label])
    scale = display_scale(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    small = scale > 1 and min(image.size) < MIN_SIDE
    shown = image.convert("RGB").resize(
        (width, height), Image.Resampling.NEAREST if small else Image.Resampling.BILINEAR
    )
    heat = heat_on_image(cam, (width, height), spec)
    picture = overlay(shown, heat, seen_mask((width, height), spec))
    gap, caption = 8, 36  # pixels between the panels, and above them for the title
    # A quarter pixel more: older matplotlib truncates inches x dpi (455.99... -> 455), newer rounds.
    fig = Figure(figsize=((2 * width + gap + 0.25) / DPI, (height + caption + 0.25) / DPI), dpi=DPI)
    for left, pixels in ((0, shown), (width + gap, picture)):
        ax = fig.add_axes((left / fig.bbox.width, 0, width / fig.bbox.width, height / fig.bbox.height))
        ax.imshow(np.asarray(pixels), interpolation="nearest")
        ax.axis("off")
    title = f"predicted: {label} (probability {probability:.2f})"
    title = textwrap.fill(title, width=max(20, int(fig.bbox.width / 10)))  # about 10 pixels a character
    fig.suptitle(title, y=1 - 4 / fig.bbox.height, va="top", fontsize=13)
    return fig
