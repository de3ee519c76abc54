"""The root scripts as users type them in bash: one readable error line for mistakes, answers to
--help and typos before the heavy imports, a multirun with no extra flag, files in the run dir.
(SIGTERM and kill -9 on the command line: test_resume.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import CONF_DIR, REPO, write_image_folder

# Each test here starts Python processes (~9 s each once torch is imported).
pytestmark = [pytest.mark.slow, pytest.mark.process]

QUIET = ["trainer.accelerator=cpu", "trainer.enable_model_summary=false"]


def run_script(
    *args: str, cwd=REPO, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_a_mistake_ends_in_one_error_line_and_no_traceback(tmp_path):
    result = run_script(
        "train.py", "data=imagefolder", "data.root=/no/such/photos", f"hydra.run.dir={tmp_path}"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert errors[0].endswith("data.root=/no/such/photos does not exist (looked for /no/such/photos)")
    assert "does not exist" in (tmp_path / "train.log").read_text()  # the run's log keeps it too


def test_help_and_typos_are_answered_before_torch_is_imported(tmp_path):
    # -X importtime lists every module imported; the heavy ones must not be among them.
    for args in (["--help"], ["modle=resnet18"], ["model=resnet"]):
        result = run_script("-X", "importtime", "train.py", *args)
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "lightning", "timm", "matplotlib"}, args
        assert result.returncode == (0 if args == ["--help"] else 1), args
    output = result.stdout + "\n".join(line for line in result.stderr.splitlines() if "|" not in line)
    options = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
    assert output.strip() == (
        "[ERROR] model=resnet: the model group has no option 'resnet'; did you mean model=resnet18 or"
        f" model=resnet50? model options: {options}"
    )
    # a missing checkpoint is refused before eval.py's task imports torch
    result = run_script("-X", "importtime", "eval.py", "ckpt_path=/no/best.ckpt", f"hydra.run.dir={tmp_path}")
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "lightning", "timm", "matplotlib"}
    assert result.returncode == 1
    assert (
        "ckpt_path=/no/best.ckpt does not exist (looked for /no/best.ckpt)" in result.stdout + result.stderr
    )


def test_the_readme_multirun_and_eval_work_as_typed_from_any_folder(tmp_path):
    """`python train.py -m ...` from a folder that is not the repository (sweep dirs relative to it),
    `data.root=~/photos` unquoted, then `python eval.py ckpt_path=...` into outputs/eval/, predict.py
    and export.py."""
    home = tmp_path / "home"
    write_image_folder(home / "photos", {"train": 6, "val": 2}, size=16)
    short = ["trainer.max_epochs=1", "data.num_workers=0", *QUIET]
    result = run_script(
        str(REPO / "train.py"),
        "-m",
        "seed=1,2",
        "data=imagefolder",
        "data.root=~/photos",
        *short,
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    seeds, weights = {}, {}
    for job in ("0", "1"):
        config = (sweep / job / ".hydra" / "config.yaml").read_text()
        seeds[job] = re.search(r"^seed: (\d+)$", config, re.M).group(1)
        assert 0 <= json.loads((sweep / job / "metrics.json").read_text())["val/top1"] <= 1
        checkpoint = torch.load(sweep / job / "checkpoints" / "best.ckpt", weights_only=True)
        weights[job] = checkpoint["state_dict"]["net.head.weight"]
        log = (sweep / job / "train.log").read_text()
        assert "data: 3 classes; train 18, val 6 images" in log and "epoch 1/1 (" in log
        assert "Tip:" not in log  # Lightning's adverts
        # both jobs run in one process: the second job's start-up counts from its own start
        assert ("after the process started" if job == "0" else "after the job started") in log
    assert seeds == {"0": "1", "1": "2"}
    assert not torch.equal(weights["0"], weights["1"])  # each job's seed reached its model

    result = run_script(
        str(REPO / "eval.py"),
        f"ckpt_path={sweep / '0' / 'checkpoints' / 'best.ckpt'}",
        *QUIET,
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (eval_dir,) = (tmp_path / "outputs" / "eval").glob("*/*")
    written = json.loads((eval_dir / "metrics.json").read_text())
    trained = json.loads((sweep / "0" / "metrics.json").read_text())
    assert abs(written["val/top1"] - trained["val/top1"]) < 1e-6
    assert (eval_dir / "report.txt").is_file() and (eval_dir / "confusion_matrix.png").is_file()

    # predict.py and export.py as the README types them: ~ and a glob in input=, output= beside you
    best = sweep / "0" / "checkpoints" / "best.ckpt"
    result = run_script(
        str(REPO / "predict.py"),
        f"ckpt_path={best}",
        "input=~/photos/val/**/*.png",
        "output=preds.csv",
        "top_k=5",
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,prob,top1_label,top1_prob,") and "top4_label" not in rows[0]
    assert len(rows) == 1 + 3  # one .png of the two images of each class
    result = run_script(
        str(REPO / "export.py"), f"ckpt_path={best}", "format=onnx", "quantize=int8", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (export_dir,) = (tmp_path / "outputs" / "export").glob("*/*")
    assert json.loads((export_dir / "model.json").read_text())["check"]["max_abs_difference"] < 1e-4
    assert (export_dir / "model.onnx").stat().st_size > 10_000
    int8 = json.loads((export_dir / "model.int8.json").read_text())["quantization"]
    assert int8["comparison"]["made"] and int8["comparison"]["split"] == "val"
    assert (export_dir / "model.int8.onnx").stat().st_size < (export_dir / "model.onnx").stat().st_size
    folders = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert folders == ["eval", "export", "multirun", "predict"]


def test_the_readme_probe_command_works_as_typed(tmp_path):
    """probe.py with a local weights file on data=cifar10 (data/ of the folder you run from) as the
    README types it. (Its cache reuse, and zeroshot.py on a local-dir: CLIP, run in-process in
    test_foundation.py; the README's zeroshot.py needs the hub.)"""
    from conftest import write_cifar_batches

    write_cifar_batches(tmp_path / "data")
    from classifier.models import create_model

    torch.save(create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "resnet18.pth")
    result = run_script(
        str(REPO / "probe.py"),
        "model=resnet18",
        "model.pretrained=false",
        "model.weights=resnet18.pth",
        "data=cifar10",
        "method=knn",
        cwd=tmp_path,
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "probe").glob("*/*")
    details = json.loads((run / "probe.json").read_text())
    assert details["images"] == {"train": 90, "val": 10, "test": 20}  # 5 files of 20, val_split 0.1
    assert details["backbone"] == "resnet18 (weights: resnet18.pth)" and details["k"] == 20
    assert set(json.loads((run / "metrics.json").read_text())) == {
        f"{split}/{name}" for split in ("val", "test") for name in ("top1", "top5", "ece")
    }
    assert len(list((tmp_path / "cache" / "classifier" / "features").glob("*.pt"))) == 3


def test_the_readme_audit_then_exclude_commands_work_as_typed(tmp_path):
    """audit.py on ~/photos with a train image copied into test (a leak), then train.py with
    data.exclude= the issues.csv it wrote, from a folder that is not the repository."""
    import shutil

    home = tmp_path / "home"
    photos = write_image_folder(home / "photos", {"train": 6, "val": 2, "test": 2}, size=16)
    shutil.copyfile(photos / "test/dog/000.png", photos / "train/dog/leak.png")
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run_script(
        str(REPO / "audit.py"), "data=imagefolder", "data.root=~/photos", "folds=2", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "audit").glob("*/*")
    assert {p.name for p in run.iterdir()} >= {
        "issues.csv",
        "audit.md",
        "audit.html",
        "audit.json",
        "audit.log",
    }
    rows = (run / "issues.csv").read_text().splitlines()
    leak = f"{photos}/train/dog/leak.png,leak,,,1.0,{photos}/test/dog/000.png"
    assert leak in rows
    issues = run.relative_to(tmp_path) / "issues.csv"
    assert f"python train.py data.exclude={run / 'issues.csv'}" in (run / "audit.log").read_text()
    result = run_script(
        str(REPO / "train.py"),
        "data=imagefolder",
        "data.root=~/photos",
        f"data.exclude={issues}",
        "trainer.max_epochs=1",
        "hydra.run.dir=outputs/clean",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    card = (tmp_path / "outputs/clean/model_card.yaml").read_text()
    assert re.search(r"excluded:\n(.*\n)*? +images:\n +train: \d+", card), card


def test_the_sweep_summary_command_as_typed_and_its_old_name(tmp_path):
    result = run_script("-m", "classifier.run.sweeps", str(tmp_path))
    assert result.returncode == 1
    assert (
        result.stdout.strip()
        == f"ERROR: {tmp_path} is not a sweep directory (no job folders with a .hydra/ inside)"
    )
    old = run_script("-m", "classifier.sweeps", str(tmp_path))
    assert old.returncode == 1 and "Traceback" not in old.stderr
    assert (
        old.stderr.strip() == "python -m classifier.sweeps is now: python -m classifier.run.sweeps SWEEP_DIR"
    )
