"""Sweeps: a multirun's summary (every job, failed and interrupted ones included, sorted by
optimized_metric; for people rounded, varying columns first, mean ± std over seeds and folds, a
console view of 100 columns), its rebuild from disk, k-fold folds, and the Optuna sweeper."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, ready
from hydra.types import RunMode
from omegaconf import OmegaConf

from classifier.data import DigitsDataModule
from classifier.data.splits import targets_of
from classifier.errors import UserError
from classifier.run.sweeps import (
    SUMMARY_CSV,
    SUMMARY_MD,
    SweepSummary,
    main,
    mean_and_std,
    shown_override,
    significant,
    summarize,
    write_summary,
)

sys.path.insert(0, str(REPO))  # hydra_plugins/ at the repository root, as train.py finds it
# Hydra's plugin scan executes the plugin's module again: its classes are read from it when used.
from hydra_plugins.classifier_optuna_sweeper import optuna_sweeper  # noqa: E402
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


# A job of a few batches on a narrow scratch_cnn, without the extras a sweep's tests do not read.
TINY_JOB = [
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.width=8",
    "logger=none",
    "measure_cpu_speed=false",
]


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


def fake_job(sweep, number, overrides, metrics, status="completed", error=None, optimized="val/loss"):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    record = {"job": str(number), "status": status, "error": error, "seconds": 1.0, "overrides": overrides}
    record["optimized_metric"] = optimized
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
    write_summary(sweep)
    markdown = (sweep / SUMMARY_MD).read_text()
    a = [0.5, 0.7, 0.6]  # model a's val/loss over its 3 folds; val/top1 is 1 - loss
    mean, spread = statistics.mean(a), statistics.stdev(a)
    assert "| setting | folds | val/top1 | val/loss |" in markdown
    assert f"| model.name=a | 3 | {1 - mean:.4f} ± {spread:.4f} | {mean:.4f} ± {spread:.4f} |" in markdown
    assert "| model.name=b | 2 | 0.7000 ± 0.1414 | 0.3000 ± 0.1414 |" in markdown  # the failed fold left out
    assert "- job 5: out of memory" in markdown
    assert "sorted by val/loss (lower is better)" in markdown


# An Optuna-drawn learning rate, as Hydra writes it into the job's overrides, and metrics of many digits.
LR = "0.004622589001020831"
SEED_SWEEP = {  # (lr, seed): val/top1; val/loss is 1 - val/top1, val/top5 is 1.0 in every job
    (LR, 1): 0.9583333333333334,
    (LR, 2): 0.9305555555555556,
    ("0.001", 1): 0.8993055555555556,
    ("0.001", 2): 0.9027777777777778,
}


def seed_sweep(sweep):
    for number, ((lr, seed), top1) in enumerate(SEED_SWEEP.items()):
        overrides = [f"optimizer.lr={lr}", f"seed={seed}", "trainer.max_epochs=2"]
        metrics = {"val/top1": top1, "val/top5": 1.0, "val/loss": 1 - top1}
        fake_job(sweep, number, overrides, metrics, optimized="val/top1")
    return sweep


def table_rows(markdown, header_start):
    """The rows of the markdown table whose header starts with `header_start`, as lists of cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


@pytest.mark.parametrize(
    "value, text",
    [
        (0.004622589001020831, "0.004623"),
        (0.95, "0.9500"),  # trailing zeros kept: a column's decimals line up
        (2.3038148880004883, "2.304"),
        (12345.6, "12346"),  # no 1.235e+04
        (1.23456e-05, "1.235e-05"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (None, ""),
    ],
)
def test_numbers_for_people_have_4_significant_digits(value, text):
    assert significant(value) == text


def test_override_values_and_means_as_people_read_them():
    assert [shown_override(v) for v in ("0.004622589001020831", "0.001", "1e-4", "resnet18", "128")] == [
        "0.004623",
        "0.001",
        "1e-4",
        "resnet18",
        "128",
    ]
    assert mean_and_std([0.9583333, 0.9305556]) == "0.9444 ± 0.0196"  # the std to the mean's decimals
    assert mean_and_std([0.75]) == "0.7500 ± 0.0000"


def test_people_read_4_significant_digits_varying_columns_first_and_programs_every_digit(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep")
    write_summary(sweep)
    markdown = (sweep / SUMMARY_MD).read_text()
    header, rule, *rows = table_rows(markdown, "| job |")
    assert header == ["job", "optimizer.lr", "seed", "val/top1", "val/loss", "seconds"][: len(header)]
    assert header[:5] == ["job", "optimizer.lr", "seed", "val/top1", "val/loss"]
    assert rows[0][:5] == ["0", "0.004623", "1", "0.9583", "0.04167"]  # best first
    assert [row[0] for row in rows] == ["0", "1", "3", "2"]
    assert rows[2][:5] == ["3", "0.001", "2", "0.9028", "0.09722"]  # a value as typed stays as typed
    assert "Same in every job: status completed, val/top5 1.000" in markdown
    assert "Every job: `trainer.max_epochs=2`" in markdown

    csv_rows = read_rows(sweep / SUMMARY_CSV)
    assert list(csv_rows[0])[:7] == [
        "job",
        "status",
        "optimizer.lr",
        "seed",
        "val/top1",
        "val/top5",
        "val/loss",
    ]
    assert csv_rows[0]["optimizer.lr"] == LR and float(csv_rows[0]["val/top1"]) == SEED_SWEEP[(LR, 1)]
    assert float(csv_rows[0]["val/loss"]) == 1 - SEED_SWEEP[(LR, 1)]  # every digit


def test_a_setting_repeated_over_seeds_gets_its_mean_and_std(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep")
    console = write_summary(sweep)
    markdown = (sweep / SUMMARY_MD).read_text()
    header, rule, *rows = table_rows(markdown, "| setting |")
    assert header == ["setting", "seeds", "val/top1", "val/loss"]  # val/top5 is the same everywhere
    top1 = [SEED_SWEEP[(LR, 1)], SEED_SWEEP[(LR, 2)]]
    spread = statistics.stdev(top1)
    assert rows[0] == [
        "optimizer.lr=0.004623",
        "2",
        f"{statistics.mean(top1):.4f} ± {spread:.4f}",
        f"{1 - statistics.mean(top1):.5f} ± {spread:.5f}",
    ]
    assert rows[1][:3] == ["optimizer.lr=0.001", "2", "0.9010 ± 0.0025"]  # 0.90104, stdev 0.00246
    lines = console.splitlines()
    at = lines.index("Mean ± std over seeds:")
    assert lines[at + 1].split() == ["setting", "seeds", "val/top1", "val/loss"]
    assert lines[at + 2].split()[:5] == [
        "optimizer.lr=0.004623",
        "2",
        f"{statistics.mean(top1):.4f}",
        "±",
        f"{spread:.4f}",
    ]


def test_the_console_view_keeps_the_varying_columns_that_fit_in_100_characters(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    splits = {
        f"{split}/{name}" for split in ("val", "test") for name in ("top1", "top5", "ece", "nll", "loss")
    }
    for number, (model, lr) in enumerate(
        [("resnet18", "0.01"), ("convnext_tiny", "0.003"), ("vit_small", "3e-4")]
    ):
        metrics = {key: 0.1 * (number + 1) + 0.01 * i for i, key in enumerate(sorted(splits))}
        overrides = [
            f"model.name={model}",
            f"optimizer.lr={lr}",
            "data.img_size=224",
            "trainer.max_epochs=90",
        ]
        fake_job(sweep, number, overrides, metrics, optimized="val/top1")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepSummary().on_multirun_end(config)  # what the end of a sweep prints
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = lines[lines.index("") + 1].split()
    # top-1 first, then loss and ECE, as many as fit; top-5 and NLL left out
    assert header == ["job", "model.name", "optimizer.lr", "val/top1", "val/ece", "val/loss"] + [
        "test/top1",
        "test/ece",
        "test/loss",
    ]
    assert lines[lines.index("") + 2].split()[:4] == ["2", "vit_small", "3e-4", "0.3800"]  # the best first
    assert (
        " ".join(printed.rsplit("\n\n", 1)[1].split())
        == f"4 more columns in {sweep / SUMMARY_MD} (all columns), summary.csv (full precision)"
    )
    assert "Every job: data.img_size=224 trainer.max_epochs=90" in lines


def multirun_config(sweep, job=None, **overrides):
    """The config Hydra hands SweepSummary's hooks for a job of a multirun into `sweep`."""
    hydra = {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)}}
    if job is not None:
        job_overrides = [f"{key}={value}" for key, value in overrides.items()]
        hydra |= {
            "runtime": {"output_dir": str(sweep / str(job))},
            "job": {"num": job},
            "overrides": {"task": job_overrides},
        }
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(job_overrides), sweep / str(job) / ".hydra" / "overrides.yaml")
    config = OmegaConf.create({"hydra": hydra, "optimized_metric": "val/top1"})
    config.hydra.mode = RunMode.MULTIRUN
    return config


def test_a_sweep_stopped_by_ctrl_c_summarises_the_jobs_that_ran_and_the_interrupted_one(
    tmp_path, monkeypatch, capsys
):
    from hydra.core.utils import JobReturn, JobStatus

    at_exit = []
    monkeypatch.setattr("atexit.register", lambda function, *args: at_exit.append((function, args)))
    monkeypatch.setattr("atexit.unregister", lambda function: at_exit.clear())
    sweep = tmp_path / "sweep"
    callback = SweepSummary()
    callback.on_multirun_start(multirun_config(sweep))
    for job, seed in enumerate([1, 2]):
        config = multirun_config(sweep, job, seed=seed)
        (sweep / str(job) / "job.json").write_text('{"status": "completed"}')  # of an earlier sweep here
        callback.on_job_start(config)
        if job == 0:
            (sweep / "0" / "metrics.json").write_text(json.dumps({"val/top1": 0.75}))
            callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=0.75))
    # Ctrl-C in job 1: run_task exits (SystemExit), so Hydra calls neither on_job_end nor on_multirun_end
    ((function, args),) = at_exit
    function(*args)  # as the interpreter does at exit

    record = json.loads((sweep / "1" / "job.json").read_text())
    assert record["status"] == "interrupted" and record["overrides"] == ["seed=2"]
    assert record["error"] == "stopped by Ctrl-C or a signal while it ran; its log says where it stopped"
    rows = read_rows(sweep / SUMMARY_CSV)
    assert [(r["job"], r["status"], r["val/top1"]) for r in rows] == [
        ("0", "completed", "0.75"),
        ("1", "interrupted", ""),
    ]
    markdown = (sweep / SUMMARY_MD).read_text()
    assert "2 jobs, 1 not completed; sorted by val/top1" in markdown
    assert "- job 1: stopped by Ctrl-C or a signal while it ran" in markdown
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed if line[:3].strip() in ("0", "1")] == [
        ["0", "completed", "1"],
        ["1", "interrupted", "2"],
    ]

    callback.on_multirun_start(multirun_config(sweep))
    callback.on_multirun_end(multirun_config(sweep))  # a sweep that ends as planned leaves nothing for exit
    assert at_exit == []


@pytest.mark.process
@pytest.mark.slow  # a 2-job sweep in another process, stopped by SIGINT
def test_sigint_to_a_multirun_leaves_the_summary_and_the_interrupted_jobs_record(tmp_path):
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "trainer.max_epochs=1,50",  # job 1 trains long enough to be stopped
        *TINY_JOB,
        "hydra.sweep.dir=sweep",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sweep = tmp_path / "sweep"
    deadline = time.time() + 300
    while not (sweep / "1" / "checkpoints" / "last.ckpt").is_file():  # job 1 is in its epochs
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert json.loads((sweep / "1" / "job.json").read_text())["status"] == "interrupted"
    rows = read_rows(sweep / SUMMARY_CSV)
    assert [(r["job"], r["status"], r["trainer.max_epochs"]) for r in rows] == [
        ("0", "completed", "1"),
        ("1", "interrupted", "50"),
    ]
    printed = " ".join(output.split())  # lines wrapped at 100 characters joined
    assert "Sweep sweep: 2 jobs, 1 not completed; sorted by val/top1" in printed  # at exit, as typed


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


class StandInLauncher:
    """Runs no job: each trial's value is 0.5 + its job number / 100; Ctrl-C at job `interrupt_at`."""

    def __init__(self, interrupt_at=None):
        self.interrupt_at = interrupt_at

    def launch(self, overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        if initial_job_idx == self.interrupt_at:
            raise KeyboardInterrupt
        values = [0.5 + (initial_job_idx + i) / 100 for i in range(len(overrides))]
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=value) for value in values]


def optuna_sweep(tmp_path, storage, n_trials=2, interrupt_at=None):
    from optuna.samplers import RandomSampler

    sweeper = optuna_sweeper.OptunaSweeper(
        sampler=RandomSampler(seed=0),
        storage=storage,
        study_name="study",
        n_trials=n_trials,
        params={"optimizer.lr": "tag(log, interval(1e-4, 1e-2))"},
    )
    sweeper.config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}, "optimized_metric": "val/top1"}
    )
    sweeper.launcher = StandInLauncher(interrupt_at)
    sweeper.sweep([])
    return OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")


def test_an_optuna_storage_in_a_missing_folder_creates_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        results = optuna_sweep(tmp_path, "sqlite:///studies/cifar/optuna.db")  # as typed, relative
    assert (tmp_path / "studies" / "cifar" / "optuna.db").is_file()
    assert results.trials.finished == 2 and results.best_value == 0.51
    assert "created studies/cifar for the study's database" in caplog.text
    assert "best trial 1: val/top1 = 0.51 with optimizer.lr=" in caplog.text

    (tmp_path / "taken").write_text("a file where the folder would go")
    storage = f"sqlite:///{tmp_path}/taken/optuna.db"
    message = f"hydra.sweeper.storage={storage}: cannot create the folder {tmp_path}/taken: File exists"
    with pytest.raises(optuna_sweeper.StorageError, match=f"^{message}$"):
        optuna_sweep(tmp_path, storage)
    unopenable = r"^hydra.sweeper.storage=sqlite:///studies: cannot open the study's database"
    with pytest.raises(optuna_sweeper.StorageError, match=unopenable):
        optuna_sweep(tmp_path, "sqlite:///studies")  # a folder, not a database file


def test_ctrl_c_fails_the_running_optuna_trial_and_the_study_resumes(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(KeyboardInterrupt):
        optuna_sweep(tmp_path, storage, n_trials=3, interrupt_at=1)
    states = [trial.state.name for trial in optuna.load_study(study_name="study", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL"]  # not RUNNING for ever
    results = optuna_sweep(tmp_path, storage, n_trials=3)  # the same command again: one trial to go
    assert results.trials.finished == 3 and results.trials.completed == 2


@pytest.mark.process
@pytest.mark.slow  # two sweeps in other processes
def test_a_3_trial_optuna_study_reports_its_best_trial_and_resumes_from_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"  # a folder that is not there yet
    common = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={storage}",
        "trainer.max_epochs=1",
        *TINY_JOB,
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

    markdown = (tmp_path / "first" / SUMMARY_MD).read_text()
    for row in rows:  # people read Optuna's draws to 4 significant digits
        assert f"| {float(row['optimizer.lr']):.4g} |" in markdown and row["optimizer.lr"] not in markdown

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
        *TINY_JOB,
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
    printed = result.stdout[
        result.stdout.index(f"Sweep {sweep.relative_to(tmp_path)}:") :
    ].splitlines()  # the summary, at the end
    header = next(line.split() for line in printed if line.startswith("job "))
    assert header[:2] == ["job", "model"] and max(len(line) for line in printed) <= 100
