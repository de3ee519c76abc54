"""Loading a local state_dict into a backbone, replacing a classification head of another size."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from timm.models import load_state_dict
from torch import nn

from classifier.errors import UserError, first_line_of, pickled_code_line
from classifier.files import existing_file, expand_path

log = logging.getLogger(__name__)


def head_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the classification head (timm's `get_classifier()`)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return set()
    for prefix, module in model.named_modules():
        if module is head:
            return {f"{prefix}.{key}" if prefix else key for key in head.state_dict()}
    return set()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file: a plain state_dict, a timm checkpoint (EMA weights when present),
    a safetensors file, or a checkpoint of this framework. Loaded with weights_only=True."""
    path = existing_file(expand_path(path), "model.weights")  # expanded first: the line names the file
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:
        line = pickled_code_line(
            exc,
            f"model.weights={path}",
            "re-save the weights as a state_dict (torch.save(model.state_dict(), PATH))",
        )
        raise UserError(
            line or f"model.weights={path} is not a readable state_dict: {first_line_of(exc)}"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.weights={path} does not hold a state_dict of tensors")
    return state


def strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of a backbone saved inside a larger module (this framework's and most Lightning
    modules' `net.`, others' `model.`, `backbone.`, ...) under the names `expected` has, when
    dropping one leading prefix matches more of them."""
    best, best_matches = state, len(state.keys() & expected)
    for prefix in {key.split(".", 1)[0] + "." for key in state if "." in key}:
        stripped = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        matches = len(stripped.keys() & expected)
        if matches > best_matches:
            best, best_matches = stripped, matches
    return best


def _adapt_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    # timm ships a per-architecture filter that converts original formats and resamples position
    # embeddings to the model's img_size (a ViT trained at 224 loaded at 32 px).
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # the filter expects a format this file is not in: use the keys as they are
        return state


def _sample(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")


def zero_init_head(model: nn.Module) -> None:
    """Zero the classification head that sits on pretrained features. Architecture inits are made
    for training from scratch (timm's EfficientNet head is U(-1/sqrt(num_classes), ..), so a
    2-class head starts with logits in the tens and wrecks the first fine-tuning steps); a zero
    head starts at uniform predictions, as BiT and DeiT fine-tuning do."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is not None:
        with torch.no_grad():
            for param in head.parameters():
                param.zero_()


def load_local_weights(model: nn.Module, path: str | Path) -> bool:
    """Load `path` into `model`. A head whose size differs (or that is absent) is left newly
    initialised, with a log line; any other difference is an error. Returns whether the head
    was left new (and needs `zero_init_head`).

    Raises:
        UserError: the file is missing or unreadable, or its tensors do not fit the architecture.
    """
    expected = model.state_dict()
    state = _adapt_to_model(strip_wrapper_prefix(read_state_dict(path), set(expected)), model)
    head = head_keys(model)
    mismatched = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    replaced_head = [k for k in mismatched if k in head]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched if k not in head
    ]
    missing = [
        k for k in expected if k not in state and k not in head and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    if wrong or missing or unexpected:
        problems = [
            f"{label}: {_sample(keys)}"
            for label, keys in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise UserError(
            f"model.weights={path} does not fit {type(model).__name__}"
            f" ({'; '.join(problems)}): is it a state_dict of the same architecture?"
        )
    old_outputs = {tuple(state[key].shape)[0] for key in replaced_head}
    for key in replaced_head:
        del state[key]
    model.load_state_dict(state, strict=False)
    if replaced_head:
        log.info(
            "model.weights: the head in %s has %s outputs; replaced by a new %d-class head (%s)",
            path,
            "/".join(str(n) for n in sorted(old_outputs)),
            getattr(model, "num_classes", -1),
            ", ".join(sorted(replaced_head)),
        )
    elif head and not head & state.keys():
        log.info("model.weights: %s has no classification head; the head is newly initialised", path)
    else:
        log.info("model.weights: loaded %s", path)
        return False
    return True
