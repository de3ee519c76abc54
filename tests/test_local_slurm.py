"""scripts/local_slurm.py's bookkeeping of the daemons it starts, without SLURM: make test runs these."""

from __future__ import annotations

import shutil
import subprocess

from conftest import local_slurm


def test_a_daemon_just_started_counts_as_running(tmp_path):
    """Right after the start, /proc/PID/cmdline can still be empty (seen in a sandboxed kernel: up to
    two starts in five); neither start() (its own child) nor stop() (a pid from pids.json) may take
    that for an exit."""
    cluster = local_slurm()
    for _ in range(50):
        process = cluster._spawn(tmp_path, "sleep", [shutil.which("sleep"), "30"], {})
        try:
            assert cluster._alive(process.pid, "sleep")
        finally:
            process.kill()
            process.wait()
        assert not cluster._alive(process.pid, "sleep")
    for _ in range(500):  # a pid it did not start: one check in ~75 failed when it read cmdline
        stranger = subprocess.Popen([shutil.which("sleep"), "30"], env={}, start_new_session=True)
        try:
            assert cluster._alive(stranger.pid, "sleep")
        finally:
            stranger.kill()
            stranger.wait()


def test_a_pid_of_another_program_is_not_ours_to_signal(tmp_path):
    """pids.json of an earlier run names a pid the system may have given to something else since."""
    cluster = local_slurm()
    process = cluster._spawn(tmp_path, "sleep", [shutil.which("sleep"), "30"], {})
    try:
        cluster._children.pop(process.pid)  # as a later `stop` process sees it: no Popen of its own
        assert not cluster._alive(process.pid, "munged")
    finally:
        process.kill()
        process.wait()
