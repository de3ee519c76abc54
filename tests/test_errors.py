"""User mistakes end in one line; bugs in the project's own code keep their traceback and say so."""

from __future__ import annotations

import logging

import pytest

from classifier.cli import BUG_LINE, run_task
from classifier.errors import UserError
from classifier.optim import schedulers

SHORT = ["trainer=debug", "data.batch_size=8", "model.width=8", "logger=none", "measure_cpu_speed=false"]


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_bug_in_the_scheduler_factory_keeps_its_traceback_and_says_it_is_a_bug(
    compose_train, monkeypatch, caplog
):
    # A ValueError raised in the scheduler module's own code, as a bug there would raise it: the
    # replacement is compiled under that module's file name, so its frame is the project's.
    code = (
        "def warmup_cosine_factor(*args, **kwargs):\n    raise ValueError('an off-by-one in our schedule')\n"
    )
    namespace: dict = {}
    exec(compile(code, schedulers.__file__, "exec"), namespace)
    monkeypatch.setattr(schedulers, "warmup_cosine_factor", namespace["warmup_cosine_factor"])
    with pytest.raises(ValueError, match="an off-by-one in our schedule") as raised:
        run_task("train", compose_train(*SHORT))
    assert not isinstance(raised.value, UserError)
    assert errors(caplog) == [BUG_LINE]
    assert raised.traceback[-1].name == "warmup_cosine_factor"  # the traceback reaches the bug


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("optimizer.lr=-1", "optimizer: Invalid learning rate: -1"),  # torch checked the value
        ("+optimizer.bettas=[0.9,0.99]", "optimizer: AdamW got an unexpected keyword argument 'bettas'"),
        ("optimizer.opt=adamm", "optimizer.opt='adamm' is not one of timm's optimizers; did you mean adam"),
        ("+scheduler.warmup=3", "scheduler: warmup_cosine got an unexpected keyword argument 'warmup'"),
        ("trainer.max_epochs=-2", "trainer: `max_epochs` must be a non-negative integer or -1"),
    ],
)
def test_a_bad_user_value_is_one_line(compose_train, caplog, override, line):
    with pytest.raises(SystemExit) as exit_status:
        run_task("train", compose_train(*SHORT, override))
    assert exit_status.value.code == 1
    (error,) = errors(caplog)
    assert error.startswith(line) and "\n" not in error


def test_hydra_full_error_shows_the_traceback_of_a_user_error_too(compose_train, monkeypatch, caplog):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError, match="Invalid learning rate: -1"):
        run_task("train", compose_train(*SHORT, "optimizer.lr=-1"))
    assert errors(caplog) == ["optimizer: Invalid learning rate: -1"]
