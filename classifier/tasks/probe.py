"""probe.py: a linear probe or a k-NN (foundation/probes.py) on the frozen features of any backbone
(foundation/features.py), with the same metrics.json, confusion matrix and reports as training, and
for the linear probe a train.py checkpoint with the probe folded into the backbone's head."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from classifier.config_values import as_list, to_flag, to_number
from classifier.data import ClassificationDataModule
from classifier.engine.build import build_datamodule, build_net, pretrained_input_overrides
from classifier.engine.devices import inference_device
from classifier.engine.module import ClassifierModule
from classifier.errors import UserError
from classifier.foundation.features import PooledFeatures, SplitFeatures, split_features, weights_identity
from classifier.foundation.probes import (
    LinearProbe,
    fit_linear_probe,
    knn_probabilities,
    probability_metrics,
    write_probe_reports,
)
from classifier.run.checkpoints import BEST, RUN_KEY, run_metadata, save_atomically

log = logging.getLogger(__name__)


METHODS = ("linear", "knn")


# -- the probe as a checkpoint --------------------------------------------------------------------------
def probe_checkpoint(
    cfg: DictConfig, net: torch.nn.Module, fitted: LinearProbe, datamodule: ClassificationDataModule
) -> dict[str, Any]:
    """A checkpoint as train.py writes one (eval.py, predict.py and export.py take it): the backbone
    with the probe as its head, the standardisation folded in (W / std, b - (W / std) mean)."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear) or head.weight.shape != fitted.weight.shape:
        raise UserError(f"{cfg.model.name}: its head is not one linear layer on the features; no checkpoint")
    weight = fitted.weight / fitted.std
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(fitted.bias - weight @ fitted.mean)
    module = ClassifierModule(net=net, class_names=datamodule.class_names)
    config = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "module": {"_target_": "classifier.engine.module.ClassifierModule"},
        "probe": {"method": "linear", "weight_decay": fitted.weight_decay},
    }
    metadata = run_metadata(config, datamodule.class_names, datamodule.input_spec.to_dict())
    return {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0, RUN_KEY: metadata}


def _save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    save_atomically(checkpoint, path)
    log.info("the backbone with the probe as its head: %s (eval.py, predict.py, export.py take it)", path)


# -- the task -------------------------------------------------------------------------------------------
def _settings(cfg: DictConfig) -> dict[str, Any]:
    method = cfg.get("method")
    if method not in METHODS:
        raise UserError(f"method={method!r} is not one of {', '.join(METHODS)}")
    if method == "knn":
        k = to_number(cfg.knn.k, "knn.k", int)
        temperature = to_number(cfg.knn.temperature, "knn.temperature")
        if k < 1 or temperature <= 0:
            raise UserError(f"knn.k={k} must be 1 or more and knn.temperature={temperature} above 0")
        return {"method": method, "k": k, "temperature": temperature}
    decays = cfg.linear.weight_decay
    decays = [to_number(d, "linear.weight_decay") for d in as_list(decays)]
    if not decays or any(d < 0 for d in decays):
        raise UserError(f"linear.weight_decay={decays} needs one or more values, none negative")
    return {
        "method": method,
        "weight_decay": decays,
        "max_iter": to_number(cfg.linear.max_iter, "linear.max_iter", int),
    }


def backbone_description(model_cfg: DictConfig) -> str:
    """'vit_small_patch14_dinov2.lvd142m (hub weights)', '... (weights: PATH)' or '... (random weights)'."""
    if model_cfg.get("weights"):
        return f"{model_cfg.name} (weights: {model_cfg.weights})"
    return f"{model_cfg.name} ({'hub weights' if model_cfg.get('pretrained') else 'random weights'})"


def probe_features(
    cfg: DictConfig, datamodule: ClassificationDataModule, splits: list[str], encoder: PooledFeatures
) -> dict[str, SplitFeatures]:
    """Each split's frozen features of cfg.model's backbone through the data's eval transform, cached."""
    if not (cfg.model.get("pretrained") or cfg.model.get("weights")):
        log.warning("model %s has random weights (no model.pretrained or model.weights)", cfg.model.name)
    device = inference_device(str(cfg.get("device", "auto")))
    backbone = weights_identity(OmegaConf.to_container(cfg.model, resolve=True))
    use_cache = to_flag(cfg.get("features_cache", True), "features_cache")
    return {
        split: split_features(encoder, backbone, datamodule, split, device=device, use_cache=use_cache)
        for split in splits
    }


def probe(cfg: DictConfig) -> dict[str, float]:
    """Features of every split (cached), the probe fitted on train (its setting chosen on val), and the
    val and test metrics and reports, in cfg.paths.output_dir."""
    L.seed_everything(cfg.seed, workers=True)
    settings = _settings(cfg)
    datamodule = build_datamodule(cfg.data, pretrained_input_overrides(cfg.data, cfg.model))
    splits = ["train", "val", "test"] if datamodule.has_test else ["train", "val"]
    encoder = PooledFeatures(build_net(cfg.model, datamodule.num_classes, datamodule.input_spec.img_size))
    features = probe_features(cfg, datamodule, splits, encoder)
    saved = sum(f.seconds for f in features.values() if f.from_cache)
    if saved:
        log.info("features: the cache saved %.1f s of backbone passes", saved)
    start = time.perf_counter()
    num_classes = datamodule.num_classes
    details: dict[str, Any] = dict(settings)
    checkpoint = None
    if settings["method"] == "linear":
        fitted, sweep = fit_linear_probe(
            features["train"], features["val"], num_classes, settings["weight_decay"], settings["max_iter"]
        )
        details |= {"chosen_weight_decay": fitted.weight_decay, "sweep": sweep}
        probabilities = {s: fitted.logits(features[s].features).softmax(dim=1) for s in splits[1:]}
        checkpoint = probe_checkpoint(cfg, encoder.net, fitted, datamodule)
        what = f"linear probe (weight_decay={fitted.weight_decay:g}, chosen on val)"
    else:
        train = features["train"]
        probabilities = {
            s: knn_probabilities(
                train.features,
                train.labels,
                features[s].features,
                num_classes,
                settings["k"],
                settings["temperature"],
            )
            for s in splits[1:]
        }
        what = f"{settings['k']}-NN (cosine, T={settings['temperature']:g})"
    probe_seconds = time.perf_counter() - start
    log.info("%s on %d training features: %.2f s", what, len(features["train"]), probe_seconds)
    # k-NN votes give classes no neighbour voted for a probability of 0: their NLL would measure the
    # clamp, not the model, so k-NN reports top-1, top-5 and ECE (of the vote shares) only.
    with_nll = settings["method"] == "linear"
    results = {
        s: probability_metrics(probabilities[s], features[s].labels, num_classes, with_nll)
        for s in splits[1:]
    }
    details |= {
        "backbone": backbone_description(cfg.model),
        "feature_dim": int(features["train"].features.shape[1]),
        "images": {s: len(features[s]) for s in splits},
        "feature_seconds": {s: round(features[s].seconds, 2) for s in splits},
        "features_from_cache": {s: features[s].from_cache for s in splits},
        "probe_seconds": round(probe_seconds, 3),
    }
    source = f"{what} on {backbone_description(cfg.model)} features"
    output_dir = Path(cfg.paths.output_dir)
    metrics = write_probe_reports(output_dir, results, datamodule.class_names, source, details)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, output_dir / BEST)
    return metrics
