"""Frozen features of a backbone, computed once: each split's pooled pre-logits features (what the
classification head sees) through the data module's eval transform, kept on disk under
$XDG_CACHE_HOME/classifier/features and reused while the backbone (architecture, weights), the
transform and the split's images are the same, so a linear probe, a k-NN or a sweep over their
settings does not run the backbone again."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from classifier.data.base import ClassificationDataModule
from classifier.data.decoded import digest_files, file_samples
from classifier.data.memory import TensorImageDataset
from classifier.errors import UserError
from classifier.files import cache_home, expand_path, file_identity
from classifier.run.checkpoints import save_atomically

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 1


@dataclass
class SplitFeatures:
    """One split's features [N, D] (float32, on the CPU) and labels [N]; `seconds` is what the backbone
    pass over it took when it ran (also for features read from the cache: what the cache saved)."""

    features: torch.Tensor
    labels: torch.Tensor
    seconds: float
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.labels)


class PooledFeatures(nn.Module):
    """`net` without its head: the pooled features the head takes (timm's
    `forward_head(pre_logits=True)`, which this project's own models have too)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise UserError(
                f"{type(net).__name__} has no forward_features/forward_head: it gives no features"
            )
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(images), pre_logits=True)


def _digest_tensor(digest: Any, tensor: torch.Tensor) -> None:
    digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(np.ascontiguousarray(tensor.cpu().numpy()).tobytes())


def dataset_fingerprint(dataset: Dataset) -> str | None:
    """What names a split's images: each file with its label, size and modification time, or the
    pixels of data held in memory (digits, CIFAR's pickled batches); None for data it cannot name
    (a stream), whose features are then computed every time."""
    digest = hashlib.sha256()
    samples = file_samples(dataset)
    if samples is not None:
        digest_files(digest, samples)
        return digest.hexdigest()
    if isinstance(dataset, Subset):
        parent = dataset_fingerprint(dataset.dataset)
        if parent is None:
            return None
        digest.update(parent.encode())
        digest.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
        return digest.hexdigest()
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_fingerprint(part) for part in dataset.datasets]
        if any(part is None for part in parts):
            return None
        digest.update("\n".join(parts).encode())
        return digest.hexdigest()
    if isinstance(dataset, TensorImageDataset):
        _digest_tensor(digest, dataset.images)
        digest.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())
        return digest.hexdigest()
    return None


def weights_identity(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone as the cache keys it: the model config (architecture, options, hub tag) and, for a
    local weights file, its path, size and modification time; timm's version, which names the hub
    weights a bare architecture name resolves to."""
    identity = {
        key: value
        for key, value in model_cfg.items()
        if key not in ("num_classes", "freeze_backbone", "_target_")
    }
    if model_cfg.get("weights"):
        identity["weights"] = file_identity(expand_path(model_cfg["weights"]))
    identity["timm"] = timm.__version__
    return identity


def cache_key(backbone: Mapping[str, Any], transform: Callable, fingerprint: str) -> str:
    """Names a split's features: the backbone's identity, the eval transform (its repr: sizes,
    filter, crop, normalisation) and the split's images."""
    described = json.dumps([FEATURE_CACHE_VERSION, backbone, repr(transform), fingerprint], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def feature_cache_dir() -> Path:
    return cache_home() / "features"


@torch.no_grad()  # not inference_mode: the probe fits on these tensors with autograd
def compute_features(
    encoder: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder(images) [N, D] float32 on the CPU, labels [N]) over (images, labels) `batches`, in
    eval mode, without gradients; bf16 autocast on a GPU that has it."""
    encoder = encoder.to(device).eval()
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    features, labels = [], []
    for images, batch_labels in batches:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            features.append(encoder(images).float().cpu())
        labels.append(torch.as_tensor(batch_labels).cpu())
    return torch.cat(features), torch.cat(labels).long()


def _read_cached(path: Path, count: int) -> dict[str, Any] | None:
    """The cached entry at `path`, or None when it is missing or not a whole entry of `count` images
    (a damaged file is recomputed, not trusted)."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        log.warning("features: %s is unreadable; computing the features again", path)
        return None
    valid = (
        isinstance(entry, dict)
        and isinstance(entry.get("features"), torch.Tensor)
        and isinstance(entry.get("labels"), torch.Tensor)
        and entry["features"].ndim == 2
        and len(entry["features"]) == len(entry["labels"]) == count
    )
    if not valid:
        log.warning("features: %s does not hold %d images' features; computing them again", path, count)
        return None
    return entry


def split_features(
    encoder: nn.Module,
    backbone: Mapping[str, Any],
    datamodule: ClassificationDataModule,
    split: str,
    *,
    device: torch.device,
    use_cache: bool = True,
) -> SplitFeatures:
    """The features of the data module's `split` from the cache when an entry for this `backbone`
    (the encoder's identity, weights_identity), eval transform and images exists, else computed by
    `encoder` over the data module's eval loader (and, with `use_cache`, written there for later
    runs). The eval loader batches small images through the decoded cache (classifier/data/decoded.py):
    no per-image decoding or transforms when training already decoded them."""
    dataset = datamodule.dataset(split)
    fingerprint = dataset_fingerprint(dataset) if use_cache else None
    path = None
    if fingerprint is not None:
        key = cache_key(backbone, datamodule.eval_transform, fingerprint)
        path = feature_cache_dir() / f"{key}.pt"
        entry = _read_cached(path, len(dataset))
        if entry is not None:
            seconds = float(entry.get("seconds", 0.0))
            log.info(
                "features: %s (%d images) from the cache %s (the backbone pass took %.1f s)",
                split,
                len(dataset),
                path,
                seconds,
            )
            return SplitFeatures(entry["features"].float(), entry["labels"].long(), seconds, True)
    elif use_cache:
        log.info("features: %s is streamed data; its features are computed each time", split)
    start = time.perf_counter()
    features, labels = compute_features(encoder, datamodule.eval_loader(split), device)
    seconds = time.perf_counter() - start
    log.info(
        "features: %s, %d images x %d features in %.1f s (%.0f images/s)",
        split,
        len(labels),
        features.shape[1],
        seconds,
        len(labels) / max(seconds, 1e-9),
    )
    if path is not None:
        save_atomically({"features": features, "labels": labels, "seconds": seconds, "split": split}, path)
    return SplitFeatures(features, labels, seconds)
