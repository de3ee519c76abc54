"""The default run, and train.py on every kind of data, asserting on the files a run directory holds;
the console a person reads during a run (the bar, the epoch and start-up lines)."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    compose_config,
    hydra_job_logging,
    recomputed_metrics,
    write_cifar_batches,
    write_image_folder,
)
from PIL import Image

from classifier.callbacks.progress import (
    CompactProgressBar,
    JobClock,
    TrainSpeed,
    seconds_since_process_start,
)
from classifier.tasks.train import train

SUMMARY_KEYS = {"val/top1", "val/top5", "val/ece", "val/nll", "val/loss"}


def assert_run_files(run_dir, class_names):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(isinstance(value, float) for value in metrics.values())
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert checkpoint["classifier"]["class_names"] == class_names
    report = (run_dir / "report.txt").read_text()
    for name in class_names:
        assert name in report
    with Image.open(run_dir / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width >= 400
    return metrics, report


@pytest.mark.slow
def test_default_run_reaches_95_percent_and_writes_the_run_files(digits_run):
    run_dir, metrics = digits_run
    saved, report = assert_run_files(run_dir, [str(d) for d in range(10)])
    assert saved == metrics
    assert set(metrics) == SUMMARY_KEYS | {key.replace("val/", "test/") for key in SUMMARY_KEYS}
    assert metrics["val/top1"] >= 0.95
    assert metrics["test/top1"] >= 0.95
    assert 0 <= metrics["val/ece"] < 0.2
    assert_metrics_match_a_plain_evaluation(run_dir, metrics)
    assert "split: test (360 images)" in report
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))  # in the run's own folder
    # best.ckpt holds the best val/top1 seen, the one metrics.json reports
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    (score,) = [s["best_model_score"] for key, s in best["callbacks"].items() if "'val/top1'" in key]
    assert float(score) == pytest.approx(metrics["val/top1"], abs=1e-6)


def assert_metrics_match_a_plain_evaluation(run_dir, metrics):
    """metrics.json's top-1, top-5 and loss are those of best.ckpt over the whole val and test splits."""
    recomputed = recomputed_metrics(run_dir / "checkpoints" / "best.ckpt")
    assert set(recomputed) == {key for key in metrics if not key.endswith("/ece")}
    for key, value in recomputed.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_metrics_json_is_a_plain_evaluation_of_the_best_checkpoint(small_digits_run):
    run_dir, metrics = small_digits_run
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert_metrics_match_a_plain_evaluation(run_dir, metrics)


def test_report_json_and_reliability_diagram_describe_the_test_split(small_digits_run):
    from PIL import Image

    run_dir, metrics = small_digits_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["split"] == "test" and report["metrics"] == metrics
    classes = report["classes"]
    assert sum(classes[str(d)]["support"] for d in range(10)) == report["images"] == 360
    # per-class recall = that class's accuracy; their support-weighted mean is top-1
    weighted = sum(classes[str(d)]["recall"] * classes[str(d)]["support"] for d in range(10)) / 360
    assert weighted == pytest.approx(metrics["test/top1"], abs=1e-6)
    assert classes["accuracy"] == pytest.approx(metrics["test/top1"], abs=1e-6)
    assert sum(report["reliability"]["count"]) == 360
    assert report["reliability"]["ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    with Image.open(run_dir / "reliability_diagram.png") as image:
        assert image.size[0] > 300 and len(set(np.asarray(image.convert("L")).ravel())) > 10


@pytest.mark.slow  # several epochs, to show it learns
def test_imagefolder_run_with_val_and_test_folders(compose_train, tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 12, "val": 4, "test": 4})
    cfg = compose_train(
        "data=imagefolder",
        f"data.root={root}",
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=6",
        "logger=csv",
    )
    metrics = train(cfg)
    run_dir = tmp_path / "run"
    assert_run_files(run_dir, ["cat", "dog", "fox"])
    assert set(metrics) == {
        "val/top1",
        "val/ece",
        "val/nll",
        "val/loss",
        "test/top1",
        "test/ece",
        "test/nll",
        "test/loss",
    }  # no top5
    assert metrics["val/top1"] >= 0.9 and metrics["test/top1"] >= 0.9  # separable colours; chance is 1/3
    assert (run_dir / "csv" / "metrics.csv").is_file()


@pytest.mark.slow  # several epochs, to show it learns
def test_csv_run_with_split_column(compose_train, tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"a": 10, "b": 3}, classes=("red", "green"))
    rows = ["path,label,split"]
    for split_dir, split in (("a", "train"), ("b", "val")):
        for path in sorted((root / split_dir).rglob("*.*")):
            rows.append(f"{path.relative_to(root)},{path.parent.name},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_train(
        "data=csv",
        f"data.csv={root / 'labels.csv'}",
        "data.img_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_epochs=8",
        "logger=none",
    )
    metrics = train(cfg)
    assert set(metrics) == {"val/top1", "val/ece", "val/nll", "val/loss"}  # no test rows, no test metrics
    assert metrics["val/top1"] == 1.0
    report = (tmp_path / "run" / "report.txt").read_text()
    assert "split: val (6 images)" in report and "green" in report


@pytest.mark.long
def test_cifar10_run_on_torchvision_format_files(compose_train, tmp_path):
    classes = write_cifar_batches(tmp_path / "data", "cifar10")
    cfg = compose_train(
        "data=cifar10", f"data.root={tmp_path / 'data'}", "data.batch_size=16", "trainer=debug"
    )
    metrics = train(cfg)
    assert_run_files(tmp_path / "run", classes)
    assert {"val/top5", "test/top1"} <= set(metrics)
    report = (tmp_path / "run" / "report.txt").read_text()
    assert "split: test (20 images)" in report  # limit_test_batches=3 of 16 covers all 20


# -- the console -------------------------------------------------------------------------------


@pytest.mark.long
def test_a_default_run_logs_no_model_summary_and_its_start_up_time_once(tmp_path):
    """The console of `python train.py` (its log file gets the same lines), shrunk to 2 epochs of 2
    batches: no model summary (trainer.enable_model_summary=true asks for it), and the start-up time
    on a line of its own, once, not on every epoch line."""
    overrides = [
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "++measure_cpu_speed=false",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.width=8",
        "logger=none",
    ]
    cfg = compose_config("train", tmp_path / "run", overrides, quiet=False)  # summary setting as shipped
    with hydra_job_logging(cfg) as log_file:
        train(cfg)
    log = log_file.read_text()
    assert "Trainable params" not in log and "| Name" not in log
    startup_lines = [line for line in log.splitlines() if "first training step" in line]
    assert len(startup_lines) == 1, log
    epoch_lines = [line for line in log.splitlines() if "] - epoch " in line]
    assert [line.split("] - ", 1)[1].split(" ", 2)[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert all("startup" not in line for line in epoch_lines), epoch_lines


def test_the_start_up_time_counts_from_the_process_start_then_from_each_later_jobs_start(caplog):
    """Hydra's basic launcher runs a sweep's jobs one after another in one process: the first job
    waited for the imports too; a later one only for its own start."""
    clock = JobClock()
    clock.start_job()
    first = clock.seconds()
    assert first == pytest.approx(seconds_since_process_start(), abs=0.5) and first > 0.5
    clock.start_job()
    trainer = SimpleNamespace(is_global_zero=True)
    speed = TrainSpeed(clock)
    with caplog.at_level(logging.INFO, logger="classifier"):
        for batch_idx in range(3):
            speed.on_train_batch_start(trainer, None, None, batch_idx)
    (line,) = [r.getMessage() for r in caplog.records if "first training step" in r.getMessage()]
    seconds = float(line.split()[3])
    assert line.endswith("after the job started") and 0 <= seconds < 0.5, line
    assert speed.startup == pytest.approx(seconds, abs=0.05)  # what the first epoch logs as train/startup_s


def fake_trainer(**kwargs) -> SimpleNamespace:
    defaults = {
        "current_epoch": 0,
        "max_epochs": 10,
        "num_training_batches": 42,
        "accumulate_grad_batches": 1,
        "progress_bar_metrics": {},
        "is_global_zero": True,
    }
    return SimpleNamespace(**{**defaults, **kwargs})


def bar_on_a_terminal(monkeypatch, trainer) -> tuple[CompactProgressBar, io.StringIO]:
    """A CompactProgressBar drawing its train bar into a StringIO, as it would on a terminal."""
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    monkeypatch.setattr(CompactProgressBar, "is_disabled", property(lambda self: False))
    screen = io.StringIO()
    bar = CompactProgressBar()
    bar._trainer = trainer
    bar.train_progress_bar = Tqdm(file=screen, bar_format=CompactProgressBar.TRAIN_BAR_FORMAT, ncols=100)
    return bar, screen


def test_the_bar_shows_this_epochs_running_loss_and_the_last_validations_top1(monkeypatch):
    # train/loss of the previous epoch, as Lightning keeps it between epochs: not what the bar shows
    trainer = fake_trainer(current_epoch=1, progress_bar_metrics={"train/loss": 9.0, "val/top1": 0.7})
    bar, screen = bar_on_a_terminal(monkeypatch, trainer)
    bar.on_train_epoch_start(trainer)
    for batch_idx, (loss, size) in enumerate([(2.0, 4), (1.0, 4), (0.4, 2)]):
        batch = [torch.zeros(size, 3, 8, 8), torch.zeros(size, dtype=torch.long)]
        bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, batch, batch_idx)
    # per image: (2.0 * 4 + 1.0 * 4 + 0.4 * 2) / 10
    assert bar.get_metrics(trainer, None) == {"loss": pytest.approx(1.28), "val_acc": 0.7}
    drawn = screen.getvalue().split("\r")[-1]
    assert drawn.startswith("Epoch 2/10") and "3/42" in drawn and "loss=1.280, val_acc=0.700]" in drawn, drawn
    bar.on_train_epoch_start(trainer)  # a new epoch starts its own mean
    assert bar.get_metrics(trainer, None) == {"val_acc": 0.7}


def test_the_bars_running_loss_undoes_lightnings_division_for_gradient_accumulation(monkeypatch):
    trainer = fake_trainer(accumulate_grad_batches=4)
    bar, _ = bar_on_a_terminal(monkeypatch, trainer)
    bar.on_train_epoch_start(trainer)
    batch = [torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)]
    bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, batch, 0)  # a loss of 2.0, / 4
    assert bar.get_metrics(trainer, None) == {"loss": pytest.approx(2.0)}


def test_a_run_resumed_mid_epoch_shows_its_epoch_and_the_batches_of_that_epoch(monkeypatch):
    """Lightning calls no on_train_epoch_start for the epoch a run resumes in: the bar sets itself up
    at the first batch, counting on from the batches done before the stop."""
    trainer = fake_trainer(current_epoch=3)
    bar, screen = bar_on_a_terminal(monkeypatch, trainer)
    batch = [torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)]
    bar.on_train_batch_start(trainer, None, batch, 16)
    bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25)}, batch, 16)
    drawn = screen.getvalue().split("\r")[-1]
    assert drawn.startswith("Epoch 4/10") and "17/42" in drawn and "loss=0.25" in drawn, drawn


@pytest.mark.long
def test_eval_writes_no_progress_bar_carriage_returns_into_a_log_file(small_digits_run, tmp_path, capfd):
    """`python eval.py ... > log.txt`: whole lines, no redrawn bars (Lightning's own bar, which
    eval.py's Trainer got without a callbacks group, wrote them to stdout whatever it was). The
    captured stdout and stderr stand in for the file: neither is a terminal."""
    from classifier.cli import run_task

    run_dir, _ = small_digits_run
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=cpu"]
    run_task(
        "eval",
        compose_config("eval", tmp_path / "eval", [*overrides, "measure_cpu_speed=false"], quiet=False),
    )
    written = capfd.readouterr()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/top1"] >= 0  # it evaluated
    assert "\r" not in written.out + written.err, (written.out + written.err)[-2000:]
