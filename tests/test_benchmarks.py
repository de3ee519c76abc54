"""The benchmark scripts run on small generated data: what `make bench`, `make bench-tutorial` and
`make bench-speedrun` compute, without their minutes of CIFAR-10 (those figures are in the README)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, write_image_folder

sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402
import speedrun_vs_airbench  # noqa: E402


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    classes = ("airplane", "automobile", "bird")
    return write_image_folder(
        tmp_path_factory.mktemp("jpgs"), {"train": 12, "test": 4}, classes=classes, size=32
    )


def test_the_pipeline_section_times_each_loader(small_cifar, monkeypatch, tmp_path):
    rows = bench.pipeline(small_cifar, batch_size=4, batches=2)
    assert [r["loader"] for r in rows] == [
        "per-image, 0 workers",
        "per-image, 1 workers",
        "per-image, 2 workers",
        "decoded cache",
        "decoded cache: decoding once",
    ]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_the_scaling_section_measures_steps_and_plots_them(tmp_path):
    seconds = bench.training_step_seconds("resnet18", 32, 2)
    assert 0 < seconds < 30
    rows = [
        {"model": m, "batch": b, "img_size": s, "epoch_s": s * b}
        for m in bench.SCALING_MODELS
        for b in bench.SCALING_BATCHES
        for s in bench.SCALING_SIDES
    ]
    bench.plot_scaling(rows, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_airbench_gets_the_same_images_in_its_own_format(small_cifar, tmp_path):
    speedrun_vs_airbench.write_airbench_tensors(small_cifar, tmp_path / "cifar10")
    train = torch.load(tmp_path / "cifar10" / "train.pt")
    assert train["images"].shape == (36, 32, 32, 3) and train["images"].dtype == torch.uint8
    assert sorted(train["labels"].tolist()) == [0] * 12 + [1] * 12 + [2] * 12
    assert train["labels"][:12].unique().numel() > 1  # shuffled: its first images are not one class
    assert train["classes"] == ["airplane", "automobile", "bird"]
    assert torch.load(tmp_path / "cifar10" / "test.pt")["images"].shape == (12, 32, 32, 3)


AIRBENCH_UTILS_STUB = """
import torch

class CifarLoader:
    def __init__(self, path, train=True, batch_size=500, gpu=0):
        self.device = torch.device(gpu)

def evaluate(model, loader, tta_level=0):
    return 0.9412 if tta_level == 2 else 0.93

def train94():
    loader = CifarLoader("cifar10", train=True)
    on_cpu = loader.device.type == "cpu"
    if on_cpu:  # what --device cpu's patches give airbench's code
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(), end.record(), torch.cuda.synchronize()
        assert end.elapsed_time(start) <= 0 and torch.zeros(1).cuda().half().dtype == torch.float32
    # airbench 0.1.8's table (utils.print_columns, values right-justified to their column's name):
    # a header, a row per epoch, the 'eval' row last
    names = ["run   ", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc", "total_time_seconds"]
    for values in (names, ["0", "1", "1.2345", "0.5", "0.6", "", "0.9"],
                   ["", "eval", "0.5", "0.9", "0.93", "0.9412", "3.4567"]):
        print("".join("|  %s  " % v.rjust(len(n)) for v, n in zip(values, names)) + "|")
    return torch.nn.Linear(1, 1)
"""


@pytest.mark.process  # airbench's stand-in runs in python -c
def test_airbenchs_own_clock_and_tta_accuracy_are_read_from_its_cpu_run(tmp_path, monkeypatch):
    # --device cpu: the same reading of its table as on a GPU, after the patches that let it run here
    package = tmp_path / "airbench"
    package.mkdir()
    (package / "utils.py").write_text(AIRBENCH_UTILS_STUB)
    (package / "__init__.py").write_text("from .utils import CifarLoader, evaluate, train94\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = speedrun_vs_airbench.run_airbench(tmp_path, "cpu")
    assert result["seconds"] == 3.4567 and result["test_top1"] == 0.9412
    assert result["call_s"] > 0 and result["command_s"] >= result["call_s"]


@pytest.mark.process  # benchmarks/tutorial_loop.py as typed
def test_the_tutorial_loop_trains_and_scores_the_test_folder(small_cifar):
    done = subprocess.run(
        [sys.executable, "benchmarks/tutorial_loop.py", "--data", str(small_cifar), "--workers", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["epochs"] == 1 and result["test_top1"] in {k / 12 for k in range(13)}
    assert result["seconds"] > 0
