"""Sweeps: a multirun's summary (every job, failed ones included, sorted by optimized_metric), its
rebuild from disk, and k-fold cross-validation folds with their mean ± std."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, ready
from omegaconf import OmegaConf

from classifier.data import DigitsDataModule
from classifier.data.splits import targets_of
from classifier.errors import UserError
from classifier.run.sweeps import SUMMARY_CSV, SUMMARY_MD, main, summarize, write_summary

sys.path.insert(0, str(REPO))  # hydra_plugins/ at the repository root, as train.py finds it
from hydra_plugins.classifier_optuna_sweeper.optuna_sweeper import search_space  # noqa: E402


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def multirun(cwd, *overrides: str) -> subprocess.CompletedProcess:
    """`python train.py -m OVERRIDES` run from `cwd` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def the_sweep(cwd):
    """The one sweep folder a multirun from `cwd` wrote."""
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep


@pytest.mark.process
@pytest.mark.slow  # a sweep of 4 jobs in another process
def test_a_2x2_multirun_summarises_every_job_and_a_failed_one_does_not_stop_the_sweep(tmp_path):
    result = multirun(
        tmp_path,
        "seed=1,2",
        "optimizer.lr=3e-3,-1",  # -1: torch refuses it, in the two jobs that have it
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.width=8",
        "logger=none",
        "trainer.enable_model_summary=false",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert "job 1 failed: optimizer: Invalid learning rate: -1" in output  # Hydra's last line
    sweep = the_sweep(tmp_path)
    rows = read_rows(sweep / SUMMARY_CSV)
    assert [(r["seed"], r["optimizer.lr"], r["status"]) for r in rows[2:]] == [
        ("1", "-1", "failed"),
        ("2", "-1", "failed"),
    ]
    completed = rows[:2]
    assert {(r["seed"], r["optimizer.lr"]) for r in completed} == {("1", "0.003"), ("2", "0.003")}
    for row in completed:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["val/top1"]) == pytest.approx(metrics["val/top1"], rel=1e-5)
        assert row["best_epoch"] == "1" and float(row["seconds"]) > 0 and row["error"] == ""
    assert float(completed[0]["val/top1"]) >= float(completed[1]["val/top1"])  # best first
    assert all(r["error"] == "optimizer: Invalid learning rate: -1" for r in rows[2:])
    assert "trainer.max_epochs=1" in rows[0]["overrides"] and "trainer.max_epochs" not in rows[0]
    markdown = (sweep / SUMMARY_MD).read_text()
    assert "4 jobs, 2 not completed; sorted by val/top1" in markdown and "## Errors" in markdown

    # rebuilt from the job folders alone
    (sweep / SUMMARY_CSV).unlink()
    (sweep / SUMMARY_MD).unlink()
    assert main([str(sweep)]) == 0
    assert read_rows(sweep / SUMMARY_CSV) == rows and (sweep / SUMMARY_MD).read_text() == markdown


def fake_job(sweep, number, overrides, metrics, status="completed", error=None):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    record = {"job": str(number), "status": status, "error": error, "seconds": 1.0, "overrides": overrides}
    record["optimized_metric"] = "val/loss"
    (job / "job.json").write_text(json.dumps(record))


def test_fold_settings_get_mean_and_std_and_a_loss_sorts_lowest_first(tmp_path):
    sweep = tmp_path / "sweep"
    losses = {("a", 0): 0.5, ("a", 1): 0.7, ("a", 2): 0.6, ("b", 0): 0.4, ("b", 1): 0.2}
    for number, ((model, fold), loss) in enumerate(losses.items()):
        overrides = [f"model.name={model}", "data.folds=3", f"data.fold={fold}", "hydra.verbose=true"]
        fake_job(sweep, number, overrides, {"val/loss": loss, "val/top1": 1 - loss})
    fake_job(sweep, 5, ["model.name=b", "data.folds=3", "data.fold=2"], None, "failed", "out of memory")
    rows, metric = summarize(sweep)
    assert metric == "val/loss"
    assert [row["metrics"].get("val/loss") for row in rows] == [0.2, 0.4, 0.5, 0.6, 0.7, None]
    assert "hydra.verbose" not in rows[0]["overrides"]
    markdown = write_summary(sweep)
    a = [0.5, 0.7, 0.6]  # model a's val/loss over its 3 folds; val/top1 is 1 - loss
    mean, spread = statistics.mean(a), statistics.stdev(a)
    assert "| setting | folds | val/top1 | val/loss |" in markdown
    assert f"| model.name=a | 3 | {1 - mean:.4f} ± {spread:.4f} | {mean:.4f} ± {spread:.4f} |" in markdown
    assert "| model.name=b | 2 | 0.7000 ± 0.1414 | 0.3000 ± 0.1414 |" in markdown  # the failed fold left out
    assert "- job 5: out of memory" in markdown
    assert "sorted by val/loss (lower is better)" in markdown


def pool_and_val(**kwargs):
    datamodule = ready(DigitsDataModule(num_workers=0, **kwargs))
    return datamodule, np.asarray(targets_of(datamodule.dataset("val")))


def test_folds_partition_train_and_val_stratified_and_seeded():
    plain = ready(DigitsDataModule(num_workers=0))
    pool = len(plain.dataset("train")) + len(plain.dataset("val"))
    vals = []
    for fold in range(5):
        datamodule, labels = pool_and_val(folds=5, fold=fold)
        train, val = datamodule.dataset("train"), datamodule.dataset("val")
        assert len(train) + len(val) == pool and abs(len(val) - pool / 5) <= 1
        assert not set(train.indices) & set(val.indices)
        assert datamodule.dataset("test") is not None and len(datamodule.dataset("test")) == 360
        counts = np.bincount(labels, minlength=10) / len(labels)
        overall = np.bincount(targets_of(train.dataset), minlength=10) / pool
        assert np.abs(counts - overall).max() < 0.01  # stratified
        vals.append(set(val.indices))
    assert set().union(*vals) == set(range(pool)) and sum(map(len, vals)) == pool  # a partition
    assert set(pool_and_val(folds=5, fold=2)[0].dataset("val").indices) == vals[2]  # the same again
    assert set(pool_and_val(folds=5, fold=2, split_seed=1)[0].dataset("val").indices) != vals[2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"folds": 5}, r"data.folds=5 needs data.fold=i \(0..4\); every fold: -m 'data.fold=range\(5\)'"),
        ({"fold": 1}, r"data.fold=1 needs data.folds=K"),
        ({"folds": 1, "fold": 0}, r"data.folds=1 must be 2 or more"),
        ({"folds": 3, "fold": 3}, r"data.fold=3 must be in 0..2 \(data.folds=3\)"),
        ({"folds": "five", "fold": 0}, r"data.folds='five' is not an integer"),
    ],
)
def test_fold_mistakes_are_one_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        DigitsDataModule(**kwargs)


def test_the_optuna_search_space_reads_hydras_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions, fixed = search_space(
        [
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "data.batch_size=choice(32, 64, 128)",
            "augment.magnitude=range(0, 11, 2)",
            "model.drop_rate=interval(0.0, 0.5)",
            "trainer.max_epochs=3",
            "trainer.max_epochs=range(1, 4)",  # a command-line sweep replaces a fixed value
        ]
    )
    assert distributions["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert distributions["data.batch_size"] == CategoricalDistribution([32, 64, 128])
    assert distributions["augment.magnitude"] == IntDistribution(0, 10, step=2)
    assert distributions["model.drop_rate"] == FloatDistribution(0.0, 0.5)
    assert distributions["trainer.max_epochs"] == IntDistribution(1, 3)
    assert fixed == {}
    assert search_space(["seed=7"]) == ({}, {"seed": "7"})


@pytest.mark.process
@pytest.mark.slow  # two sweeps in other processes
def test_a_3_trial_optuna_study_reports_its_best_trial_and_resumes_from_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={storage}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.width=8",
        "logger=none",
        "trainer.enable_model_summary=false",
    ]

    def sweep(trials: int, folder: str):
        result = multirun(tmp_path, *common, f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={folder}")
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return result.stdout + result.stderr

    sweep(3, "first")
    results = OmegaConf.load(tmp_path / "first" / "optimization_results.yaml")
    rows = read_rows(tmp_path / "first" / SUMMARY_CSV)
    assert len(rows) == 3 and results.trials.finished == 3
    completed = [row for row in rows if row["status"] == "completed"]
    assert results.best_value == pytest.approx(max(float(row["val/top1"]) for row in completed), abs=1e-6)
    best = next(row for row in rows if row["job"] == str(results.best_trial))
    assert float(best["optimizer.lr"]) == pytest.approx(results.best_params["optimizer.lr"])
    for row in rows:  # each trial drew its values from the search space
        assert (
            1e-4 <= float(row["optimizer.lr"]) <= 1e-2 and 1e-5 <= float(row["optimizer.weight_decay"]) <= 0.1
        )
        assert int(row["data.batch_size"]) in (32, 64, 128) and int(row["augment.magnitude"]) in range(
            0, 11, 2
        )

    output = sweep(4, "again")  # the same study: one trial to go
    assert "3 of 4 trials already finished" in output
    assert [row["job"] for row in read_rows(tmp_path / "again" / SUMMARY_CSV)] == ["3"]
    assert OmegaConf.load(tmp_path / "again" / "optimization_results.yaml").trials.finished == 4


def test_the_slurm_launcher_and_trainer_configs_fit_together(tmp_path):
    from conftest import compose_config

    cfg = compose_config(
        "train",
        tmp_path,
        [
            "hydra/launcher=slurm",
            "trainer=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=4",
        ],
        quiet=False,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node) == ("gpu", 2, 4)
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout == 5
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)


@pytest.mark.process  # the lock's holder is a python -c
def test_jobs_side_by_side_claim_different_gpus_and_free_them(tmp_path):
    from classifier.engine.devices import claim_gpu

    # another process holds GPU 0, as a parallel job of the sweep would
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(60)",
            str(tmp_path / "gpu0.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with claim_gpu(tmp_path, 3) as first, claim_gpu(tmp_path, 3) as second:
            assert (first, second) == (1, 2)
            with pytest.raises(TimeoutError, match="no free GPU of 3"), claim_gpu(tmp_path, 3, timeout=0):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_gpu(tmp_path, 3) as again:  # the killed job's GPU is free
        assert again == 0


def test_one_gpu_per_job_applies_to_single_device_jobs_on_several_gpus(compose_train, monkeypatch):
    import torch

    from classifier.engine.devices import sweep_job_device, wants_one_gpu

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert wants_one_gpu(compose_train("trainer.accelerator=auto"))
    assert not wants_one_gpu(compose_train("trainer.accelerator=auto", "trainer.devices=2"))
    assert not wants_one_gpu(compose_train("trainer.accelerator=auto", "one_gpu_per_job=false"))
    assert not wants_one_gpu(compose_train("trainer.accelerator=cpu"))
    cfg = compose_train("trainer.accelerator=gpu")
    with sweep_job_device(cfg, compose_train().paths.output_dir):
        assert list(cfg.trainer.devices) == [0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert not wants_one_gpu(compose_train("trainer.accelerator=gpu"))


@pytest.mark.process
@pytest.mark.slow  # sweeps whose jobs run in processes of their own
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_launcher_runs_jobs_in_their_own_processes_and_folders(tmp_path, launcher):
    result = multirun(
        tmp_path,
        f"hydra/launcher={launcher}",
        *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []),
        "seed=1,2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.width=8",
        "logger=none",
        "measure_cpu_speed=false",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sweep = the_sweep(tmp_path)
    rows = read_rows(sweep / SUMMARY_CSV)
    assert sorted(r["seed"] for r in rows) == ["1", "2"] and {r["status"] for r in rows} == {"completed"}
    pids = set()
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert "reports written to" in log and (sweep / job / "checkpoints" / "best.ckpt").is_file()
        pids.add(json.loads((sweep / job / "job.json").read_text())["pid"])
    assert len(pids) == 2 and os.getpid() not in pids  # neither job ran in the sweep's own process


@pytest.mark.process
@pytest.mark.slow  # a CNN and a ViT, a few steps each, in another process
def test_the_cnn_vs_vit_study_trains_both_under_one_recipe_and_prints_their_table(tmp_path):
    from conftest import write_cifar_batches

    write_cifar_batches(tmp_path / "cifar", "cifar10")
    result = multirun(
        tmp_path,
        "experiment=cnn_vs_vit",
        f"data.root={tmp_path / 'cifar'}",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=none",
        "measure_cpu_speed=false",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sweep = the_sweep(tmp_path)
    rows = {row["model"]: row for row in read_rows(sweep / SUMMARY_CSV)}
    assert set(rows) == {"resnet18_cifar", "vit_cifar"}
    assert int(rows["resnet18_cifar"]["parameters"]) == 11_173_962  # with the CIFAR stem
    assert int(rows["vit_cifar"]["parameters"]) == 12_470_026  # 7 x 384, patch 4
    for model, row in rows.items():  # the same recipe for both
        config = OmegaConf.load(sweep / row["job"] / ".hydra" / "config.yaml")
        assert (config.optimizer.lr, config.augment.policy, config.module.label_smoothing) == (
            1e-3,
            "randaugment",
            0.1,
        )
        assert row["status"] == "completed" and 0 <= float(row["test/top1"]) <= 1, model
    assert "| job | status | model | best epoch | params (M) |" in result.stdout  # the table, printed
