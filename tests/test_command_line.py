"""Mistakes on the command line refused in one line before torch loads: misspelt keys and group
options (with the closest valid names), words for numbers, missing values, folders that cannot be
written or are in use; and the one-line answers to a full disk, a checkpoint that holds code and more
CPU processes than cores. In-process: prepare_argv with an argv, as the root scripts call it."""

from __future__ import annotations

import errno
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO, compose_config

from classifier.cli import prepare_argv, run_task
from classifier.errors import UserError
from classifier.files import write_atomically
from classifier.preflight import check_before_loading
from classifier.run.directory import run_dir_lock


def refusal(config_name: str, *args: str) -> str:
    """The line prepare_argv exits with for `python <config_name>.py args` (fails when it passes)."""
    with pytest.raises(SystemExit) as exit_status:
        prepare_argv(config_name, CONF_DIR, [f"{config_name}.py", *args])
    return exit_status.value.code


def passes(config_name: str, *args: str) -> None:
    prepare_argv(config_name, CONF_DIR, [f"{config_name}.py", *args])


@pytest.mark.parametrize(
    ("config_name", "arg", "suggested"),
    [
        ("train", "modle=resnet18", "model= or module="),  # the group with a resnet18 option first
        ("train", "data.batch_sise=8", "data.batch_size="),
        ("train", "trainer.max_epoch=3", "trainer.max_epochs="),
        ("train", "max_epochs=3", "trainer.max_epochs="),  # a key without its section
        ("eval", "calibrat=true", "calibrate="),
        ("predict", "top_kk=3", "top_k="),
        ("export", "formt=onnx", "format="),
        ("probe", "methd=knn", "method="),
        ("zeroshot", "class_name=[a,b]", "class_names="),
        ("fewshot", "shot=[1]", "shots="),
        ("audit", "duplicate.min_cosine=0.9", "duplicates.min_cosine="),
    ],
)
def test_a_misspelt_key_is_one_line_naming_the_closest_keys(tmp_path, config_name, arg, suggested):
    required = {"eval": ["ckpt_path=x"], "export": ["ckpt_path=x"], "predict": ["input=x"]}
    args = [*required.get(config_name, []), arg, f"hydra.run.dir={tmp_path}"]
    key = arg.partition("=")[0]
    assert refusal(config_name, *args) == (
        f"[ERROR] {arg}: {config_name}.yaml has no key '{key}'; did you mean {suggested}?"
    )


def test_an_unknown_option_of_a_group_lists_the_options():
    options = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
    assert refusal("train", "model=resnet181") == (
        "[ERROR] model=resnet181: the model group has no option 'resnet181'; did you mean model=resnet18?"
        f" model options: {', '.join(options)}"
    )
    # every value of a sweep is checked before its first job starts
    line = refusal("train", "-m", "model=scratch_cnn,vit_bb", "seed=1,2")
    assert line.startswith("[ERROR] model=scratch_cnn,vit_bb: the model group has no option 'vit_bb'")
    assert "did you mean model=resnet18 or model=resnet50?" in refusal("train", "model=resnet")


def test_a_word_for_a_number_or_a_flag_names_the_key():
    assert refusal("train", "seed=abc") == "[ERROR] seed=abc: seed takes a whole number (conf: seed: 42)"
    assert (
        refusal("train", "-m", "seed=1,x") == "[ERROR] seed=1,x: seed takes a whole number (conf: seed: 42)"
    )
    assert (
        refusal("eval", "ckpt_path=x", "tta=yes")
        == "[ERROR] tta=yes: tta takes true or false (conf: tta: false)"
    )
    assert refusal("export", "ckpt_path=x", "tolerance=tight").startswith(
        "[ERROR] tolerance=tight: tolerance takes a number"
    )


def test_adding_a_key_that_exists_and_a_missing_value_are_one_line(tmp_path):
    assert refusal("train", "+seed=3") == (
        "[ERROR] +seed=3: train.yaml already has seed: write seed=3 (+ adds a key the config does not have)"
    )
    assert refusal("eval", f"hydra.run.dir={tmp_path}") == (
        "[ERROR] missing value for 'ckpt_path': set it on the command line, e.g. ckpt_path=..."
    )
    assert refusal("train", "data=imagefolder").startswith("[ERROR] missing value for 'data.root'")


@pytest.mark.parametrize(
    ("arg", "line"),
    [
        ("model.input_size=224", "model.input_size is now data.img_size: write data.img_size=224"),
        (
            "+model.open_clip.name=ViT-B-32",
            "model.open_clip.name is now clip.name: write +clip.name=ViT-B-32",
        ),
    ],
)
def test_a_renamed_key_answers_with_its_new_name(tmp_path, arg, line):
    assert refusal("train", "seed=1", arg) == f"[ERROR] {line}"
    passes("train", "data.img_size=24", "+clip.name=x", f"hydra.run.dir={tmp_path}")  # the new names pass


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "model=scratch_cnn,resnet18", "seed=range(3)", "callbacks=[default,ema]"],
        ["callbacks=[default,ema]", "callbacks.ema.decay=0.9", "~callbacks.lr_monitor", "seed=null"],
        ["++trainer.max_epochs=2", "+trainer.detect_anomaly_typo=true", "+optimizer.bettas=[0.9,0.99]"],
        ["-m", "hparams_search=optuna", "optimizer.lr=interval(0.001,0.1)", "experiment=digits_cpu"],
        ["model=timm", "model.name=resnet10t", "data=imagefolder", "data.root=~/photos", "trainer=ddp_cpu"],
        ["--help", "modle=resnet18"],  # Hydra answers --help itself
    ],
)
def test_hydra_syntax_that_is_right_passes(tmp_path, args):
    passes("train", *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert not (tmp_path / "run").exists()  # the check creates nothing: Hydra does


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder this process cannot write in, and the reason the refusal quotes: its permission bits,
    or, for root (whom they do not stop: CI), a read-only file system as the write test meets it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    reason = "Permission denied"
    if os.access(folder, os.W_OK):
        reason = os.strerror(errno.EROFS)
        make_temporary_folder = tempfile.mkdtemp

        def read_only_mkdtemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).is_relative_to(folder):
                raise OSError(errno.EROFS, reason)
            return make_temporary_folder(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", read_only_mkdtemp)
    yield folder, reason
    folder.chmod(0o755)


def test_a_run_or_sweep_dir_that_cannot_be_written_is_refused_before_hydra_creates_it(read_only_folder):
    read_only_folder, reason = read_only_folder
    run_dir = read_only_folder / "run"
    assert refusal("train", f"hydra.run.dir={run_dir}") == (
        f"[ERROR] hydra.run.dir={run_dir}: cannot write there ({read_only_folder}: {reason})"
    )
    sweep = read_only_folder / "sweep"
    assert refusal("train", "-m", "seed=1,2", f"hydra.sweep.dir={sweep}") == (
        f"[ERROR] hydra.sweep.dir={sweep}: cannot write there ({read_only_folder}: {reason})"
    )
    assert refusal("train", "hydra.run.dir=/etc/hostname/run") == (
        "[ERROR] hydra.run.dir=/etc/hostname/run: cannot write there, /etc/hostname is a file, not a folder"
    )


@pytest.mark.parametrize(
    ("task", "overrides"),
    [("predict", ["input=.", "output={folder}/preds.csv"]), ("export", ["output={folder}/model.onnx"])],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_task_loads(
    read_only_folder, tmp_path, caplog, task, overrides
):
    read_only_folder, reason = read_only_folder
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not read: the output is checked first")
    overrides = [o.format(folder=read_only_folder) for o in overrides]
    cfg = compose_config(task, tmp_path / "run", [f"ckpt_path={ckpt}", *overrides], quiet=False)
    with pytest.raises(SystemExit) as exit_status:
        run_task(task, cfg)
    assert exit_status.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{overrides[-1]}: cannot write there ({read_only_folder}: {reason})"]


def test_a_missing_checkpoint_or_input_is_refused_before_the_task_loads(tmp_path):
    for task, overrides, key, path in [
        ("eval", ["ckpt_path=/no/best.ckpt"], "ckpt_path", "/no/best.ckpt"),
        ("predict", ["model=resnet18", "input=/no/photos"], "input", "/no/photos"),
        ("export", [f"ckpt_path={tmp_path}/x.ckpt"], "ckpt_path", f"{tmp_path}/x.ckpt"),
    ]:
        cfg = compose_config(task, tmp_path / "run", overrides, quiet=False)
        with pytest.raises(UserError) as refused:
            check_before_loading(task, cfg)
        assert str(refused.value) == f"{key}={path} does not exist (looked for {path})"
    # as typed: before Hydra creates the run directory
    line = refusal("eval", "ckpt_path=/no/best.ckpt", f"hydra.run.dir={tmp_path / 'eval'}")
    assert line == "[ERROR] ckpt_path=/no/best.ckpt does not exist (looked for /no/best.ckpt)"
    assert not (tmp_path / "eval").exists()


def test_a_run_dir_in_use_is_refused_before_hydra_writes_into_it(tmp_path):
    run_dir = tmp_path / "run"
    with run_dir_lock(run_dir):
        line = refusal("train", f"hydra.run.dir={run_dir}")
    assert line == (
        f"[ERROR] hydra.run.dir={run_dir} is in use by another run (pid {os.getpid()}): wait for it to end,"
        " or give this run another directory"
    )
    passes("train", f"hydra.run.dir={run_dir}")  # free again once the lock is released


def test_a_full_disk_names_the_folder_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    write_atomically(b"epoch 1", path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("classifier.files.os.fsync", disk_full)
    with pytest.raises(UserError) as refused:
        write_atomically(b"epoch 2", path)
    assert str(refused.value) == (
        f"no space left on the disk of {path.parent} (No space left on device): last.ckpt was not written,"
        " the previous last.ckpt is intact; free some space there and run again"
    )
    assert path.read_bytes() == b"epoch 1"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    with pytest.raises(UserError, match="best.ckpt was not written, there was no best.ckpt before"):
        write_atomically(b"x", path.parent / "best.ckpt")


class Payload:
    """What a malicious checkpoint pickles: a call made while it is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_holds_code_is_refused_in_one_line_saying_so(tmp_path):
    import torch

    from classifier.engine.from_checkpoint import load_model
    from classifier.models.weights import read_state_dict

    marker, path = tmp_path / "code-ran", tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "classifier": Payload(marker)}, path)
    with pytest.raises(UserError) as refused:
        load_model(str(path))
    assert str(refused.value) == (
        f"ckpt_path={path} holds code (a pickled posix.system), so it was not loaded: ckpt_path takes a"
        " checkpoint written by train.py; weights from elsewhere go in as model.weights=PATH once re-saved"
        " as a state_dict: torch.save(model.state_dict(), PATH)"
    )
    with pytest.raises(
        UserError, match=r"^model.weights=.* holds code \(a pickled posix.system\), so it was not"
    ):
        read_state_dict(path)
    assert not marker.exists()


def test_more_cpu_processes_than_cores_is_a_warning(compose_train, monkeypatch, caplog):
    from classifier.engine import devices
    from classifier.engine.build import build_trainer

    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    build_trainer(compose_train("trainer=ddp_cpu", "trainer.devices=4", "logger=none"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "trainer.devices=4 starts 4 CPU processes on 2 cores: they share the cores and run slower than"
        " trainer.devices=2 would"
    ]
    caplog.clear()
    build_trainer(compose_train("trainer=ddp_cpu", "trainer.devices=2", "logger=none"))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def run_script(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The script's result and the CPU seconds it used: unlike its wall time, not stretched when the
    other test processes share the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result, cpu


@pytest.mark.process
def test_a_typo_as_typed_is_one_line_in_about_a_second():
    result, cpu_seconds = run_script("train.py", "modle=resnet18")
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr
        == "[ERROR] modle=resnet18: train.yaml has no key 'modle'; did you mean model= or module=?\n"
    )
    # About 1.6 s of CPU (2.5 s on Python 3.10 and the floors; Hydra composes the config); importing
    # torch and Lightning, which a typo must not wait for, costs more than 4.
    assert cpu_seconds < 4, cpu_seconds


@pytest.mark.process
def test_help_shows_usage_groups_examples_and_the_docs():
    result, _ = run_script("train.py", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[2].startswith("usage: python train.py [group=option ...] [key=value ...]")
    options = ", ".join(sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml")))
    assert f"model: {options}" in lines
    examples = [line for line in lines if line.startswith("python train.py")]
    assert len(examples) == 5 and "python train.py -m model=scratch_cnn,resnet18 seed=1,2" in examples[-1]
    assert "docs/configuration.md" in result.stdout and "--cfg job" in result.stdout
    assert len(lines) <= 40  # a screen, not the 200-line config dump
    for script in ("eval.py", "predict.py", "export.py", "probe.py", "zeroshot.py", "fewshot.py", "audit.py"):
        result, _ = run_script(script, "--help")
        lines = result.stdout.splitlines()
        assert result.returncode == 0 and len(lines) <= 40, script
        assert any(line.startswith(f"usage: python {script}") for line in lines), script
        assert len([line for line in lines if line.startswith(f"python {script}")]) == 5, script
