"""Trust: checkpoints that cannot run code, files with the user's mode, one run per directory,
interrupts that save and say how to resume, re-runs on a damaged or foreign run directory, a
best checkpoint that survives moves, and one-line answers for bad trainer / optimizer values."""

from __future__ import annotations

import logging
import logging.config
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import compose_config, hydra_job_logging, load_run, write_image_folder
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.writer import FileWriter

from classifier.callbacks.checkpointing import RunCheckpoint
from classifier.callbacks.progress import CompactProgressBar
from classifier.cli import expand_home_in_argv
from classifier.console import DropAdverts
from classifier.errors import CTRL_C_EXIT, SIGTERM_EXIT, RunInterrupted, UserError
from classifier.files import write_atomically
from classifier.models.weights import read_state_dict
from classifier.run.checkpoints import load_checkpoint
from classifier.run.directory import refuse_if_in_use, run_dir_lock
from classifier.run.preemption import SIGUSR1_EXIT
from classifier.tasks.train import train

SHORT = [
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=16",
    "model.width=8",  # a quarter of the default's work per image: these tests are about the run, not the net
    "logger=csv",
]


class StopAt(L.Callback):
    """Interrupts training after batch `batch` (0-based) of epoch `epoch`: with Ctrl-C (a
    KeyboardInterrupt, as Python raises on SIGINT) or a real SIGTERM sent to this process."""

    def __init__(self, epoch: int, batch: int, how: str):
        self.epoch, self.batch, self.how = epoch, batch, how

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler stops before the next batch
        elif self.how == "sigusr1":
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's warning before a time limit or preemption
        elif self.how == "sigusr2":
            os.kill(os.getpid(), signal.SIGUSR2)  # the same warning as submitit asks SLURM for it
        else:
            raise KeyboardInterrupt


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# -- checkpoints are data ----------------------------------------------------------------------


def tampered_checkpoint(small_digits_run, tmp_path: Path, edit) -> Path:
    run_dir, _ = small_digits_run
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    edit(checkpoint["classifier"]["config"])
    path = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # still a clean weights_only file
    return path


def _touch(marker: Path) -> dict:
    # A callable that leaves a trace when called: pathlib.Path.touch(self=marker).
    return {"_target_": "pathlib.Path.touch", "self": str(marker)}


@pytest.mark.parametrize(
    "section, edit, refused",
    [
        (
            "data",
            lambda cfg, marker: cfg.update(data=_touch(marker)),
            "data: its _target_ 'pathlib.Path.touch'",
        ),
        (
            "model",
            lambda cfg, marker: cfg["model"].update(_target_="pathlib.Path.touch", self=str(marker)),
            "model",
        ),
        (
            "module",
            lambda cfg, marker: cfg.update(
                module={"_target_": "torch.load", "f": str(marker), "weights_only": False}
            ),
            "module: its _target_ 'torch.load'",
        ),
        (
            "nested",
            lambda cfg, marker: cfg["data"].update(on_bad_image=_touch(marker)),
            "on_bad_image._target_",
        ),
        ("partial", lambda cfg, marker: cfg["model"].update(_partial_=True), "model: it asks for _partial_"),
    ],
)
def test_a_checkpoint_cannot_make_eval_call_other_code(small_digits_run, tmp_path, section, edit, refused):
    marker = tmp_path / "code-ran"
    path = tampered_checkpoint(small_digits_run, tmp_path, lambda cfg: edit(cfg, marker))
    with pytest.raises(UserError, match="refused to rebuild the checkpoint's") as error:
        load_run(str(path))
    assert refused in str(error.value)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_an_untampered_checkpoint_still_rebuilds(small_digits_run):
    run_dir, _ = small_digits_run
    module, datamodule = load_run(str(run_dir / "checkpoints" / "best.ckpt"))
    assert module.class_names == [str(d) for d in range(10)] and datamodule.num_classes == 10


# -- files a run writes ------------------------------------------------------------------------


def _recording(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(self)
        return method(self, *args, **kwargs)

    return wrapper


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomically_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomically(b"{}", tmp_path / "metrics.json")
        ordinary = tmp_path / "ordinary.txt"
        ordinary.write_text("x")
    finally:
        os.umask(old)
    assert (
        (tmp_path / "metrics.json").stat().st_mode & 0o777
        == ordinary.stat().st_mode & 0o777
        == 0o666 & ~umask
    )


@pytest.mark.long
def test_the_tensorboard_events_hold_the_confusion_matrix_when_train_returns(
    compose_train, tmp_path, monkeypatch
):
    # An event file is complete once its writer is closed; one left open loses what its background
    # thread has not written yet when the process exits (an 88-byte file without the figure).
    opened, closed = [], []
    monkeypatch.setattr(FileWriter, "__init__", _recording(FileWriter.__init__, opened))
    monkeypatch.setattr(FileWriter, "close", _recording(FileWriter.close, closed))
    train(compose_train(*SHORT[:-1], "trainer.max_epochs=1"))
    assert opened and len(closed) >= len(opened)
    (events_dir,) = (tmp_path / "run" / "tensorboard").iterdir()  # the run's folder, named for TensorBoard
    events = EventAccumulator(str(events_dir), size_guidance={"images": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    # The HPARAMS tab: the run's hyperparameters, and the metrics to compare runs by, each a scalar
    plugin_data = [HParamsPluginData.FromString(c) for c in events.PluginTagToContent("hparams").values()]
    start = next(d.session_start_info for d in plugin_data if d.HasField("session_start_info"))
    assert start.hparams["model/name"].string_value == "scratch_cnn"
    assert start.hparams["optimizer/lr"].number_value == pytest.approx(1e-3)
    experiment = next(d.experiment for d in plugin_data if d.HasField("experiment"))
    declared = [info.name.tag for info in experiment.metric_infos]
    assert declared == ["val/top1", "val/ece", "test/top1"]
    assert set(declared) <= set(events.Tags()["scalars"])


def test_debug_fdr_writes_no_reports_and_leaves_other_libraries_at_warning(compose_train, tmp_path):
    cfg = compose_train("debug=fdr")
    assert train(cfg) == {}
    run_dir = tmp_path / "run"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints" / "last.ckpt").exists()
    with hydra_job_logging(cfg):  # what `python train.py debug=fdr` logs under
        assert logging.getLogger("matplotlib.font_manager").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("PIL.PngImagePlugin").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("classifier.data.base").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("lightning.pytorch.trainer").getEffectiveLevel() == logging.INFO


# -- the run directory -------------------------------------------------------------------------


@pytest.mark.long
def test_a_second_run_in_a_busy_run_dir_is_refused(compose_train, tmp_path):
    with run_dir_lock(tmp_path / "run"), pytest.raises(UserError, match="is in use by another run \\(pid "):
        train(compose_train(*SHORT, "trainer.max_epochs=1"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    train(compose_train(*SHORT, "trainer.max_epochs=1"))  # free again once the holder is gone
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.process  # the holder is a python -c, killed as kill -9 would
def test_a_run_dir_held_by_a_killed_run_is_free_again(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from classifier.run.directory import run_dir_lock\n"
            "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        in_use = f"is in use by another run \\(pid {holder.pid}\\)"
        with pytest.raises(UserError, match=in_use), run_dir_lock(run_dir):
            pass
        with pytest.raises(UserError, match=in_use):  # the refused attempt left the holder's pid readable
            refuse_if_in_use(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert (run_dir / ".lock").read_text() == f"{holder.pid}\n"  # what the dead holder left
    refuse_if_in_use(run_dir)  # the kernel released its lock: nothing to clean up by hand
    with run_dir_lock(run_dir):
        assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"


def test_an_unwritable_checkpoint_folder_fails_before_training(compose_train, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where a folder should be: fails for root too, unlike chmod
    cfg = compose_train(
        *SHORT,
        f"callbacks.model_checkpoint.dirpath={blocker}/checkpoints",
        f"callbacks.last_checkpoint.dirpath={blocker}/checkpoints",
    )
    with pytest.raises(UserError, match=f"cannot write checkpoints to {blocker}/checkpoints"):
        train(cfg)
    assert not (tmp_path / "run" / "csv" / "metrics.csv").exists()  # no epoch ran


@pytest.fixture(scope="module")
def finished_short_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("short_run") / "run"
    train(compose_config("train", run_dir, [*SHORT, "trainer.max_epochs=2"]))
    GlobalHydra.instance().clear()
    return run_dir


@pytest.fixture
def short_run(finished_short_run, tmp_path) -> Path:
    """A finished 2-epoch run (trained once per module), copied to this test's run directory."""
    shutil.copytree(finished_short_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.long  # finished_short_run trains 2 epochs; its users are all long
def test_an_unreadable_last_checkpoint_says_what_to_do(compose_train, short_run):
    last = short_run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(UserError) as error:
        train(compose_train(*SHORT, "trainer.max_epochs=3"))
    message = str(error.value)
    assert message.startswith(f"{last} is not a readable checkpoint")
    assert "resume=false" in message and f"ckpt_path={short_run / 'checkpoints' / 'best.ckpt'}" in message

    torch.save({"state_dict": {}}, last)  # a foreign checkpoint
    with pytest.raises(UserError, match="not a checkpoint written by train.py.*resume=false"):
        train(compose_train(*SHORT, "trainer.max_epochs=3"))

    train(compose_train(*SHORT, "trainer.max_epochs=1", "resume=false"))  # the way out it names
    assert last_checkpoint(short_run)["global_step"] == 4


@pytest.mark.long  # a finished 2-epoch run (finished_short_run) to refuse
def test_rerunning_a_run_dir_with_other_data_or_model_is_refused(compose_train, short_run, tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 6, "val": 2})
    other_data = ["data=imagefolder", f"data.root={root}", "data.img_size=32", "data.num_workers=0"]
    with pytest.raises(
        UserError, match="holds a run on other data \\(10 classes: 0, 1, 2, 3, 4, ...; this run"
    ):
        train(compose_train(*SHORT, *other_data, "trainer.max_epochs=3"))
    with pytest.raises(UserError, match="holds a run of another model configuration"):
        train(compose_train(*SHORT, "model.width=16", "trainer.max_epochs=3"))


@pytest.mark.long
def test_a_moved_run_dir_keeps_its_best_checkpoint_record(compose_train, short_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(short_run, moved)
    train(compose_train(*SHORT, "trainer.max_epochs=3", output_dir=moved))
    state = next(v for k, v in last_checkpoint(moved)["callbacks"].items() if "val/top1" in k)
    assert state["dirpath"] == str(moved / "checkpoints")
    assert state["best_model_path"] == str(moved / "checkpoints" / "best.ckpt")
    assert list(state["best_k_models"]) == [str(moved / "checkpoints" / "best.ckpt")]
    best = torch.load(moved / "checkpoints" / "best.ckpt", weights_only=True)
    assert float(state["best_model_score"]) == pytest.approx(
        float(best["state_dict"]["val_top1_best.max_value"])
    )


def _checkpoint_state(dirpath: Path, score: float) -> dict:
    best = str(dirpath / "best.ckpt")
    return {
        "monitor": "val/top1",
        "best_model_score": torch.tensor(score),
        "best_model_path": best,
        "current_score": torch.tensor(score),
        "dirpath": str(dirpath),
        "best_k_models": {best: torch.tensor(score)},
        "kth_best_model_path": best,
        "kth_value": torch.tensor(score),
        "last_model_path": "",
    }


def test_the_best_score_survives_a_copied_run_dir_and_a_worse_epoch_does_not_replace_it(tmp_path):
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=bool))
    copy = tmp_path / "copy" / "checkpoints"
    copy.mkdir(parents=True)
    (copy / "best.ckpt").write_bytes(b"")
    callback = RunCheckpoint(dirpath=str(copy), filename="best", monitor="val/top1", mode="max")
    callback.load_state_dict(_checkpoint_state(tmp_path / "original" / "checkpoints", 0.9))
    assert callback.best_model_path == str(copy / "best.ckpt")
    assert float(callback.best_model_score) == pytest.approx(0.9)
    assert not callback.check_monitor_top_k(trainer, torch.tensor(0.5))  # worse: best.ckpt stays
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.95))


def test_a_deleted_best_checkpoint_is_reported_and_the_record_restarts(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    callback = RunCheckpoint(dirpath=str(folder), filename="best", monitor="val/top1", mode="max")
    with caplog.at_level(logging.WARNING, logger="classifier"):
        callback.load_state_dict(_checkpoint_state(folder, 0.9))
    assert f"{folder / 'best.ckpt'} (val/top1=0.9000) is missing" in caplog.text
    assert callback.best_model_score is None and callback.best_k_models == {}


# -- interrupts --------------------------------------------------------------------------------


@pytest.fixture
def restore_sigint():
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT once it handled Ctrl-C
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize(
    "how, status", [("sigterm", SIGTERM_EXIT), ("ctrl-c", CTRL_C_EXIT), ("sigusr1", SIGUSR1_EXIT)]
)
@pytest.mark.long  # a run and its resume, 3 ways
def test_an_interrupt_saves_last_ckpt_mid_epoch_and_the_same_command_resumes(
    compose_train, tmp_path, restore_sigint, how, status
):
    run_dir = tmp_path / "run"
    stop = [
        "+callbacks.stop._target_=test_trust.StopAt",
        "+callbacks.stop.epoch=1",
        "+callbacks.stop.batch=2",
    ]
    with pytest.raises(RunInterrupted) as stopped:
        # Stop after the 3rd batch of the 2nd epoch: 4 + 3 optimizer steps done.
        train(compose_train(*SHORT, "trainer.max_epochs=3", *stop, f"+callbacks.stop.how={how}"))
    message = str(stopped.value)
    assert stopped.value.exit_status == status
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"saved {last} (epoch 2/3, 3 of its 4 batches done, global step 7)" in message
    assert message.endswith(f"hydra.run.dir={run_dir}")
    if how == "sigusr1":
        assert message.startswith("stopped by SIGUSR1: ") and "not under SLURM: not requeued" in message
    saved = last_checkpoint(run_dir)
    assert (saved["epoch"], saved["global_step"]) == (1, 7)

    metrics = train(compose_train(*SHORT, "trainer.max_epochs=3"))
    final = last_checkpoint(run_dir)
    assert (final["epoch"], final["global_step"]) == (2, 12)  # the remaining 1 + 4 steps, no more
    assert metrics["val/top1"] > 0


def test_sigusr1_under_slurm_saves_last_ckpt_and_requeues_the_job(compose_train, tmp_path, monkeypatch):
    # A stand-in scontrol on PATH records how it was called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    stop = [
        "+callbacks.stop._target_=test_trust.StopAt",
        "+callbacks.stop.epoch=0",
        "+callbacks.stop.batch=1",
    ]
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_train(*SHORT, "trainer.max_epochs=2", *stop, "+callbacks.stop.how=sigusr1"))
    assert stopped.value.exit_status == SIGUSR1_EXIT
    assert "SLURM job 4242 requeued" in str(stopped.value)
    assert (tmp_path / "scontrol.args").read_text().strip() == "requeue 4242"
    assert (last_checkpoint(tmp_path / "run")["global_step"]) == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # put back after training


def test_submitit_s_sigusr2_stops_training_then_goes_to_submitit_s_handler(compose_train, tmp_path):
    # What submitit installs in a job of hydra/launcher=slurm: its requeue handler on SIGUSR2.
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        stop = ["+callbacks.stop._target_=test_trust.StopAt", "+callbacks.stop.epoch=0"]
        with pytest.raises(RunInterrupted) as stopped:
            train(
                compose_train(
                    *SHORT,
                    "trainer.max_epochs=2",
                    *stop,
                    "+callbacks.stop.batch=1",
                    "+callbacks.stop.how=sigusr2",
                )
            )
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # put back after training
    finally:
        signal.signal(signal.SIGUSR2, previous)
    message = str(stopped.value)
    assert (
        message.startswith("stopped by SIGUSR2: saved ")
        and "handed to the previous SIGUSR2 handler" in message
    )
    assert stopped.value.exit_status == 128 + signal.SIGUSR2
    assert calls == [signal.SIGUSR2]  # after last.ckpt was written, once
    assert last_checkpoint(tmp_path / "run")["global_step"] == 2


@pytest.mark.long
def test_the_progress_bar_shows_a_short_set_and_each_epoch_gets_a_summary_line(compose_train, caplog):
    trainer = SimpleNamespace(
        progress_bar_metrics={
            "train/loss": 0.5,
            "train/top1": 0.8,
            "val/top1": 0.7,
            "val/ece": 0.1,
            "val/loss": 1,
        }
    )
    # train/* there are the last epoch's; the bar's loss is this epoch's running mean (test_train.py)
    assert CompactProgressBar().get_metrics(trainer, None) == {"val_acc": 0.7}
    with caplog.at_level(logging.INFO, logger="classifier"):
        train(compose_train(*SHORT, "trainer.max_epochs=2"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(" ", 2)[1] for line in lines] == ["1/2", "2/2"]
    for key in ("train/loss=", "train/top1=", "val/loss=", "val/top1=", "val/top5=", "val/ece=", "images/s"):
        assert key in lines[-1]


def test_lightning_adverts_are_dropped_and_its_other_lines_kept():
    def record(name, message):
        return logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)

    advert = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
    assert not DropAdverts().filter(record("lightning.pytorch.utilities.rank_zero", advert))
    assert DropAdverts().filter(record("lightning.pytorch.utilities.rank_zero", "GPU available: False"))


# -- one line for bad trainer / optimizer values -----------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 and trainer.max_steps=-1 train without end"),
        ("trainer.max_epochs=-2", "trainer: `max_epochs` must be a non-negative integer or -1"),
        ("optimizer.lr=-1", "optimizer: Invalid learning rate: -1"),
        ("trainer.precision=17", "trainer: Precision 17 is invalid"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt does not exist"),
    ],
)
def test_bad_trainer_and_optimizer_values_end_in_one_line(compose_train, override, message):
    with pytest.raises(UserError) as error:
        train(compose_train(*SHORT, override))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_an_unreadable_ckpt_path_is_one_line(compose_train, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(
        UserError, match=f"ckpt_path={text} is not a readable checkpoint: not a torch.save archive"
    ):
        train(compose_train(*SHORT, f"ckpt_path={text}"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_gpu_without_a_gpu_suggests_trainer_cpu(compose_train):
    with pytest.raises(UserError, match="no GPU on this machine: use trainer=cpu"):
        train(compose_train(*SHORT, "trainer=gpu", "trainer.accelerator=gpu"))


# -- paths as typed ----------------------------------------------------------------------------


def test_a_leading_tilde_in_override_values_is_expanded_before_hydra_parses_them(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ada")
    argv = ["train.py", "data.root=~/photos", "-m", "data.csv=~/a.csv,~/b.csv", "~data.x", "name=a~b", "x=~"]
    expand_home_in_argv(argv)
    assert argv == [
        "train.py",
        "data.root=/home/ada/photos",
        "-m",
        "data.csv=/home/ada/a.csv,/home/ada/b.csv",
        "~data.x",  # Hydra's delete syntax, untouched
        "name=a~b",
        "x=/home/ada",
    ]


def test_model_weights_and_ckpt_path_expand_home_and_variables(small_digits_run, tmp_path, monkeypatch):
    run_dir, _ = small_digits_run
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WEIGHTS", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    torch.save({"weight": torch.ones(2, 2)}, tmp_path / "w" / "net.pth")
    assert read_state_dict("$WEIGHTS/net.pth")["weight"].sum() == 4
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", tmp_path / "best.ckpt")
    assert load_checkpoint("~/best.ckpt")["classifier"]["class_names"][0] == "0"
