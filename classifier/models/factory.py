"""Building a backbone by name: the scratch CNN or any timm architecture, with hub or local weights."""

from __future__ import annotations

import difflib
import logging
import re
import socket
from urllib.parse import urlparse

import timm
from huggingface_hub import constants as hf_constants
from timm.data import resolve_data_config
from timm.models import PretrainedCfg, get_pretrained_cfg
from torch import nn

from classifier.errors import UserError
from classifier.models.scratch_cnn import ScratchCNN
from classifier.models.speedrun_cnn import SpeedrunCNN
from classifier.models.structure import freeze_backbone as freeze_all_but_head
from classifier.models.weights import load_local_weights, zero_init_head

log = logging.getLogger(__name__)

SCRATCH_MODELS = {"scratch_cnn": ScratchCNN, "speedrun_cnn": SpeedrunCNN}


def check_model_name(name: str) -> None:
    """Raises UserError naming close matches when `name` is neither ours nor a timm architecture,
    or the valid tags when its '.tag' names weights timm does not have."""
    if name in SCRATCH_MODELS:
        return
    if timm.is_model(name):
        _pretrained_cfg(name)  # checks the tag
        return
    candidates = list(SCRATCH_MODELS) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models('*pattern*') lists them"
    ours = ", ".join(SCRATCH_MODELS)
    raise UserError(f"model.name={name!r} is neither one of ours ({ours}) nor a timm model{hint}")


def _pretrained_cfg(name: str) -> PretrainedCfg | None:
    architecture, _, tag = name.partition(".")
    try:
        return get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (foo) for resnet18."
        tags = [full.partition(".")[2] for full in timm.list_pretrained(f"{architecture}.*")]
        valid = f"valid tags: {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        message = f"model.name={name!r}: {architecture} has no weights tagged {tag!r}; {valid}"
        raise UserError(message) from None


def pretrained_input(name: str) -> dict | None:
    """Input size, normalisation, resize filter and eval crop of `name`'s pretrained weights, as timm
    resolves them (`resolve_data_config`); None for models without pretrained weights."""
    if name in SCRATCH_MODELS:
        return None
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    resolved = resolve_data_config(pretrained_cfg=cfg.to_dict())
    return {
        "img_size": resolved["input_size"][-1],
        "mean": list(resolved["mean"]),
        "std": list(resolved["std"]),
        "interpolation": resolved["interpolation"],
        "crop_pct": resolved["crop_pct"],
        "crop_mode": resolved["crop_mode"],
    }


def _takes_img_size(name: str) -> bool:
    # Only fixed-input-size models (ViTs and kin) take img_size; CNNs reject the argument.
    cfg = _pretrained_cfg(name)
    return bool(cfg and cfg.fixed_input_size)


def create_model(
    name: str,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    cifar_stem: bool = False,
    freeze_backbone: bool = False,
    **kwargs,
) -> nn.Module:
    """A backbone with a `num_classes` head.

    Args:
        name: 'scratch_cnn' or any timm architecture (optionally with a '.tag').
        num_classes: size of the classification head.
        img_size: input side; passed to models with a fixed input size (ViTs) so 32 px data works.
        pretrained: load the timm hub weights (needs network).
        weights: path to a local state_dict or checkpoint of the same architecture; a head of
            another size is replaced. A new head on pretrained features starts at zero.
        cifar_stem: for timm ResNets, the 3x3 stride-1 stem without max-pool of CIFAR ResNets
            (He et al. 2016, sec. 4.2), so 32 px images keep their resolution into the stages.
        freeze_backbone: train the head only (a linear probe): every other parameter stops taking
            gradients, and the LightningModule keeps the frozen batch norms in eval mode.
        **kwargs: passed to the model constructor (drop_rate, drop_path_rate, width, ...); None
            values are dropped.

    Raises:
        UserError: unknown name, both weights sources given, hub unreachable, or weights that do
            not fit the architecture.
    """
    check_model_name(name)
    if pretrained and weights:
        raise UserError("set model.pretrained=true or model.weights=PATH, not both")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if name in SCRATCH_MODELS:
        if pretrained:
            raise UserError(
                f"model.pretrained=true: {name} has no pretrained weights; use model.weights=PATH"
            )
        try:
            model = SCRATCH_MODELS[name](num_classes=num_classes, **kwargs)
        except TypeError as exc:
            raise _unsupported_option(name, exc) from exc
    else:
        if img_size and _takes_img_size(name):
            kwargs["img_size"] = img_size
        model = _create_timm_model(name, num_classes, pretrained, kwargs)
    if cifar_stem:
        use_cifar_stem(model, name)
    if weights:
        new_head = load_local_weights(model, weights)
    elif pretrained:
        cfg = _pretrained_cfg(name)
        new_head = cfg is None or cfg.num_classes != num_classes
    else:
        new_head = False
    if new_head:
        zero_init_head(model)
    if freeze_backbone:
        freeze_all_but_head(model)
    return model


def use_cifar_stem(model: nn.Module, name: str) -> None:
    """Replaces a timm ResNet's 7x7 stride-2 conv and max-pool (4x downsampling, meant for 224 px)
    with one 3x3 stride-1 conv: at 32 px the last stage then sees 4x4 maps instead of 1x1."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise UserError(f"model.cifar_stem=true works for timm ResNets (conv1 + maxpool stem), not {name}")
    model.conv1 = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False
    )
    model.maxpool = nn.Identity()


def _unsupported_option(name: str, exc: TypeError) -> UserError:
    """'model.drop_path_rate is not an option of vgg11' for a constructor's unexpected keyword."""
    match = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if match is None:
        return UserError(f"model {name}: {exc}")
    key = match.group(1)
    what = {"drop_path_rate": "stochastic depth", "drop_rate": "dropout"}.get(key, "this option")
    return UserError(f"model.{key} is not an option of {name} (it has no {what}): leave it null")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers on its HTTPS port within `timeout` seconds."""
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def use_hub_cache_when_offline(name: str) -> None:
    """When the Hugging Face hub does not answer, look for `name`'s weights in the local cache only:
    otherwise the hub client retries for ~45 s before it even looks there."""
    if not hf_constants.HF_HUB_OFFLINE and not hub_reachable():
        log.info("the Hugging Face hub is unreachable: looking for %s weights in the local cache only", name)
        hf_constants.HF_HUB_OFFLINE = True


def _create_timm_model(name: str, num_classes: int, pretrained: bool, kwargs: dict) -> nn.Module:
    if pretrained:
        use_hub_cache_when_offline(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise _unsupported_option(name, exc) from exc
    except Exception as exc:
        if not pretrained:
            raise
        # The hub client raises connection, HTTP and file errors of many types.
        raise UserError(
            f"model.pretrained=true could not fetch {name} weights from the Hugging Face hub"
            f" ({type(exc).__name__}); offline? use model.weights=PATH with a local file"
        ) from exc
