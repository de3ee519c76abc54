"""What a run reports about its own speed: images/s each epoch, and the start-up time once."""

from __future__ import annotations

import csv
import mmap
import re
import time

import pytest
from conftest import hydra_job_logging

from classifier.callbacks.progress import JOB_CLOCK, seconds_since_process_start
from classifier.tasks.train import train


@pytest.mark.long
def test_a_run_logs_its_speed_and_how_long_it_took_to_start(compose_train, tmp_path, monkeypatch):
    cfg = compose_train(
        "logger=csv",
        "model.width=8",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    monkeypatch.setattr(JOB_CLOCK, "jobs", 0)  # this process's first job: counted from its start
    age_before = seconds_since_process_start()
    started = time.perf_counter()
    with hydra_job_logging(cfg) as log_file:
        train(cfg)
    age_after = age_before + time.perf_counter() - started
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
    startups = [float(r["train/startup_s"]) for r in rows if r.get("train/startup_s")]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)  # one per epoch
    (startup,) = startups  # once, in the first epoch
    # the process (pytest) was already age_before old; the first step came within this run
    assert age_before <= startup + 0.02 and startup <= age_after + 0.02
    # the log line rounds the float64 seconds, the CSV holds them as logged (float32): 214.55 can be
    # "214.5" in one and 214.6 in the other
    logged = re.search(r"first training step ([\d.]+) s after the process started", log_file.read_text())
    assert logged and abs(float(logged.group(1)) - startup) <= 0.051


def test_the_process_age_counts_from_the_process_start():
    first = seconds_since_process_start()
    time.sleep(0.2)
    assert seconds_since_process_start() - first == pytest.approx(0.2, abs=0.05)


def resident_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_peak_memory_is_this_processs_and_covers_what_it_holds():
    from classifier.evaluation.machine import peak_resident_mib

    before = resident_mib()
    # 300 MiB of fresh pages, touched so that they are resident. An anonymous mmap, not a bytearray:
    # malloc may hand out memory this worker freed earlier and that is still resident (seen in a
    # full run: VmRSS did not move).
    held = mmap.mmap(-1, 300 * 1024 * 1024)
    for offset in range(0, len(held), mmap.PAGESIZE):
        held[offset] = 1
    now = resident_mib()
    assert now > before + 250  # the allocation is resident ...
    assert peak_resident_mib() >= now - 0.1  # ... and the peak covers it (rounded to 0.1 MiB)
    held.close()
