"""Resuming: automatic from checkpoints/last.ckpt, resume=false, and after kill -9."""

from __future__ import annotations

import csv
import logging
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO

from classifier.callbacks import restore_rng_states
from classifier.errors import UserError
from classifier.training import train

SHORT = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "data.batch_size=32", "logger=csv"]


def last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


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


def test_rng_states_in_checkpoints_round_trip(compose_train, tmp_path):
    train(compose_train(*SHORT, "trainer.max_epochs=1"))
    states = last_checkpoint(tmp_path / "run")["rng_states"]  # loaded with weights_only=True

    def draw():
        restore_rng_states(states)
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    assert draw() == draw()


def test_kill_9_then_the_same_command_resumes_and_finishes(tmp_path):
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=6",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), "the first run wrote no last.ckpt"
        time.sleep(0.5)  # let it get into the next epoch, maybe into the next checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    killed_at = last_checkpoint(tmp_path)["epoch"]
    assert killed_at < 4, "the run finished before it was killed"

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming at epoch {killed_at + 1}" in rerun.stdout + rerun.stderr
    final = last_checkpoint(tmp_path)
    assert final["epoch"] == 4 and final["global_step"] == 5 * 6
    assert (tmp_path / "metrics.json").is_file()
