"""probe.py: a linear probe or a k-NN on the frozen features of any backbone (classifier/features.py),
with the same metrics.json, confusion matrix and reports as training.

The linear probe is multinomial logistic regression on the standardised features, fitted full-batch
by L-BFGS for each L2 strength of `linear.weight_decay` and kept for the best val top-1 (the
protocol of CLIP's and Kornblith et al.'s linear evaluations: a regularisation sweep on held-out
data); the k-NN is DINO's weighted vote (Caron et al. 2021, sec. 4.1 and appendix): cosine
similarity to the training features, the k nearest vote with weight exp(similarity / T). Both run in
torch on the cached features: seconds for 50k images on a CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from classifier.atomic import write_atomically
from classifier.builders import build_datamodule, build_net, pretrained_input_overrides
from classifier.calibration import mean_nll
from classifier.checkpoints import BEST, RUN_KEY, run_metadata, save_atomically
from classifier.data import ClassificationDataModule
from classifier.data.numeric import as_list, to_flag, to_number
from classifier.devices import inference_device
from classifier.errors import UserError
from classifier.features import PooledFeatures, SplitFeatures, split_features, weights_identity
from classifier.metrics import ECE_BINS, create_eval_metrics
from classifier.module import ClassifierModule
from classifier.reports import EvaluationReport, format_metrics, reliability_bins, write_reports

log = logging.getLogger(__name__)

METHODS = ("linear", "knn")
PROBE_FILE = "probe.json"


# -- the linear probe -----------------------------------------------------------------------------------
def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 500,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [C, D], b [C]) minimising mean cross-entropy(x W^T + b, y) + weight_decay / 2 * ||W||^2, the
    bias unpenalised: scikit-learn's LogisticRegression(C=1 / (weight_decay * N)) objective. Full-batch
    L-BFGS with a strong-Wolfe line search, from `init` (a warm start) or zeros. Each step reads the
    features twice, so it is memory-bound: float32 takes half the time of float64 and stops about 1e-4
    short of the optimum in probabilities (float64: 1e-6), which changes no probe's top-1."""
    x, y = x.to(dtype), y.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=dtype) if init is None else init[0].to(dtype).clone()
    bias = torch.zeros(num_classes, dtype=dtype) if init is None else init[1].to(dtype).clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), y) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


@dataclass
class LinearProbe:
    """A fitted probe: logits = ((features - mean) / std) W^T + b."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear((features - self.mean) / self.std, self.weight, self.bias)


def fit_linear_probe(
    train: SplitFeatures,
    val: SplitFeatures,
    num_classes: int,
    weight_decays: list[float],
    max_iter: int = 500,
) -> tuple[LinearProbe, list[dict[str, float]]]:
    """The probe with the best val top-1 (then the lowest val NLL) over `weight_decays`, fitted from the
    strongest to the weakest, each warm-started from the last; and each strength's val top-1 and NLL."""
    mean = train.features.mean(dim=0)
    std = train.features.std(dim=0).clamp_min(1e-6)
    x = (train.features - mean) / std
    val_x = (val.features - mean) / std
    best, best_score, results, init = None, None, [], None
    for weight_decay in sorted(weight_decays, reverse=True):
        start = time.perf_counter()
        init = fit_logistic_regression(x, train.labels, num_classes, weight_decay, init, max_iter)
        logits = F.linear(val_x, *init)
        top1 = float((logits.argmax(dim=1) == val.labels).float().mean())
        nll = float(F.cross_entropy(logits, val.labels))
        results.append({"weight_decay": weight_decay, "val_top1": top1, "val_nll": nll})
        log.info(
            "linear probe: weight_decay=%g: val top-1 %.4f, NLL %.4f (%.1f s)",
            weight_decay,
            top1,
            nll,
            time.perf_counter() - start,
        )
        if best_score is None or (top1, -nll) > best_score:
            best_score, best = (top1, -nll), LinearProbe(mean, std, *init, weight_decay)
    return best, results


# -- k-NN -----------------------------------------------------------------------------------------------
def knn_probabilities(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class probabilities [Q, C] of `query` by DINO's weighted k-NN: cosine similarity to every
    training feature, the k most similar vote for their class with weight exp(similarity / T), and the
    votes are normalised to sum to 1."""
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.long()
    k = min(k, len(train))
    out = []
    for start in range(0, len(query), chunk):
        queries = F.normalize(query[start : start + chunk].float(), dim=1)
        similarity, index = (queries @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(queries), num_classes).scatter_add_(1, train_labels[index], weights)
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out)


# -- metrics and reports ----------------------------------------------------------------------------------
def probability_metrics(
    probabilities: torch.Tensor, labels: torch.Tensor, num_classes: int, with_nll: bool = True
) -> dict[str, Any]:
    """top1, top5 (5+ classes), ece and, `with_nll`, nll and loss (= nll: a probe has no other loss)
    as training reports them (classifier/metrics.py), the confusion matrix and the reliability bins."""
    probabilities, labels = probabilities.float(), labels.long()
    metrics = create_eval_metrics(num_classes)
    metrics.update(probabilities, labels)
    values = metrics.compute()
    summary = {name: float(values[name]) for name in ("top1", "top5", "ece") if name in values}
    if with_nll:
        nll = mean_nll(probabilities, labels)
        summary |= {"nll": nll, "loss": nll}
    confidences, predicted = probabilities.max(dim=1)
    bins = reliability_bins(confidences.numpy(), (predicted == labels).numpy(), ECE_BINS)
    return {
        "summary": summary,
        "confusion": values["confusion"].cpu().numpy(),
        "bins": bins,
    }


def write_probe_reports(
    output_dir: Path,
    results: dict[str, dict[str, Any]],
    class_names: list[str],
    source: str,
    details: dict[str, Any],
) -> dict[str, float]:
    """metrics.json (every split), confusion_matrix.png, report.txt, report.json and
    reliability_diagram.png of the last split (test when there is one), and probe.json (`details`)."""
    metrics = {
        f"{split}/{name}": value for split, r in results.items() for name, value in r["summary"].items()
    }
    split = list(results)[-1]
    report = EvaluationReport(
        split=split,
        metrics=metrics,
        confusion=results[split]["confusion"],
        class_names=class_names,
        checkpoint=source,
        bins=results[split]["bins"],
    )
    write_reports(output_dir, report)
    write_atomically((json.dumps(details, indent=2) + "\n").encode(), output_dir / PROBE_FILE)
    log.info("%s", format_metrics(metrics))
    log.info("reports written to %s", output_dir)
    return metrics


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
        "module": {"_target_": "classifier.module.ClassifierModule"},
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
