"""Metric definitions: the same name means the same quantity in every split."""

from __future__ import annotations

import torch
from torch import nn

from classifier.module import ClassifierModule


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
