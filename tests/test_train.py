"""The default run, and train.py on every kind of data, asserting on the files a run directory holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import recomputed_metrics, write_cifar_batches, write_image_folder
from PIL import Image

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
