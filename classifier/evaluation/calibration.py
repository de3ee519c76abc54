"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T
divides the logits, fitted on the validation split by minimising the negative log-likelihood. It
changes how confident the model is, never which class it predicts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from classifier.evaluation.metrics import ECE_BINS
from classifier.evaluation.reports import expected_calibration_error, reliability_bins

# The fitted temperature is clamped to this range: beyond it the validation split is too small or
# too degenerate (every image right with logits far apart) for the fit to mean anything.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) for `labels`, by L-BFGS on log T
    (so T stays positive), in float64."""
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def calibration_of(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """ECE (15 bins, as the run's metrics bin it) and mean NLL of class `probabilities`."""
    probabilities, labels = probabilities.detach().double().cpu(), labels.detach().long().cpu()
    confidences, predicted = probabilities.max(dim=1)
    bins = reliability_bins(confidences.numpy(), (predicted == labels).numpy(), ECE_BINS)
    return {"ece": expected_calibration_error(bins), "nll": mean_nll(probabilities, labels)}


def mean_nll(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of `labels` under class `probabilities`, in float64 (a probability
    of 0 counts as the smallest positive float64, not infinity)."""
    picked = probabilities.detach().double().cpu().gather(1, labels.detach().long().cpu()[:, None]).squeeze(1)
    return float(-picked.clamp_min(torch.finfo(torch.float64).tiny).log().mean())


def temperature_effect(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """ECE and NLL of the network as it is (T = 1) and with `temperature`: ece_before, nll_before,
    ece_after, nll_after."""
    before = calibration_of(logits.double().softmax(dim=1), labels)
    after = calibration_of((logits.double() / temperature).softmax(dim=1), labels)
    return {f"{key}_before": value for key, value in before.items()} | {
        f"{key}_after": value for key, value in after.items()
    }
