"""zeroshot.py: CLIP zero-shot classification (foundation/clip.py) on any data module, with the same
metrics and reports as training."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from classifier.config_values import as_list, to_flag
from classifier.engine.build import build_datamodule
from classifier.engine.devices import inference_device
from classifier.errors import UserError
from classifier.foundation.clip import (
    ImageTower,
    class_text_embeddings,
    clip_input,
    clip_source,
    clip_weights_identity,
    create_clip,
    open_clip_module,
    prompts,
    zero_shot_logits,
)
from classifier.foundation.features import split_features
from classifier.tasks.probe import probability_metrics, write_probe_reports

log = logging.getLogger(__name__)


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


def zeroshot(cfg: DictConfig) -> dict[str, float]:
    """Zero-shot val and test metrics and reports of cfg.model's CLIP on cfg.data, in cfg.paths.output_dir."""
    L.seed_everything(cfg.seed, workers=True)
    templates = _templates(cfg)
    name, weights = clip_source(cfg.get("clip"), cfg.model)
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
        "weights": clip_weights_identity(name, weights),
        "version": open_clip_module().__version__,
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
