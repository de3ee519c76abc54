"""CLIP for zero-shot classification (Radford et al. 2021, sec. 3.1.4): every class name is put into
each prompt template ("a photo of a {}."), the text tower embeds the prompts, each class's text
embedding is the normalised mean of its prompts' (prompt ensembling), and an image takes the class
whose text embedding is most cosine-similar to its image embedding; the probabilities are the softmax
of the similarities times the model's logit scale.

Built on open_clip rather than transformers: its BPE tokenizer ships inside the package (transformers'
CLIPTokenizer fetches its vocabulary files from the hub, so it cannot run offline), it loads the OpenAI
and LAION weights by tag, a local checkpoint file, or a `local-dir:` / `hf-hub:` folder, and its
image preprocessing settings come with each model."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from classifier.errors import UserError, first_line_of
from classifier.extras import import_for
from classifier.files import expand_path, file_identity
from classifier.models.factory import use_hub_cache_when_offline

log = logging.getLogger(__name__)


SCHEMAS = ("local-dir:", "hf-hub:")


def open_clip_module():
    return import_for("CLIP (zeroshot.py, fewshot.py's zero-shot row)", "clip", "open_clip")


def clip_source(clip_cfg: DictConfig | None, model_cfg: DictConfig) -> tuple[str, str | None]:
    """(open_clip model name, weights: a tag, a file path or None) of the `clip` section a CLIP model
    config adds: model.weights=PATH, else the tag with model.pretrained=true, else none."""
    section = clip_cfg
    if not section or not section.get("name"):
        raise UserError(
            f"model {model_cfg.get('name')} has no text tower: zeroshot.py needs a CLIP model config"
            " (model=clip_b16, model=clip_b32) or +clip.name=NAME (open_clip.list_models())"
        )
    name = str(section.name)
    if name.startswith(SCHEMAS):  # the folder or hub repository holds the weights
        return name, None
    if model_cfg.get("weights"):
        path = expand_path(model_cfg.weights)
        if not path.is_file():
            raise UserError(f"model.weights={model_cfg.weights} does not exist (looked for {path.resolve()})")
        return name, str(path)
    if model_cfg.get("pretrained"):
        return name, str(section.get("pretrained") or "openai")
    return name, None


def create_clip(name: str, weights: str | None) -> tuple[nn.Module, Any]:
    """The open_clip model (eval mode) and its tokenizer; one-line errors for an unknown name, a tag
    open_clip has no weights for, a hub it cannot reach or a file that does not fit."""
    open_clip = open_clip_module()
    if not name.startswith(SCHEMAS) and name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"clip.name={name!r} is not an open_clip model{hint}")
    local = weights is None or Path(weights).is_file()
    if not local:
        tags = [tag for arch, tag in open_clip.list_pretrained() if arch == name]
        if weights not in tags:
            raise UserError(
                f"clip.pretrained={weights!r}: open_clip has no such weights for {name}"
                f" (tags: {', '.join(tags) or 'none'})"
            )
    if not local or name.startswith("hf-hub:"):
        use_hub_cache_when_offline(name)
    if weights is None and not name.startswith(SCHEMAS):
        log.warning("CLIP %s has random weights (no model.pretrained or model.weights)", name)
    try:
        # open_clip logs its own ERROR lines (root logger) before it raises: the one line is ours
        logging.disable(logging.ERROR)
        model = open_clip.create_model(name, pretrained=weights)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        reason = first_line_of(exc)
        if weights and Path(weights).is_file():
            message = (
                f"model.weights={weights} does not fit open_clip's {name} ({reason[:200]}): is it an"
                " open_clip checkpoint of that architecture?"
            )
        elif local:
            message = f"open_clip could not build {name}: {reason[:300]}"
        else:
            message = (
                f"model.pretrained=true could not fetch open_clip's {name} weights {weights!r} from the"
                f" Hugging Face hub ({type(exc).__name__}); offline? use model.weights=PATH (an open_clip"
                " checkpoint file) or clip.name=local-dir:FOLDER (a downloaded hub repository)"
            )
        raise UserError(message) from exc
    finally:
        logging.disable(logging.NOTSET)
    return model.eval(), tokenizer


class ImageTower(nn.Module):
    """A CLIP model's image encoder as a feature extractor (un-normalised embeddings)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)


def prompts(class_name: str, templates: Sequence[str]) -> list[str]:
    """`class_name` in each template; folder-style names read as words ('sea_turtle' -> 'sea turtle')."""
    words = class_name.replace("_", " ").strip()
    return [template.format(words) for template in templates]


@torch.inference_mode()
def class_text_embeddings(
    clip: nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
) -> torch.Tensor:
    """[C, D]: per class, the mean of its prompts' normalised text embeddings, normalised again."""
    clip = clip.to(device)
    embeddings = []
    for name in class_names:
        tokens = tokenizer(prompts(name, templates)).to(device)
        text = F.normalize(clip.encode_text(tokens).float(), dim=-1)
        embeddings.append(F.normalize(text.mean(dim=0), dim=-1))
    return torch.stack(embeddings).cpu()


def zero_shot_logits(
    image_features: torch.Tensor, text_embeddings: torch.Tensor, scale: float
) -> torch.Tensor:
    """scale x the cosine similarity of each image to each class's text embedding."""
    return scale * F.normalize(image_features.float(), dim=-1) @ text_embeddings.T


def clip_input(clip: nn.Module) -> dict[str, Any]:
    """The data keys of the model's own preprocessing: side, mean, std, filter; a centre crop of the
    short side (open_clip's resize_mode 'shortest')."""
    preprocess = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = preprocess.get("size", getattr(clip.visual, "image_size", 224))
    side = size if isinstance(size, int) else max(size)
    spec = {"img_size": int(side), "crop_pct": 1.0, "crop_mode": "center"}
    for key in ("mean", "std"):
        if preprocess.get(key) is not None:
            spec[key] = list(preprocess[key])
    spec["interpolation"] = preprocess.get("interpolation", "bicubic")
    if preprocess.get("resize_mode", "shortest") == "squash":
        spec["crop_mode"] = "squash"
    return spec


def clip_weights_identity(name: str, weights: str | None) -> Any:
    """What names the weights for the feature cache: a tag as it is; a file, or each file of a
    local-dir: folder, with its size and modification time."""
    files = [Path(weights)] if weights and Path(weights).is_file() else []
    if name.startswith("local-dir:"):
        files = sorted(p for p in Path(name.removeprefix("local-dir:")).iterdir() if p.is_file())
    if not files:
        return weights
    return [file_identity(p) for p in files]
