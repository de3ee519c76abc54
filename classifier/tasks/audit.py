"""audit.py: label issues, duplicates, train/test leakage and a profile of any data module, before
training on it (classifier/audit/ holds the methods; this module puts them together and writes the
run directory: issues.csv, audit.json, audit.md and audit.html)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from classifier.audit.confident import RANKINGS, find_label_issues
from classifier.audit.duplicates import (
    DuplicatePair,
    ImageRef,
    feature_duplicates,
    find_duplicates,
    fingerprint,
    fingerprint_file,
)
from classifier.audit.issues_file import IssueRow, write_issues
from classifier.audit.out_of_sample import OutOfSample, cross_validated_probabilities
from classifier.audit.profile import profile_dataset, profile_images
from classifier.audit.report import AuditResult, LabelFinding, write_audit_reports
from classifier.config_values import as_list, to_flag, to_number
from classifier.data import ClassificationDataModule
from classifier.data.decoded import file_samples
from classifier.data.splits import targets_of
from classifier.engine.build import build_datamodule, build_net, pretrained_input_overrides
from classifier.engine.devices import inference_device
from classifier.errors import UserError
from classifier.foundation.features import PooledFeatures, split_features, weights_identity
from classifier.tasks.probe import backbone_description

log = logging.getLogger(__name__)

METHODS = ("auto", "probe", "pixels", "kfold")
# audit.yaml's own keys: the other overrides given to audit.py (data, model, seed...) go to kfold's
# train.py runs.
OWN_KEYS = ("method", "folds", "device", "features_cache", "probe", "labels", "duplicates", "report", "kfold")
# The pixels method's features: each image at the data's input size, average-pooled to this side.
PIXEL_SIDE = 16


@dataclass
class AuditedData:
    """Every image of the audited splits, in split order: its reference (path, or `split/index` for
    data held in memory), its label and where to read it."""

    refs: list[ImageRef]
    labels: np.ndarray
    from_files: bool


class PixelFeatures(nn.Module):
    """The eval-transformed image itself, average-pooled to PIXEL_SIDE and flattened: the features of
    the pixels method, for data without a pretrained backbone (a linear model on pixels)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        side = min(PIXEL_SIDE, images.shape[-1], images.shape[-2])
        return nn.functional.adaptive_avg_pool2d(images.float(), side).flatten(1)


def audited_data(datamodule: ClassificationDataModule, splits: Sequence[str]) -> AuditedData:
    refs, labels, from_files = [], [], True
    for split in splits:
        dataset = datamodule.dataset(split)
        samples = file_samples(dataset)
        if samples is None:
            from_files = False
            samples = [(f"{split}/{index}", label) for index, label in enumerate(targets_of(dataset))]
        refs += [ImageRef(path, split) for path, _ in samples]
        labels += [label for _, label in samples]
    return AuditedData(refs, np.asarray(labels, dtype=np.int64), from_files)


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = torch.as_tensor(image).cpu().numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    return Image.fromarray(array.squeeze()) if array.shape[-1] == 1 else Image.fromarray(array)


def in_memory_image(datamodule: ClassificationDataModule, ref: ImageRef) -> Image.Image:
    """The image `split/index` of a data module that does not read files."""
    split, index = ref.path.rsplit("/", 1)
    return _as_pil(datamodule.dataset(split)[int(index)][0])


def image_loader(datamodule: ClassificationDataModule, data: AuditedData):
    """path -> PIL image, for the fingerprints and the report's thumbnails."""
    by_path = {ref.path: ref for ref in data.refs}
    if data.from_files:
        from classifier.data.images import load_rgb

        return load_rgb
    return lambda path: in_memory_image(datamodule, by_path[path])


# -- settings -------------------------------------------------------------------------------------------
def _settings(cfg: DictConfig) -> dict[str, Any]:
    method = cfg.get("method", "auto")
    if method not in METHODS:
        raise UserError(f"method={method!r} is not one of {', '.join(METHODS)}")
    has_backbone = cfg.get("model") is not None
    if method == "auto":
        method = "probe" if has_backbone else "pixels"
    if method == "probe" and not has_backbone:
        raise UserError(
            "method=probe needs a backbone: model=NAME with model.weights=FILE or model.pretrained=true"
        )
    rank_by = cfg.labels.rank_by
    if rank_by not in RANKINGS:
        raise UserError(f"labels.rank_by={rank_by!r} is not one of {', '.join(RANKINGS)}")
    folds = to_number(cfg.folds, "folds", int)
    if folds < 2:
        raise UserError(f"folds={folds} must be 2 or more")
    decays = [to_number(d, "probe.weight_decay") for d in as_list(cfg.probe.weight_decay)]
    if not decays or any(d < 0 for d in decays):
        raise UserError(f"probe.weight_decay={decays} needs one or more values, none negative")
    min_cosine = cfg.duplicates.min_cosine
    if min_cosine is not None:
        min_cosine = to_number(min_cosine, "duplicates.min_cosine")
        if not 0 < min_cosine <= 1:
            raise UserError(
                f"duplicates.min_cosine={min_cosine} must lie in (0, 1] (or null: no feature search)"
            )
    distance = to_number(cfg.duplicates.max_hamming_distance, "duplicates.max_hamming_distance", int)
    if not 0 <= distance < 32:
        raise UserError(f"duplicates.max_hamming_distance={distance} must lie in [0, 32) bits of 64")
    label_splits = cfg.labels.splits
    label_splits = None if label_splits is None else [str(s) for s in as_list(label_splits)]
    return {
        "method": method,
        "folds": folds,
        "weight_decay": decays,
        "max_iter": to_number(cfg.probe.max_iter, "probe.max_iter", int),
        "rank_by": rank_by,
        "label_splits": label_splits,
        "max_hamming_distance": distance,
        "min_cosine": min_cosine,
        "thumbnails": to_number(cfg.report.thumbnails, "report.thumbnails", int),
        "kfold": [str(o) for o in as_list(cfg.get("kfold") or [])],
    }


# -- the steps ------------------------------------------------------------------------------------------
def audit_features(
    cfg: DictConfig, datamodule: ClassificationDataModule, splits: Sequence[str], method: str
) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """(features of every audited image, labels, what made them, backbone seconds)."""
    device = inference_device(str(cfg.get("device", "auto")))
    use_cache = to_flag(cfg.get("features_cache", True), "features_cache")
    if method == "probe":
        if not (cfg.model.get("pretrained") or cfg.model.get("weights")):
            log.warning("model %s has random weights (no model.pretrained or model.weights)", cfg.model.name)
        net = build_net(cfg.model, datamodule.num_classes, datamodule.input_spec.img_size)
        encoder: nn.Module = PooledFeatures(net)
        identity = weights_identity(OmegaConf.to_container(cfg.model, resolve=True))
        source = f"{backbone_description(cfg.model)} features"
    else:
        encoder = PixelFeatures()
        identity = {"pixels": PIXEL_SIDE}
        source = f"pixels ({PIXEL_SIDE}x{PIXEL_SIDE} average-pooled)"
    parts = [
        split_features(encoder, identity, datamodule, s, device=device, use_cache=use_cache) for s in splits
    ]
    features = torch.cat([p.features for p in parts])
    labels = torch.cat([p.labels for p in parts])
    return features, labels, source, sum(p.seconds for p in parts)


# -- k-fold training ------------------------------------------------------------------------------------
def _train_overrides() -> list[str]:
    """The overrides audit.py was given but its own keys and Hydra's (fewshot.py's rule)."""
    from classifier.tasks.fewshot import shared_overrides

    return [o for o in shared_overrides() if o.lstrip("+~").split("=", 1)[0].split(".")[0] not in OWN_KEYS]


@torch.no_grad()
def _probabilities(module: nn.Module, loader) -> np.ndarray:
    module.eval()
    out = [(module(images) / module.temperature).softmax(dim=1).double() for images, _ in loader]
    return torch.cat(out).numpy()


def _held_out_keys(dataset) -> list[str]:
    samples = file_samples(dataset)
    if samples is not None:
        return [path for path, _ in samples]
    return [fingerprint(_as_pil(dataset[j][0])).digest for j in range(len(dataset))]


def kfold_probabilities(
    cfg: DictConfig, data: AuditedData, digests: list[str], num_classes: int, folds: int, extra: list[str]
) -> OutOfSample:
    """Out-of-fold probabilities by training: train.py (the model and data given to audit.py, plus
    `extra`) on each fold's complement of train + val (data.folds=K data.fold=i, in
    <output_dir>/folds/<i>/), its best checkpoint predicting the held-out fold; test images get the
    mean of the K models. A fold's images are matched to the audit's by path, or for data held in
    memory by their pixels' digest."""
    from classifier.engine.from_checkpoint import load_model
    from classifier.tasks import load_task
    from classifier.tasks.fewshot import cell_config

    start = time.perf_counter()
    probs = np.full((len(data.refs), num_classes), np.nan)
    test = [i for i, ref in enumerate(data.refs) if ref.split == "test"]
    test_sum = np.zeros((len(test), num_classes))
    keys = [ref.path if data.from_files else digests[i] for i, ref in enumerate(data.refs)]
    val_top1 = []
    for fold in range(folds):
        overrides = [*_train_overrides(), f"data.folds={folds}", f"data.fold={fold}", "logger=none"]
        overrides += ["measure_cpu_speed=false", *extra]
        run_dir = Path(cfg.paths.output_dir) / "folds" / str(fold)
        log.info("audit: fold %d of %d: train.py %s", fold + 1, folds, " ".join(overrides))
        fold_cfg = cell_config("train", overrides, run_dir, caller="audit")
        val_top1.append(load_task("train")(fold_cfg).get("val/top1"))
        saved = load_model(str(run_dir / "checkpoints" / "best.ckpt"))
        datamodule = build_datamodule(
            fold_cfg.data, pretrained_input_overrides(fold_cfg.data, fold_cfg.model)
        )
        unplaced: dict[str, list[int]] = {}
        for index, ref in enumerate(data.refs):
            if ref.split != "test":
                unplaced.setdefault(keys[index], []).append(index)
        held = _held_out_keys(datamodule.dataset("val"))
        for key, row in zip(held, _probabilities(saved.module, datamodule.eval_loader("val")), strict=True):
            probs[unplaced[key].pop(0)] = row
        if test:
            test_sum += _probabilities(saved.module, datamodule.eval_loader("test"))
    if test:
        probs[test] = test_sum / folds
    if np.isnan(probs).any():  # every train/val image is in exactly one fold: ours to fix if not
        raise RuntimeError("k-fold training left images without out-of-fold probabilities")
    labels = torch.as_tensor(data.labels)
    log_probs = torch.as_tensor(probs).clamp_min(1e-12).log()
    top1 = float((log_probs.argmax(dim=1) == labels).double().mean())
    nll = float(torch.nn.functional.nll_loss(log_probs, labels))
    sweep = [{"fold": i, "val_top1": v} for i, v in enumerate(val_top1)]
    seconds = time.perf_counter() - start
    return OutOfSample(probs, folds, None, top1, nll, sweep, seconds, method="k-fold training")


def fingerprints_of(data: AuditedData, load) -> list:
    if data.from_files:
        return [fingerprint_file(ref.path) for ref in data.refs]
    return [fingerprint(load(ref.path)) for ref in data.refs]


def _warn_if_class_clusters(feature_pairs: int, images: int, settings: dict[str, Any]) -> None:
    """A threshold that pairs many images picks out same-class look-alikes, not copies."""
    if feature_pairs > max(10, images // 20):
        log.warning(
            "duplicates.min_cosine=%s found %d pairs by features alone among %d images: this backbone's"
            " features are close within a class; look at the lowest-scoring pairs in audit.html and raise"
            " duplicates.min_cosine (or null: no feature search)",
            settings["min_cosine"],
            feature_pairs,
            images,
        )


def merged_pairs(first: list[DuplicatePair], more: list[DuplicatePair]) -> list[DuplicatePair]:
    """`first`, then the pairs of `more` whose two images are not already paired."""
    seen = {frozenset((p.path, p.other_path)) for p in first}
    return first + [p for p in more if frozenset((p.path, p.other_path)) not in seen]


def label_findings(
    data: AuditedData, out: OutOfSample, rank_by: str, label_splits: list[str] | None
) -> list[LabelFinding]:
    issues = find_label_issues(data.labels, out.probs, rank_by)
    findings = []
    for issue in issues:
        ref = data.refs[issue.index]
        if label_splits is not None and ref.split not in label_splits:
            continue
        row = out.probs[issue.index]
        findings.append(
            LabelFinding(
                ref.path,
                ref.split,
                issue.given_label,
                issue.suggested_label,
                issue.score,
                float(row[issue.given_label]),
                float(row[issue.suggested_label]),
            )
        )
    return findings


def issue_rows(
    findings: list[LabelFinding], pairs: list[DuplicatePair], class_names: list[str]
) -> list[IssueRow]:
    rows = [
        IssueRow(f.path, "label", f.score, class_names[f.given_label], class_names[f.suggested_label])
        for f in findings
    ]
    rows += [IssueRow(p.path, p.issue, p.score, other_path=p.other_path) for p in pairs]
    return rows


# -- the task -------------------------------------------------------------------------------------------
def audit(cfg: DictConfig) -> dict[str, float]:
    """Profile, duplicates (pixels, perceptual hash, features) and label issues (confident learning on
    cross-validated probabilities) of every split; the reports in cfg.paths.output_dir."""
    L.seed_everything(cfg.seed, workers=True)
    settings = _settings(cfg)
    start = time.perf_counter()
    overrides = pretrained_input_overrides(cfg.data, cfg.model) if cfg.get("model") is not None else {}
    datamodule = build_datamodule(cfg.data, overrides)
    splits = ["train", "val", "test"] if datamodule.has_test else ["train", "val"]
    data = audited_data(datamodule, splits)
    load = image_loader(datamodule, data)
    class_names = datamodule.class_names
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    samples = {
        s: [(r.path, int(y)) for r, y in zip(data.refs, data.labels, strict=True) if r.split == s]
        for s in splits
    }
    profile = (
        profile_dataset(samples, class_names)
        if data.from_files
        else profile_images(samples, class_names, load)
    )
    seconds["profile"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fingerprints = fingerprints_of(data, load)
    pairs = find_duplicates(data.refs, fingerprints, settings["max_hamming_distance"])
    seconds["hashes"] = time.perf_counter() - clock

    folds = min(settings["folds"], len(data.labels))
    if settings["method"] == "kfold":
        digests = [f.digest for f in fingerprints]
        out = kfold_probabilities(cfg, data, digests, datamodule.num_classes, folds, settings["kfold"])
        source = f"train.py on each fold's complement ({' '.join(settings['kfold']) or 'its defaults'})"
    else:
        features, labels, source, seconds["features"] = audit_features(
            cfg, datamodule, splits, settings["method"]
        )
        if not torch.equal(labels, torch.as_tensor(data.labels)):  # one listing read twice: ours to fix
            raise RuntimeError("the features' labels are not the listed images' labels")
        if settings["min_cosine"] is not None and settings["method"] == "probe":
            clock = time.perf_counter()
            found = feature_duplicates(data.refs, features.numpy(), settings["min_cosine"])
            merged = merged_pairs(pairs, found)
            _warn_if_class_clusters(len(merged) - len(pairs), len(data.refs), settings)
            pairs = merged
            seconds["feature_pairs"] = time.perf_counter() - clock
        out = cross_validated_probabilities(
            features,
            labels,
            datamodule.num_classes,
            folds,
            settings["weight_decay"],
            cfg.seed,
            settings["max_iter"],
        )
    seconds["probabilities"] = out.seconds
    clock = time.perf_counter()
    findings = label_findings(data, out, settings["rank_by"], settings["label_splits"])
    seconds["confident_learning"] = time.perf_counter() - clock

    output_dir = Path(cfg.paths.output_dir)
    write_issues(issue_rows(findings, pairs, class_names), output_dir / "issues.csv")
    seconds["total"] = time.perf_counter() - start
    result = AuditResult(
        class_names=class_names,
        split_sizes={s: len(v) for s, v in samples.items()},
        profile=profile,
        labels=findings,
        pairs=pairs,
        out_of_sample={"features": source, **out.details()},
        settings={k: v for k, v in settings.items() if k != "thumbnails"},
        seconds={k: round(v, 2) for k, v in seconds.items()},
        from_files=data.from_files,
    )
    metrics = write_audit_reports(output_dir, result, load, settings["thumbnails"])
    log.info(
        "audit: %d images; %d label issues, %d duplicate pairs, %d leaks; %.1f s",
        len(data.refs),
        metrics["label_issues"],
        metrics["duplicates"],
        metrics["leaks"],
        seconds["total"],
    )
    log.info(
        "audit written to %s (issues.csv: python train.py data.exclude=%s)",
        output_dir,
        output_dir / "issues.csv",
    )
    return metrics
