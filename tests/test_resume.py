"""Resuming: automatic from checkpoints/last.ckpt, resume=false, and after kill -9."""

from __future__ import annotations

import csv
import logging
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, BatchRecorder

from classifier.errors import UserError
from classifier.tasks.train import train

SHORT = [
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=32",
    "logger=csv",
]


def last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow  # three runs
def test_rerun_resumes_at_the_next_epoch_and_resume_false_starts_over(compose_train, tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(compose_train(*SHORT, "trainer.max_epochs=2"))
    first = last_checkpoint(run_dir)
    assert (first["epoch"], first["global_step"]) == (1, 6)

    with caplog.at_level(logging.INFO, logger="classifier"):
        train(compose_train(*SHORT, "trainer.max_epochs=3"))
    messages = [r.getMessage() for r in caplog.records]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in messages
    assert "resuming at epoch 2 (global step 6)" in messages
    second = last_checkpoint(run_dir)
    assert (second["epoch"], second["global_step"]) == (2, 9)
    assert second["optimizer_states"][0]["state"]  # optimizer moments came back and went on
    assert second["lr_schedulers"][0]["last_epoch"] == 9
    with open(run_dir / "csv" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("train/loss")}
    assert epochs == {"0", "1", "2"}  # the first run's rows are kept

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="classifier"):
        train(compose_train(*SHORT, "trainer.max_epochs=1", "resume=false"))
    assert not any(r.getMessage().startswith("resuming at") for r in caplog.records)
    assert last_checkpoint(run_dir)["global_step"] == 3


def test_resume_true_without_a_checkpoint_is_an_error(compose_train):
    with pytest.raises(UserError, match="resume=true but there is no .*last.ckpt"):
        train(compose_train(*SHORT, "resume=true"))


class DrawsEachEpoch(BatchRecorder):
    """A BatchRecorder that also draws from Python's and NumPy's generators as each training epoch
    starts (torch's draws are the shuffle and the augmentation, which the BatchRecorder records;
    one more here would come before the DataLoader's in an uninterrupted run only)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[int, float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.draws.append((trainer.current_epoch, random.random(), float(np.random.rand())))


@pytest.fixture
def restore_deterministic_algorithms():
    """trainer.deterministic=true switches torch's deterministic algorithms on for the process."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.slow
def test_a_resumed_run_draws_what_an_uninterrupted_run_draws(
    compose_train, tmp_path, recorders, restore_deterministic_algorithms
):
    """Stopped after epoch 1 and resumed, epoch 2 shuffles, augments and draws as in a run that never
    stopped, and ends with the same weights (no schedule: what carries over is the RNG and optimizer
    states)."""
    same = [
        *SHORT,
        "scheduler=none",
        "trainer.deterministic=true",
        "+callbacks.record._target_=test_resume.DrawsEachEpoch",
    ]
    train(compose_train(*same, "trainer.max_epochs=2", output_dir=tmp_path / "whole"))
    train(compose_train(*same, "trainer.max_epochs=1", output_dir=tmp_path / "halves"))
    train(compose_train(*same, "trainer.max_epochs=2", output_dir=tmp_path / "halves"))
    whole, first, resumed = recorders
    assert first.batches["train"] == [batch for batch in whole.batches["train"] if batch[0] == 0]
    second_epoch = [batch for batch in whole.batches["train"] if batch[0] == 1]
    assert len(second_epoch) == 3
    assert resumed.batches["train"] == second_epoch  # labels: the shuffle; pixel sums: the random crops
    assert resumed.draws == [draw for draw in whole.draws if draw[0] == 1]
    uninterrupted = last_checkpoint(tmp_path / "whole")["state_dict"]
    resumed_weights = last_checkpoint(tmp_path / "halves")["state_dict"]
    assert uninterrupted.keys() == resumed_weights.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed_weights[key]), key


class SnapshotAtEpoch(L.Callback):
    """Copies the run's checkpoints folder to `target` as epoch `epoch` starts: what a run killed with
    -9 right after the previous epoch's checkpoints leaves behind."""

    def __init__(self, epoch: int, target: str):
        self.epoch, self.target = epoch, target

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            source = Path(trainer.checkpoint_callback.dirpath)
            shutil.copytree(source, Path(self.target) / "checkpoints")


@pytest.mark.slow  # two runs and a half
def test_a_killed_run_resumed_by_the_same_command_ends_as_if_never_stopped(
    compose_train, tmp_path, restore_deterministic_algorithms
):
    """The default recipe (warmup + cosine, random crops) under trainer.deterministic=true: killed
    after epoch 1 of 3 and rerun as typed, it ends with the uninterrupted run's metrics and weights."""
    command = [*SHORT, "trainer.max_epochs=3", "trainer.deterministic=true", "measure_cpu_speed=false"]
    killed = tmp_path / "killed"
    snapshot = [
        "+callbacks.snapshot._target_=test_resume.SnapshotAtEpoch",
        "+callbacks.snapshot.epoch=1",
        f"+callbacks.snapshot.target={killed}",
    ]
    whole = train(compose_train(*command, *snapshot, output_dir=tmp_path / "whole"))
    assert last_checkpoint(killed)["epoch"] == 0  # the state the killed run left: epoch 1 done
    resumed = train(compose_train(*command, output_dir=killed))
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
    for key, value in last_checkpoint(tmp_path / "whole")["state_dict"].items():
        assert torch.equal(value, last_checkpoint(killed)["state_dict"][key]), key


def wait_for(condition, process: subprocess.Popen, seconds: float = 300) -> None:
    """Polls until `condition()` (a file the run writes): `seconds` only guards against a hang."""
    deadline = time.monotonic() + seconds
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition(), "the run ended or timed out first"


@pytest.mark.process
@pytest.mark.slow
def test_sigterm_then_kill_9_then_the_printed_command_finishes_the_run(tmp_path):
    """SIGTERM (schedulers, docker stop): last.ckpt saved, exit 143, a resume command printed. That
    command, killed with -9 mid-run, leaves a loadable last.ckpt; run again, it finishes."""
    command = [
        "train.py",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        "logger=csv",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, *command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(last.exists, process)  # epoch 1 is done: SIGTERM lands in epoch 2 or later
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, output[-3000:]
    assert "Traceback" not in output
    (error,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert "stopped by SIGTERM" in error
    stopped_at = last_checkpoint(tmp_path)["global_step"]
    assert 8 <= stopped_at < 32
    resume = error.split("resume with: ", 1)[1].split()
    assert resume[:2] == ["python", "train.py"] and resume[-1] == f"hydra.run.dir={tmp_path}"

    written = last.stat().st_mtime_ns
    process = subprocess.Popen([sys.executable, *resume[1:]], cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        # A new last.ckpt: the resumed run has finished an epoch, and has more to go.
        wait_for(lambda: last.stat().st_mtime_ns != written, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    killed_at = last_checkpoint(tmp_path)["global_step"]  # loadable: written atomically
    assert stopped_at < killed_at < 32, "the run finished before it was killed"

    rerun = subprocess.run(
        [sys.executable, *resume[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming at epoch" in rerun.stdout + rerun.stderr
    final = last_checkpoint(tmp_path)
    assert final["epoch"] == 3 and final["global_step"] == 4 * 8
    assert (tmp_path / "metrics.json").is_file()
