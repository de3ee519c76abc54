"""TensorBoard and curves.png: what a run shows while it trains, and what TensorBoard opens on (loss and
top-1, one learning-rate chart, runs named by their overrides)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar.layout_pb2 import Layout
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from classifier.callbacks.dashboards import Dashboards, denormalize, image_grid_figure, learning_rate_charts
from classifier.optim.schedulers import warmup_cosine_factor
from classifier.run.checkpoints import TEMPERATURE_KEY
from classifier.run.loggers import MAX_RUN_NAME, RunTensorBoardLogger, tensorboard_version
from classifier.tasks.train import train


def tensorboard_steps(run_dir, kind: str = "images") -> dict[str, list[int]]:
    """tag -> the steps it has `kind` (images, scalars) at, over every event file of the run."""
    steps: dict[str, list[int]] = {}
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={kind: 0})
        events.Reload()
        for tag in events.Tags()[kind]:
            reads = events.Images if kind == "images" else events.Scalars
            steps.setdefault(tag, []).extend(event.step for event in reads(tag))
    return steps


def tensorboard_values(run_dir, tag: str) -> list[float]:
    values = []
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [event.value for event in events.Scalars(tag)]
    return values


@pytest.mark.slow  # make test-slow: 3 epochs with every figure
def test_a_run_logs_its_images_every_epoch_and_draws_its_curves(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    train(
        compose_train(
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=4",
            "trainer.log_every_n_steps=2",
            "model.width=8",
            "optimizer.layer_decay=0.5",  # rates that differ by a factor: still one schedule
            "callbacks.dashboards.max_overhead=null",
            "calibrate=true",
        )
    )
    # TensorBoard's SCALARS page files charts by their tag's first part, in order, and opens the first
    # two: test, train (val below). No `epoch` chart, no `lr-AdamW/pg1..pgN` before them.
    scalars = tensorboard_steps(run_dir, "scalars")
    assert "epoch" not in scalars and not [tag for tag in scalars if tag.startswith("lr")]
    assert [tag for tag in scalars if "lr" in tag] == ["train/lr"]
    assert scalars["train/lr"] == [1, 3, 5, 7, 9, 11]  # every 2nd step
    # the head's rate (1e-3 by optimizer.lr; the layers below it 0.5x, 0.25x...) through the schedule
    first_rate = tensorboard_values(run_dir, "train/lr")[0]
    assert first_rate == pytest.approx(1e-3 * warmup_cosine_factor(1, 1, 12, 0.01))
    splits = ("train", "val", "test")
    assert {f"{split}/{name}" for split in splits for name in ("loss", "top1")} <= set(scalars)
    per_class = sorted(tag for tag in scalars if tag.startswith("val/top1_per_class/"))
    assert len(per_class) == 10 and not [tag for tag in scalars if "class_acc" in tag]
    steps = tensorboard_steps(run_dir)
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


# -- what TensorBoard opens on ------------------------------------------------------------------------


def test_parameter_groups_that_share_a_schedule_are_one_learning_rate_chart():
    layers = [torch.nn.Parameter(torch.zeros(1)) for _ in range(4)]
    # Layer-wise decay: each group's rate a factor of the head's, one schedule for all.
    optimizer = torch.optim.SGD([{"params": [p], "lr": 0.1 * 0.5**i} for i, p in enumerate(layers)], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    separate: set[int] = set()
    for step in range(3):
        charts = learning_rate_charts(optimizer.param_groups, separate)
        assert charts == {"train/lr": pytest.approx(0.1 / (1 + step))}
        optimizer.step()
        schedule.step()
    # A group on a schedule of its own (a constant rate here): a chart of its own, from then on.
    optimizer = torch.optim.SGD([{"params": [layers[0]]}, {"params": [layers[1]]}], lr=0.1)
    halved_after_one_step = [lambda step: 1.0, lambda step: 1.0 if step < 1 else 0.5]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, halved_after_one_step)
    separate, charts = set(), []
    for _ in range(3):
        charts.append(learning_rate_charts(optimizer.param_groups, separate))
        optimizer.step()
        schedule.step()
    assert charts == [
        {"train/lr": pytest.approx(0.1)},
        {"train/lr": pytest.approx(0.1), "train/lr_pg2": pytest.approx(0.05)},
        {"train/lr": pytest.approx(0.1), "train/lr_pg2": pytest.approx(0.05)},
    ]


def test_tensorboard_names_each_sweep_job_by_its_overrides(tmp_path):
    sweep = tmp_path / "multirun"
    for job, seed in enumerate((1, 2)):  # the jobs of `train.py -m model.width=8 seed=1,2`
        cfg = compose_config("train", sweep / str(job), ["model.width=8", f"seed={seed}"], quiet=False)
        logger = instantiate(cfg.logger.tensorboard)
        logger.log_hyperparams({"seed": seed, "model": {"width": 8}})
        logger.log_metrics({"val/top1": 0.5, "epoch": 0}, step=1)
        logger.finalize("success")
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    runs.Reload()
    # TensorBoard's run names, which its HPARAMS table lists each run's row by
    hparams_runs = runs.PluginRunToTagToContent("hparams")
    names = ["0/tensorboard/model.width=8,seed=1", "1/tensorboard/model.width=8,seed=2"]
    assert sorted(hparams_runs) == names
    assert runs.GetAccumulator(names[0]).Tags()["scalars"] == ["val/top1"]  # no `epoch`
    # the table's "Trial ID": the overrides first (its column shows the first 15 characters or so)
    start = HParamsPluginData.FromString(hparams_runs[names[1]]["_hparams_/session_start_info"])
    assert start.session_start_info.group_name == f"model.width=8,seed=2  ({sweep / '1'})"
    # the CUSTOM SCALARS page: loss and top-1 of train, val and test on a chart each, and the rate
    (layout,) = runs.GetAccumulator(names[0]).Tensors("custom_scalars__config__")
    (category,) = Layout.FromString(layout.tensor_proto.string_val[0]).category
    assert [chart.title for chart in category.chart] == ["loss", "top-1", "learning rate"]
    assert list(category.chart[0].multiline.tag) == [r"^(train|val|test)/loss$"]


def test_a_single_run_is_named_by_its_run_dir_and_a_resumed_run_keeps_its_folder(tmp_path):
    run_dir = tmp_path / "2026-12-02" / "10-11-12"
    cfg = compose_config("train", run_dir, quiet=False)  # no overrides
    logger = instantiate(cfg.logger.tensorboard)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.finalize("success")
    assert Path(logger.log_dir) == run_dir / "tensorboard" / "10-11-12"
    # resumed with an override more (a longer run): the same folder, so TensorBoard keeps one run
    assert tensorboard_version(run_dir / "tensorboard", "trainer.max_epochs=20") == "10-11-12"
    old = tmp_path / "old" / "tensorboard"  # a run begun before runs had a folder
    old.mkdir(parents=True)
    (old / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    assert tensorboard_version(old, "seed=1") == ""
    new = tmp_path / "new"
    assert tensorboard_version(new, "data.root=/data/cats,seed=1") == "data.root=_data_cats,seed=1"
    long = tensorboard_version(new, "x" * 300)
    assert len(long) == MAX_RUN_NAME and long != tensorboard_version(new, "x" * 301)


def test_lightnings_epoch_scalar_stays_out_of_tensorboard_and_per_class_accuracy_follows_top1(tmp_path):
    logger = RunTensorBoardLogger(tmp_path, run_name="seed=1")
    logger.log_metrics({"epoch": 3, "val/top1": 0.9, "val/class_acc/cat": 0.8}, step=10)
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["val/top1", "val/top1_per_class/cat"]


@pytest.mark.parametrize("mistakes", [1, 2, 3, 16])
def test_the_worst_mistakes_title_fits_however_few_they_are(mistakes):
    images = np.random.default_rng(0).uniform(size=(mistakes, 32, 32, 3))
    title = "most confident val mistakes, epoch 12"
    fig = image_grid_figure(images, ["true cat\npred dog 0.97"] * mistakes, title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert fig._suptitle.get_text() == title
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
