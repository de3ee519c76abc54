"""zeroshot.py: CLIP zero-shot classification (Radford et al. 2021, sec. 3.1.4): every class name is put
into each prompt template ("a photo of a {}."), the text tower embeds the prompts, each class's text
embedding is the normalised mean of its prompts' (prompt ensembling), and an image takes the class
whose text embedding is most cosine-similar to its image embedding; the probabilities are the softmax
of the similarities times the model's logit scale. Same data modules, metrics and reports as training.

Built on open_clip rather than transformers: its BPE tokenizer ships inside the package (transformers'
CLIPTokenizer fetches its vocabulary files from the hub, so it cannot run offline), it loads the OpenAI
and LAION weights by tag, a local checkpoint file, or a `local-dir:` / `hf-hub:` folder, and its
image preprocessing settings come with each model.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from classifier.builders import build_datamodule
from classifier.data.numeric import as_list, to_flag
from classifier.devices import inference_device
from classifier.errors import UserError, first_line_of
from classifier.features import split_features
from classifier.models.factory import use_hub_cache_when_offline
from classifier.paths import expand_path, file_identity
from classifier.probing import probability_metrics, write_probe_reports

log = logging.getLogger(__name__)

SCHEMAS = ("local-dir:", "hf-hub:")


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise UserError(
            "zeroshot.py needs open_clip: pip install open_clip_torch (or pip install -e '.[clip]')"
        ) from None
    return open_clip


def clip_source(model_cfg: DictConfig) -> tuple[str, str | None]:
    """(open_clip model name, weights: a tag, a file path or None) of a model config with an
    `open_clip` section: model.weights=PATH, else the tag with model.pretrained=true, else none."""
    section = model_cfg.get("open_clip")
    if not section or not section.get("name"):
        raise UserError(
            f"model {model_cfg.get('name')} has no text tower: zeroshot.py needs a CLIP model config"
            " (model=clip_b16, model=clip_b32) or model.open_clip.name=NAME (open_clip.list_models())"
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
    open_clip = _open_clip()
    if not name.startswith(SCHEMAS) and name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"model.open_clip.name={name!r} is not an open_clip model{hint}")
    local = weights is None or Path(weights).is_file()
    if not local:
        tags = [tag for arch, tag in open_clip.list_pretrained() if arch == name]
        if weights not in tags:
            raise UserError(
                f"model.open_clip.pretrained={weights!r}: open_clip has no such weights for {name}"
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
                " checkpoint file) or model.open_clip.name=local-dir:FOLDER (a downloaded hub repository)"
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


def _templates(cfg: DictConfig) -> list[str]:
    templates = as_list(cfg.get("templates") or [])
    if not templates:
        raise UserError("templates is empty: give one or more prompts with {} for the class name")
    for i, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise UserError(f"templates[{i}]={template!r} needs exactly one {{}} where the class name goes")
    return templates


def _prompt_names(cfg: DictConfig, class_names: list[str]) -> list[str]:
    """The names put into the prompts: cfg.class_names (one per class, e.g. words for WordNet IDs)
    or the data's own."""
    given = cfg.get("class_names")
    if given is None:
        return class_names
    given = [str(name) for name in given]
    if len(given) != len(class_names):
        raise UserError(
            f"class_names has {len(given)} names; the data has {len(class_names)} classes"
            f" ({', '.join(class_names[:10])})"
        )
    return given


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


def zeroshot(cfg: DictConfig) -> dict[str, float]:
    """Zero-shot val and test metrics and reports of cfg.model's CLIP on cfg.data, in cfg.paths.output_dir."""
    L.seed_everything(cfg.seed, workers=True)
    templates = _templates(cfg)
    name, weights = clip_source(cfg.model)
    clip, tokenizer = create_clip(name, weights)
    datamodule = build_datamodule(cfg.data, clip_input(clip))
    names = _prompt_names(cfg, datamodule.class_names)
    device = inference_device(str(cfg.get("device", "auto")))
    start = time.perf_counter()
    text = class_text_embeddings(clip, tokenizer, names, templates, device)
    log.info(
        "zero-shot: %d classes x %d prompts embedded in %.1f s (e.g. %r)",
        len(names),
        len(templates),
        time.perf_counter() - start,
        prompts(names[0], templates)[0],
    )
    scale = float(clip.logit_scale.detach().exp()) if hasattr(clip, "logit_scale") else 100.0
    splits = ["val", "test"] if datamodule.has_test else ["val"]
    backbone = {
        "open_clip": name,
        "weights": _weights_identity(name, weights),
        "version": _open_clip().__version__,
        "tower": "image",
    }
    use_cache = to_flag(cfg.get("features_cache", True), "features_cache")
    results = {}
    for split in splits:
        features = split_features(
            ImageTower(clip), backbone, datamodule, split, device=device, use_cache=use_cache
        )
        probabilities = zero_shot_logits(features.features, text, scale).softmax(dim=1)
        results[split] = probability_metrics(probabilities, features.labels, datamodule.num_classes)
    details = {
        "method": "zeroshot",
        "open_clip": name,
        "weights": weights,
        "templates": templates,
        "prompt_class_names": names,
        "logit_scale": scale,
    }
    source = f"CLIP zero-shot ({len(templates)} prompt templates) with {name} ({weights or 'random weights'})"
    return write_probe_reports(Path(cfg.paths.output_dir), results, datamodule.class_names, source, details)


def _weights_identity(name: str, weights: str | None) -> Any:
    """What names the weights for the feature cache: a tag as it is; a file, or each file of a
    local-dir: folder, with its size and modification time."""
    files = [Path(weights)] if weights and Path(weights).is_file() else []
    if name.startswith("local-dir:"):
        files = sorted(p for p in Path(name.removeprefix("local-dir:")).iterdir() if p.is_file())
    if not files:
        return weights
    return [file_identity(p) for p in files]
