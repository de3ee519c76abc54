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

from classifier.cli import run_task
from classifier.errors import CTRL_C_EXIT, UserError
from classifier.run.changed_config import report_config_changes
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
    assert "resuming at epoch 3/3 (global step 6)" in messages  # 1-based, as the epoch lines count
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
    assert "[ERROR]" not in output  # a stop that was asked for
    (warning,) = [line for line in output.splitlines() if "[WARNING]" in line and "stopped by" in line]
    assert "stopped by SIGTERM" in warning
    stopped_at = last_checkpoint(tmp_path)["global_step"]
    assert 8 <= stopped_at < 32
    resume = warning.split("resume with: ", 1)[1].split()
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


# -- what the console says about a stop and a resume -----------------------------------------------


class CtrlCAt(L.Callback):
    """Ctrl-C (a KeyboardInterrupt, as Python raises on SIGINT) after batch `batch` (0-based) of
    epoch `epoch` (0-based)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise KeyboardInterrupt


@pytest.fixture
def restore_sigint():
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT once it handled Ctrl-C
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.long  # a run stopped in its 2nd epoch, and its resume
def test_ctrl_c_is_a_warning_and_the_resume_line_names_the_same_epoch(compose_train, caplog, restore_sigint):
    short = [*SHORT, "model.width=8", "trainer.max_epochs=3"]
    stop = [
        "+callbacks.stop._target_=test_resume.CtrlCAt",
        "+callbacks.stop.epoch=1",
        "+callbacks.stop.batch=1",
    ]
    with caplog.at_level(logging.INFO, logger="classifier"), pytest.raises(SystemExit) as exit_status:
        run_task("train", compose_train(*short, *stop))
    assert exit_status.value.code == CTRL_C_EXIT
    (stopped,) = [r for r in caplog.records if "stopped by Ctrl-C" in r.getMessage()]
    assert stopped.levelname == "WARNING"
    assert "(epoch 2/3, 2 of its 3 batches done, global step 5)" in stopped.getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="classifier"):
        train(compose_train(*short))
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming at")]
    assert resumed == [
        "resuming at epoch 2/3, 2 of its 3 batches done (global step 5);"
        " its remaining batches come from a new shuffle"
    ]
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["2/3", "3/3"]  # the stopped epoch, finished


@pytest.mark.long  # a run and its resume
def test_a_resume_with_another_max_epochs_and_lr_says_what_it_does_with_each(compose_train, tmp_path, caplog):
    """One WARNING: the new max_epochs is used and the schedule stretched; the new lr is not (torch's
    Optimizer.load_state_dict and the schedule's state bring the checkpoint's back). The checkpoint
    the resumed run writes shows both."""
    run_dir = tmp_path / "run"
    short = [*SHORT, "model.width=8", "logger=none"]
    train(compose_train(*short, "trainer.max_epochs=1"))
    with caplog.at_level(logging.WARNING, logger="classifier"):
        train(compose_train(*short, "trainer.max_epochs=2", "optimizer.lr=0.01"))
    (warning,) = [r for r in caplog.records if "differ from those" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert warning.getMessage().splitlines() == [
        f"2 setting(s) differ from those {run_dir / 'checkpoints' / 'last.ckpt'} was trained with:",
        "  optimizer.lr: 0.001 -> 0.01: not used: the checkpoint's optimizer state (learning rate, weight"
        " decay, moments) and schedule are restored over it; resume=false starts over with it",
        "  trainer.max_epochs: 1 -> 2: used: training continues to epoch 2; the learning-rate schedule is"
        " recomputed for the new length and goes on from step 3 (after a finished decay, the learning rate"
        " rises again)",
    ]
    resumed = last_checkpoint(run_dir)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 6)  # trained on to epoch 2
    assert {group["initial_lr"] for group in resumed["optimizer_states"][0]["param_groups"]} == {0.001}
    assert set(resumed["lr_schedulers"][0]["base_lrs"]) == {0.001}


def fit_loop_at(epochs_done: int, schedule: dict | None = None) -> dict:
    """The parts of a checkpoint the resume message reads: Lightning's fit loop state, the schedules."""
    progress = {"epoch_progress": {"current": {"processed": epochs_done}}}
    schedules = [schedule] if schedule else []
    return {"loops": {"fit_loop": progress}, "lr_schedulers": schedules, "global_step": 40}


def test_a_resume_with_fewer_epochs_than_trained_is_one_line_saying_what_to_set():
    saved, now = {"trainer": {"max_epochs": 10}}, {"trainer": {"max_epochs": 3}}
    expected = r"^trainer.max_epochs=3 but last.ckpt has trained 4 epochs already: set"
    with pytest.raises(UserError, match=expected):
        report_config_changes(fit_loop_at(4), saved, now, "last.ckpt")


def test_a_one_cycle_schedule_cannot_be_lengthened_on_resume():
    """torch's OneCycleLR keeps its total_steps in its state, so a resumed run would stop with
    'Tried to step 41 times' after the old length."""
    saved = {"trainer": {"max_epochs": 2}, "scheduler": {"_target_": "...one_cycle"}}
    now = {"trainer": {"max_epochs": 4}, "scheduler": {"_target_": "...one_cycle"}}
    with pytest.raises(UserError, match="one-cycle schedule of a fixed length"):
        report_config_changes(fit_loop_at(2, {"total_steps": 40}), saved, now, "last.ckpt")
