"""tune.lr_find and tune.batch_size: what they find is what the run trains with, is recorded in its
checkpoints, and is what a resumed run keeps."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from classifier.errors import UserError
from classifier.tasks.train import train

SHORT = ["trainer.max_epochs=1", "model.width=8", "logger=none"]


def saved_config(run_dir, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["classifier"]["config"]


@pytest.mark.slow  # two whole epochs of digits: in make test-slow, the lr finder stays in make test
def test_the_batch_size_found_is_trained_with_and_kept_on_resume(compose_train, tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(compose_train(*SHORT, "tune.batch_size=true", "tune.max_batch_trials=2"))
    assert saved_config(run_dir)["data"]["batch_size"] == 128  # 64, then 128: 2 sizes tried; no CPU runs out
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1149 // 128  # digits' 1149 training images in full batches of 128

    with caplog.at_level(logging.INFO, logger="classifier"):
        train(
            compose_train(*SHORT, "trainer.max_epochs=2", "tune.batch_size=true", "tune.max_batch_trials=3")
        )
    assert any("as tuned by the first run" in r.getMessage() for r in caplog.records)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * (1149 // 128) and saved_config(run_dir)["data"]["batch_size"] == 128


@pytest.mark.long
def test_the_learning_rate_found_is_trained_with_and_its_curve_saved(compose_train, tmp_path, caplog):
    run_dir = tmp_path / "run"
    overrides = ["tune.lr_find=true", "tune.lr_find_steps=30", "tune.min_lr=1e-5", "tune.max_lr=0.1"]
    with caplog.at_level(logging.INFO, logger="classifier"):
        train(compose_train(*SHORT, "trainer.limit_train_batches=3", *overrides))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tune.lr_find: ")]
    suggested = float(re.search(r"optimizer.lr=(\S+) \(was 0.001\)", line).group(1))
    lr = saved_config(run_dir)["optimizer"]["lr"]
    assert 1e-5 <= lr <= 0.1 and lr != 1e-3 and lr == pytest.approx(suggested, rel=1e-2)
    # the optimizer started from it: the schedule's base rate of the head's group (scale 1)
    groups = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert max(group["initial_lr"] for group in groups["param_groups"]) == pytest.approx(lr)
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert not (run_dir / ".tune").exists()


def test_tuning_runs_on_one_device_and_its_keys_are_checked(compose_train):
    with pytest.raises(UserError, match="tune.lr_find / tune.batch_size run on one device"):
        train(compose_train(*SHORT, "tune.lr_find=true", "trainer.devices=2"))
    with pytest.raises(UserError, match="tune.batch_size='yes' must be true or false"):
        train(compose_train(*SHORT, "tune.batch_size=yes"))
