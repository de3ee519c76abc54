"""Classifiers fitted on frozen features, and their metrics and reports.

The linear probe is multinomial logistic regression on the standardised features, fitted full-batch
by L-BFGS for each L2 strength of `linear.weight_decay` and kept for the best val top-1 (the
protocol of CLIP's and Kornblith et al.'s linear evaluations: a regularisation sweep on held-out
data); the k-NN is DINO's weighted vote (Caron et al. 2021, sec. 4.1 and appendix): cosine
similarity to the training features, the k nearest vote with weight exp(similarity / T). Both run in
torch on the cached features: seconds for 50k images on a CPU."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from classifier.evaluation.calibration import mean_nll
from classifier.evaluation.metrics import ECE_BINS, create_eval_metrics
from classifier.evaluation.reports import EvaluationReport, format_metrics, reliability_bins, write_reports
from classifier.files import write_atomically
from classifier.foundation.features import SplitFeatures

log = logging.getLogger(__name__)


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
    as training reports them (evaluation/metrics.py), the confusion matrix and the reliability bins."""
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


PROBE_FILE = "probe.json"
