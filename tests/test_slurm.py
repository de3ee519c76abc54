"""Through a real SLURM scheduler: the one-machine cluster of scripts/local_slurm.py (conftest's
`slurm_cluster`, started once for the session), a batch job, and the README's SLURM sweep as a user
types it, `python train.py -m hydra/launcher=slurm trainer=slurm seed=1,2`, its jobs submitted with
sbatch and run by slurmd. `make test-slurm`; as root the fixture installs slurm-wlm and munge when
missing, otherwise the tests skip without them.

The cluster has no GPU: the sweep asks for none (hydra.launcher.gpus_per_node=0, one task per node)
and trains on the CPU (trainer.accelerator=cpu trainer.devices=1, and no SyncBatchNorm, which
trainer=ddp turns on for GPUs). No accounting database either: submitit's `sacct` calls fail (it
logs that and waits on its result files), `scontrol show job` shows the finished jobs."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, local_slurm, recomputed_metrics
from test_sweeps import TINY_JOB as FEW_BATCHES

pytestmark = [pytest.mark.process, pytest.mark.slurm]

# One epoch of tests/test_sweeps.py's few batches on a narrow scratch_cnn.
TINY_JOB = ["trainer.max_epochs=1", *FEW_BATCHES]
# A CPU-only cluster: no GPUs asked of SLURM, one process per job on the CPU.
CPU_CLUSTER = [
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=20",  # submitit calls a signal in the first 10 minutes a preemption
    "trainer.accelerator=cpu",  # trainer.devices is the launcher's tasks_per_node
    "trainer.sync_batchnorm=false",
]


def sweep_command(sweep: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "trainer=slurm",
        *overrides,
        f"hydra.sweep.dir={sweep}",
    ]


def run_sweep(env: dict[str, str], sweep: Path, *overrides: str, timeout: float = 300) -> tuple[int, str]:
    """The sweep command as a user types it, from the repository root; exit status and output."""
    try:
        result = subprocess.run(
            sweep_command(sweep, *overrides),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        output = output[-3000:]
        pytest.fail(f"the sweep did not end within {timeout:.0f} s\n{output}\n{cluster_state(env)}")
    return result.returncode, result.stdout + result.stderr


def cluster_state(env: dict[str, str]) -> str:
    """squeue, every job's record and the end of slurmctld's log: what a failure shows of the cluster."""
    parts = []
    for command in (["squeue"], ["scontrol", "show", "job", "--oneliner"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        parts.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    parts.append(local_slurm()._tail(Path(env["SLURM_CONF"]).parent / "slurmctld.log", lines=30))
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(slurm_cluster):
    """A test that failed may leave jobs queued or running; they would take the next test's CPUs."""
    yield
    subprocess.run(["scancel", f"--user={os.getuid()}"], env=slurm_cluster, capture_output=True, timeout=30)


def slurm(env: dict[str, str], *command: str) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return result.stdout


def show_job(env: dict[str, str], job_id: str) -> list[dict[str, str]]:
    """`scontrol show job JOB_ID` (an array job: one record per task) as key=value dicts."""
    records = slurm(env, "scontrol", "show", "job", "--oneliner", job_id).strip().splitlines()
    return [dict(re.findall(r"(\w+)=(\S*)", record)) for record in records]


def wait_until_left_the_queue(env: dict[str, str], job_id: str, timeout: float = 60) -> None:
    """A sweep's launcher returns once a job has written its result, a moment before the job's
    process exits and SLURM records it COMPLETED."""
    deadline = time.monotonic() + timeout
    while slurm(env, "squeue", "--noheader", "--jobs", job_id).strip():
        assert time.monotonic() < deadline, slurm(env, "squeue")
        time.sleep(0.5)


def test_the_cluster_is_up_and_runs_a_batch_job(slurm_cluster, tmp_path):
    host = socket.gethostname().split(".")[0]
    print(f"\n{slurm(slurm_cluster, 'sinfo')}")
    assert slurm(slurm_cluster, "sinfo", "--noheader", "-o", "%P %a %D %T %N").split() == [
        "debug*",
        "up",
        "1",
        "idle",
        host,
    ]
    output = tmp_path / "hostname-%j.out"
    submitted = slurm(slurm_cluster, "sbatch", "--parsable", f"--output={output}", "--wrap", "hostname")
    job_id = submitted.strip().split(";")[0]
    assert job_id.isdigit()
    wait_until_left_the_queue(slurm_cluster, job_id)
    (job,) = show_job(slurm_cluster, job_id)
    assert (job["JobState"], job["ExitCode"], job["Partition"], job["NodeList"]) == (
        "COMPLETED",
        "0:0",
        "debug",
        host,
    )
    assert (tmp_path / f"hostname-{job_id}.out").read_text().strip() == host


def test_the_readme_slurm_sweep_runs_each_job_through_the_scheduler(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    status, output = run_sweep(slurm_cluster, sweep, "seed=1,2", *CPU_CLUSTER, *TINY_JOB)
    assert status == 0, output[-4000:]
    print(f"the sweep took {time.monotonic() - started:.0f} s")

    # one array job of two tasks, submitted by submitit: .submitit/<array id>_<task>/ per task
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2, tasks
    array_id = tasks[0].split("_")[0]
    assert array_id.isdigit() and tasks == [f"{array_id}_0", f"{array_id}_1"]
    wait_until_left_the_queue(slurm_cluster, array_id)
    records = {record["ArrayTaskId"]: record for record in show_job(slurm_cluster, array_id)}
    assert sorted(records) == ["0", "1"]
    host = socket.gethostname().split(".")[0]
    for task, record in records.items():
        assert record["ArrayJobId"] == array_id and record["JobName"] == "train"
        assert (record["JobState"], record["ExitCode"], record["NodeList"]) == ("COMPLETED", "0:0", host)
        assert record["StdOut"] == str(
            sweep / ".submitit" / f"{array_id}_{task}" / f"{array_id}_{task}_0_log.out"
        )
        assert record["NumCPUs"] == "1"
        # the task's own SLURM environment, as submitit read it on the node
        log = (sweep / ".submitit" / f"{array_id}_{task}" / f"{array_id}_{task}_0_log.out").read_text()
        assert f"Starting with JobEnvironment(job_id={array_id}_{task}, hostname={host}," in log
    # side by side: two jobs of one CPU each fit the node at once
    spans = [
        (datetime.fromisoformat(r["StartTime"]), datetime.fromisoformat(r["EndTime"]))
        for r in records.values()
    ]
    assert max(start for start, _ in spans) <= min(end for _, end in spans), spans

    # each job in its own run folder, in a process of its own; the sweep's summary has both
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["seed"], r["status"]) for r in rows) == [("1", "completed"), ("2", "completed")]
    pids = set()
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert 0 <= metrics["val/top1"] <= 1
        pids.add(json.loads((sweep / job / "job.json").read_text())["pid"])
    assert len(pids) == 2 and os.getpid() not in pids
    markdown = (sweep / "summary.md").read_text()
    print(f"run dirs: {sorted(str(p) for p in sweep.iterdir() if p.name.isdigit())}")
    print("\n".join(line[:200] for line in markdown.splitlines() if line.startswith(("|", "2 jobs"))))
    assert "2 jobs, 0 not completed; sorted by val/top1" in markdown
    table = [line.split("|")[1:3] for line in markdown.splitlines() if re.match(r"\| [01] \|", line)]
    assert sorted((job.strip(), seed.strip()) for job, seed in table) == [("0", "1"), ("1", "2")]


class PauseForPreemption(L.Callback):
    """At the end of epoch `epoch` (0-based) of a job's first run, writes the job's SLURM id to `flag`
    and waits for the signal the test has SLURM send, so that the job is preempted between two
    epochs (a stop mid-epoch resumes with a new shuffle: the same step count, not the same numbers)."""

    def __init__(self, epoch: int, flag: str):
        self.epoch, self.flag = epoch, Path(flag)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch or self.flag.exists():
            return
        self.flag.write_text(f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}")
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_until_requeued(env: dict[str, str], job_id: str, seconds: float = 120) -> None:
    """Waits until the job is back in the queue. SLURM holds a requeued job for the job
    credentials' lifetime (scripts/local_slurm.py sets 20 s; 120 s by default) and then starts it:
    a start within the second of the requeue would be refused ('Job credential revoked')."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        (record,) = show_job(env, job_id)
        if record["JobState"] == "PENDING" and record["Restarts"] == "1":
            print(f"requeued: {record['JobState']} ({record['Reason']}), eligible {record['EligibleTime']}")
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was not requeued: {record}")


def wait_for_file(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.exists(), "the job ended, or never reached the pause"


def test_a_preempted_job_is_requeued_resumes_and_ends_as_an_uninterrupted_one(slurm_cluster, tmp_path):
    """Two jobs of the same seed; SLURM signals one (SIGUSR1, as before a time limit or a preemption)
    after its epoch 2 of 3. It saves last.ckpt, submitit requeues it, the scheduler starts it again,
    and it resumes at epoch 3 and ends with the other job's weights and metrics."""
    sweep, flag = tmp_path / "sweep", tmp_path / "paused"
    command = sweep_command(
        sweep,
        "seed=1",
        "+callbacks.pause._target_=test_slurm.PauseForPreemption",
        "+callbacks.pause.epoch=1,99",  # job 0 pauses after epoch 2; job 1 never does
        f"+callbacks.pause.flag={flag}",
        *CPU_CLUSTER,
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.deterministic=true",
        "model.width=8",
        "logger=none",
        "measure_cpu_speed=false",
    )
    env = {**slurm_cluster, "PYTHONPATH": str(REPO / "tests")}  # the jobs import this module's callback
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as launcher:
        try:
            wait_for_file(flag, launcher)
            job_id = flag.read_text()
            array_id = job_id.split("_")[0]
            # the signal submitit asked SLURM to send before the time limit (--signal=USR2@120)
            script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
            signal_name = re.search(r"^#SBATCH --signal=(\w+)@\d+$", script, re.MULTILINE).group(1)
            print(slurm(slurm_cluster, "squeue"))
            slurm(slurm_cluster, "scancel", f"--signal={signal_name}", job_id)
            wait_until_requeued(slurm_cluster, job_id)
            output, _ = launcher.communicate(timeout=400)
        except (AssertionError, subprocess.TimeoutExpired) as e:
            launcher.kill()  # submitit would wait for ever on a job that ended without its result file
            raise AssertionError(f"{e}\n{cluster_state(slurm_cluster)}") from e
    assert launcher.returncode == 0, output[-4000:]

    wait_until_left_the_queue(slurm_cluster, job_id)
    (record,) = show_job(slurm_cluster, job_id)
    assert (record["JobState"], record["Restarts"]) == ("COMPLETED", "1")
    task_logs = "".join(p.read_text() for p in (sweep / ".submitit" / job_id).glob("*_log.*"))
    assert f"Caught signal SIG{signal_name}" in task_logs and f"Requeued job {job_id}" in task_logs
    log = (sweep / "0" / "train.log").read_text()
    assert f"SIG{signal_name}: saved {sweep / '0' / 'checkpoints' / 'last.ckpt'} (epoch 2/3 done" in log
    assert "resuming at epoch 3/3 (global step 8)" in log
    print("\n".join(line for line in log.splitlines() if f"SIG{signal_name}" in line or "resuming" in line))

    preempted, whole = (json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1"))
    assert preempted.keys() == whole.keys()
    for key, value in whole.items():
        assert preempted[key] == pytest.approx(value, abs=1e-6), key
    print(
        "preempted vs uninterrupted:",
        {k: (preempted[k], whole[k]) for k in ("val/top1", "test/top1", "test/nll")},
    )
    for name in ("last.ckpt", "best.ckpt"):
        ours, theirs = (
            torch.load(sweep / job / "checkpoints" / name, weights_only=True) for job in ("0", "1")
        )
        assert (ours["epoch"], ours["global_step"]) == (theirs["epoch"], theirs["global_step"]), name
        for key, value in theirs["state_dict"].items():
            assert torch.equal(value, ours["state_dict"][key]), (name, key)


def test_one_job_of_two_tasks_is_one_ddp_run_that_counts_every_image_once(slurm_cluster, tmp_path):
    """Two SLURM tasks of one job (two nodes' worth of processes on the one node), DDP over gloo
    through Lightning's SLURM environment: one run folder, reports written once by rank 0, and the
    metrics those of a one-process evaluation of the checkpoint on whole splits."""
    sweep = tmp_path / "sweep"
    status, output = run_sweep(
        slurm_cluster,
        sweep,
        "seed=1",
        *[o for o in CPU_CLUSTER if not o.startswith("hydra.launcher.tasks_per_node")],
        "hydra.launcher.tasks_per_node=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "data.batch_size=20",
        "data.folds=3",  # val 479 images: a DistributedSampler would pad it to 480
        "data.fold=0",
        "model.width=8",
        "logger=none",
        "measure_cpu_speed=false",
        timeout=400,
    )
    assert status == 0, output[-4000:]
    (task,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # one job: no array
    wait_until_left_the_queue(slurm_cluster, task.name)
    (record,) = show_job(slurm_cluster, task.name)
    assert (record["JobState"], record["NumTasks"]) == ("COMPLETED", "2")
    rank_logs = sorted(p.name for p in task.glob("*_log.out"))
    assert rank_logs == [f"{task.name}_0_log.out", f"{task.name}_1_log.out"]  # one per SLURM task
    ranks = "".join(p.read_text() for p in task.glob("*_log.*"))
    assert "distributed_backend=gloo" in ranks and "Starting with 2 processes" in ranks, ranks[-3000:]

    run_dir = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "0",
        "multirun.yaml",
        "summary.csv",
        "summary.md",
    ]
    with open(sweep / "summary.csv", newline="") as f:
        assert [(r["job"], r["status"]) for r in csv.DictReader(f)] == [("0", "completed")]
    log = (run_dir / "train.log").read_text()
    assert log.count("reports written to") == 1 and log.count("model card:") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recomputed = recomputed_metrics(run_dir / "checkpoints" / "best.ckpt")  # whole splits, one process
    for key, value in recomputed.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    print("2-task job vs one process:", {k: (metrics[k], recomputed[k]) for k in sorted(recomputed)})
    assert "split: test (360 images)" in (run_dir / "report.txt").read_text()


def test_a_job_that_fails_is_listed_as_failed_and_the_others_run(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    status, output = run_sweep(
        slurm_cluster,
        sweep,
        "optimizer.lr=3e-3,-1",  # -1: torch refuses it
        *CPU_CLUSTER,
        *TINY_JOB,
    )
    assert status == 1 and "Invalid learning rate: -1" in output, output[-4000:]
    with open(sweep / "summary.csv", newline="") as f:
        rows = {r["optimizer.lr"]: r for r in csv.DictReader(f)}
    assert (rows["0.003"]["status"], rows["-1"]["status"]) == ("completed", "failed")
    assert rows["-1"]["error"] == "optimizer: Invalid learning rate: -1"
    assert json.loads((sweep / rows["0.003"]["job"] / "metrics.json").read_text())["val/top1"] >= 0
    assert "2 jobs, 1 not completed" in (sweep / "summary.md").read_text()
