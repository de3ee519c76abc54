"""Metric definitions: the same name means the same quantity in every split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classifier.engine.module import ClassifierModule


class FixedLogits(nn.Module):
    """A 'network' whose output is the batch itself: the test chooses the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_train_top1_is_micro_averaged_like_val_and_test():
    # 9 of class 0, all right; 1 of class 1, wrong; class 2 absent. Micro (fraction of images
    # right): 0.9. Macro (mean of per-class accuracies) would say 0.5.
    targets = torch.tensor([0] * 9 + [1])
    logits = torch.zeros(10, 3)
    logits[:, 0] = 1.0
    module = ClassifierModule(FixedLogits(), class_names=["a", "b", "c"])
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    module.training_step((logits, targets), 0)
    for stage in ("val", "test"):
        module._eval_step(stage, (logits, targets))
    assert module.train_top1.compute().item() == torch.tensor(0.9).item()
    for stage in ("val", "test"):
        assert module.epoch_results(stage)["top1"].item() == module.train_top1.compute().item()


def test_ece_and_reliability_bins_match_a_hand_computation():
    from classifier.evaluation.metrics import ECE_BINS
    from classifier.evaluation.reports import expected_calibration_error, reliability_bins

    # Four images, top-1 probabilities 0.9 (right), 0.9 (wrong), 0.6 (right), 0.35 (right):
    # bins [0.867, 0.933): accuracy 0.5, confidence 0.9; [0.6, 0.667): 1.0 vs 0.6; [0.333, 0.4): 1.0 vs 0.35.
    # ECE = 2/4 * 0.4 + 1/4 * 0.4 + 1/4 * 0.65 = 0.4625
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.35, 0.33, 0.32]])
    targets = torch.tensor([0, 1, 0, 0])
    module = ClassifierModule(FixedLogits(), class_names=["a", "b", "c"])
    module._eval_step("val", (probs.log(), targets))
    assert module.epoch_results("val")["ece"].item() == pytest.approx(0.4625, abs=1e-6)
    confidences, correct = module.calibration_data("val")
    assert confidences.tolist() == pytest.approx([0.9, 0.9, 0.6, 0.35]) and correct.tolist() == [1, 0, 1, 1]
    bins = reliability_bins(confidences, correct, ECE_BINS)
    assert bins["count"].sum() == 4 and bins["count"][13] == 2 and bins["accuracy"][13] == 0.5
    assert expected_calibration_error(bins) == pytest.approx(0.4625, abs=1e-6)
