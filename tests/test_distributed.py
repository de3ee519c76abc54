"""trainer=ddp_cpu through the real command line: Lightning's DDP launcher starts the script again for
rank 1, which must join the run of rank 0 (one run directory, the run files written once), and the
metrics must be those of both processes' halves of the data together."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, recomputed_metrics

pytestmark = [pytest.mark.slow, pytest.mark.process]  # two Python processes with torch: ~30 s


def test_ddp_cpu_is_one_run_whose_metrics_cover_both_processes(tmp_path):
    # The default run directory, outputs/<date>/<time> under the folder it is run from: rank 1 starts
    # seconds after rank 0, so a time of its own would be another directory.
    # Fold 0 of 3 makes val 479 images: Lightning's DistributedSampler would pad it to 480, counting
    # an image twice; batches of 20 end unevenly on the two processes. test has 360.
    command = [
        str(REPO / "train.py"),
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.enable_model_summary=false",
        "data.batch_size=20",
        "data.folds=3",
        "data.fold=0",
        "calibrate=true",
        "tta=true",
        "logger=none",
    ]
    result = subprocess.run(
        [sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output

    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    files = sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())
    assert files == [
        ".hydra/config.yaml",  # rank 1 is told hydra.output_subdir=null
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        ".lock",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "confusion_matrix.png",
        "curves.png",
        "metrics.json",
        "model_card.yaml",
        "reliability_diagram.png",
        "report.json",
        "report.txt",
        "train.log",
        "train_ddp_process_1.log",  # rank 1's own log (Hydra names it after the job Lightning gives it)
    ]
    assert (run_dir / "train.log").read_text().count("reports written to") == 1
    assert (run_dir / "train.log").read_text().count("model card:") == 1
    assert "reports written to" not in (run_dir / "train_ddp_process_1.log").read_text()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 2)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    recomputed = recomputed_metrics(run_dir / "checkpoints" / "best.ckpt")  # whole splits, one process
    for key, value in recomputed.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    assert "split: test (360 images)" in (run_dir / "report.txt").read_text()
    # the reliability bins hold both processes' images: their ECE is the run's
    reliability = json.loads((run_dir / "report.json").read_text())["reliability"]
    assert sum(reliability["count"]) == 360
    assert reliability["ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    # calibration gathered every val image once (479, not 480), on both processes alike
    report = json.loads((run_dir / "report.json").read_text())
    assert report["calibration"]["images"] == 479
    assert {"val/top1_tta", "test/top1_tta"} <= set(metrics)


def _test_predictions(ckpt_path) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint's top class and the label of every test image, in one process."""
    from conftest import load_run

    module, datamodule = load_run(str(ckpt_path))
    module.eval()
    with torch.no_grad():
        outputs = [(module(images).argmax(dim=1), labels) for images, labels in datamodule.test_dataloader()]
    return torch.cat([top for top, _ in outputs]), torch.cat([labels for _, labels in outputs])


def test_ddp_cpu_distillation_scores_the_teacher_on_every_image_once(small_digits_run, tmp_path):
    """distill=soft under trainer=ddp_cpu: each process runs its own teacher on its half of a batch;
    the teacher's top-1 and the agreement in metrics.json are those of the whole test split, as one
    process computes them from the two checkpoints."""
    teacher = small_digits_run[0] / "checkpoints" / "best.ckpt"
    command = [
        str(REPO / "train.py"),
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_model_summary=false",
        "data.batch_size=20",
        "model.width=8",
        "distill=soft",
        f"distill.teacher={teacher}",
        "logger=none",
    ]
    result = subprocess.run(
        [sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Starting with 2 processes" in output
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student, labels = _test_predictions(run_dir / "checkpoints" / "best.ckpt")
    teacher_top, teacher_labels = _test_predictions(teacher)
    assert torch.equal(labels, teacher_labels) and len(labels) == 360
    assert metrics["test/teacher_top1"] == pytest.approx(
        (teacher_top == labels).double().mean().item(), abs=1e-5
    )
    assert metrics["test/agreement"] == pytest.approx(
        (student == teacher_top).double().mean().item(), abs=1e-5
    )
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("teacher" in key for key in last["state_dict"])
