"""TensorBoard images and curves.png: what a run shows while it trains."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from classifier.callbacks.dashboards import Dashboards, denormalize
from classifier.run.checkpoints import TEMPERATURE_KEY
from classifier.tasks.train import train


def tensorboard_images(run_dir) -> dict[str, list[int]]:
    """tag -> the steps it has images at, over every event file of the run."""
    steps: dict[str, list[int]] = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"images": 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            steps.setdefault(tag, []).extend(image.step for image in events.Images(tag))
    return steps


@pytest.mark.long  # 3 epochs with every figure
def test_a_run_logs_its_images_every_epoch_and_draws_its_curves(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    train(
        compose_train(
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=4",
            "model.width=8",
            "callbacks.dashboards.max_overhead=null",
            "calibrate=true",
        )
    )
    steps = tensorboard_images(run_dir)
    for tag in ("val/confusion_matrix", "val/reliability_diagram", "val/worst_misclassified"):
        assert steps[tag] == [4, 8, 12], tag  # each validation epoch, not the sanity check
    assert steps["train/augmented_samples"] == [1]  # once, after the first step
    assert steps["test/confusion_matrix"] == [12]  # the final evaluation's
    with Image.open(run_dir / "curves.png") as curves:
        assert curves.width >= 800 and len(set(np.asarray(curves.convert("L")).ravel())) > 20
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    (history,) = [state["history"] for key, state in best["callbacks"].items() if "Dashboards" in key]
    assert [entry["epoch"] for entry in history] == [1.0, 2.0, 3.0][: len(history)]
    assert {"train/loss", "val/loss", "train/top1", "val/top1"} <= set(history[-1])
    # calibrate=true: best.ckpt carries the temperature it fitted
    assert best["classifier"][TEMPERATURE_KEY] > 0


def fake_trainer(tmp_path):
    return SimpleNamespace(
        is_global_zero=True,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        fast_dev_run=False,
        current_epoch=0,
        loggers=[TensorBoardLogger(str(tmp_path))],
    )


def test_the_worst_images_are_the_most_confident_mistakes_of_the_whole_epoch(tmp_path):
    dashboards, trainer = Dashboards(worst_images=3), fake_trainer(tmp_path)
    dashboards.on_validation_epoch_start(trainer, None)
    confident = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6, 0.99])
    for batch in range(2):  # two batches of three images; image i shows the value i
        rows = slice(3 * batch, 3 * batch + 3)
        probabilities = torch.stack([confident[rows], 1 - confident[rows]], dim=1)
        images = (
            torch.arange(3 * batch, 3 * batch + 3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 2, 2)
        )
        # every image is of class 1 but image 5, which is right
        targets = torch.tensor([1, 1, 1]) if batch == 0 else torch.tensor([1, 1, 0])
        dashboards.on_validation_batch_end(trainer, None, probabilities, (images, targets), batch)
    kept = sorted(dashboards._worst, reverse=True)
    assert [round(c, 2) for c, *_ in kept] == [0.95, 0.9, 0.8]
    assert [int(image[0, 0, 0]) for _, _, image, _, _ in kept] == [3, 0, 1]
    assert all((true, predicted) == (1, 0) for *_, true, predicted in kept)


def test_denormalize_inverts_the_normalisation():
    pixels = torch.rand(2, 3, 4, 4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.allclose(denormalize(normalised, mean, std), pixels.permute(0, 2, 3, 1).numpy(), atol=1e-6)
