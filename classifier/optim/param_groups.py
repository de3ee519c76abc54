"""The optimizer's parameter groups: head or backbone, weight decay or not, normalisation layers,
layer-wise learning-rate decay."""

from __future__ import annotations

from torch import nn
from torch.optim import Optimizer

from classifier.errors import UserError
from classifier.models.structure import head_parameter_ids, layer_ids

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def param_groups(
    net: nn.Module,
    backbone_lr_scale: float = 1.0,
    layer_decay: float | None = None,
    norm_lr_scale: float | None = None,
    filter_bias_and_bn: bool = True,
) -> list[dict]:
    """Groups by (head or backbone) x (decayed or not) x (norm layer or not) x layer. Biases, norm
    weights and the tokens a timm model lists in `no_weight_decay()` get no weight decay unless
    `filter_bias_and_bn` is false (timm's switch of that name). With `layer_decay`, a parameter of
    layer i of n (timm's `group_matcher`, the head last) learns at layer_decay ** (n - 1 - i) x lr
    (BEiT's layer-wise decay, as timm's `param_groups_layer_decay`). With `norm_lr_scale`, the
    parameters of normalisation layers learn at that multiple of lr and their weight decay is
    divided by it, so that their decay per step (lr x weight_decay) stays the other weights'
    (airbench's 64x BatchNorm bias rate). `lr_scale` and `wd_scale` are applied by `apply_lr_scales`.

    Frozen parameters are grouped too: the optimizer skips them while they get no gradient, and
    a callback that unfreezes them later finds them already scheduled.
    """
    head_ids = head_parameter_ids(net)
    skip_decay = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    if norm_lr_scale is not None and not norm_lr_scale > 0:
        raise UserError(f"optimizer.norm_lr_scale={norm_lr_scale} must be positive")
    norm_ids = {
        id(p) for m in net.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)
    }
    layers, top = {}, 0
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise UserError(f"optimizer.layer_decay={layer_decay} must be in (0, 1]")
        layers = layer_ids(net, coarse=False, purpose="optimizer.layer_decay")
        top = max(layers.values(), default=0)
    groups: dict[tuple[bool, bool, bool, int], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        decay = not filter_bias_and_bn or (param.ndim > 1 and name not in skip_decay)
        is_norm = norm_lr_scale is not None and id(param) in norm_ids
        key = (id(param) in head_ids, decay, is_norm, layers.get(name, top))
        groups.setdefault(key, []).append(param)
    result = []
    for (is_head, decay, is_norm, layer), params in groups.items():
        group = {
            "params": params,
            "lr_scale": (1.0 if is_head else backbone_lr_scale) * (layer_decay or 1.0) ** (top - layer),
        }
        if not decay:
            group["weight_decay"] = 0.0
        if is_norm:
            group["lr_scale"] *= norm_lr_scale
            group["wd_scale"] = 1.0 / norm_lr_scale
        result.append(group)
    return result


def apply_lr_scales(optimizer: Optimizer) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
        if "weight_decay" in group:
            group["weight_decay"] *= group.get("wd_scale", 1.0)
