#!/usr/bin/env python3
"""A one-machine SLURM cluster in a folder: munged, slurmctld and slurmd of Debian's `slurm-wlm` and
`munge`, with every key, socket, state, spool, log and pid file inside that folder, so it runs next to
anything else on the machine and leaves nothing behind when the folder goes.

    python scripts/local_slurm.py start DIR   # the last line printed: export SLURM_CONF=DIR/slurm.conf
    eval "$(python scripts/local_slurm.py start /tmp/slurm | tail -n 1)"
    sbatch --wrap hostname; squeue; sinfo
    python scripts/local_slurm.py stop DIR    # cancels the jobs, stops what `start` started

One node, this machine (`hostname -s`, reached at 127.0.0.1), with all its CPUs and a little less than
its memory, in one partition `debug`. Daemons run as root (the machine's only user in a container), the
jobs as whoever submits them. `start` installs `slurm-wlm munge` with apt-get when they are missing and
it runs as root. cgroups are not used (proctrack/linuxproc, task/none): containers seldom let a daemon
create them. No accounting database: `sacct` has nothing to report (submitit, which asks it, then waits
on its result files), `squeue` and `scontrol show job` show the jobs.

Standard library only; also imported by the tests (tests/conftest.py's `slurm_cluster`): start(dir)
returns the environment variables the client commands need, stop(dir) stops what start(dir) started."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
PACKAGES = ("slurm-wlm", "munge")
PIDS = "pids.json"
READY_TIMEOUT_S = 60.0
CRED_EXPIRE_S = 20  # job credentials' lifetime; a requeued job starts again this long after
# Processes started here that this process can reap (stop() waits on them; others are polled).
_children: dict[int, subprocess.Popen[bytes]] = {}


class ClusterError(RuntimeError):
    """The cluster could not be installed, started or stopped; the message says why."""


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS, "munge") if _which(name) is None]


def _which(name: str) -> str | None:
    # Debian puts the daemons in /usr/sbin, which a non-login root shell may not have on its PATH.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def can_install() -> bool:
    """Whether ensure_installed() may install the packages: root with apt-get."""
    return os.geteuid() == 0 and _which("apt-get") is not None


def ensure_installed() -> None:
    """Installs slurm-wlm and munge with apt-get when a binary is missing and this runs as root."""
    missing = missing_binaries()
    if not missing:
        return
    if not can_install():
        raise ClusterError(
            f"{', '.join(missing)} not found: install {' '.join(PACKAGES)} (apt-get install "
            f"{' '.join(PACKAGES)} as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    print(f"installing {' '.join(PACKAGES)}: {' '.join(install)}", file=sys.stderr, flush=True)
    if subprocess.run(install, env=env).returncode != 0:  # a stale package index: update, try again
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(install, env=env).returncode != 0:
            raise ClusterError(f"`{' '.join(install)}` failed (after apt-get update)")
    if missing_binaries():
        raise ClusterError(f"{', '.join(missing_binaries())} still missing after installing {PACKAGES}")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on now (the kernel's picks, released again)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def short_hostname() -> str:
    """The name slurmd registers as: `hostname -s`."""
    return socket.gethostname().split(".")[0]


def memory_mb() -> int:
    """The node's RealMemory: 90% of MemTotal (slurmd drains a node that has less than configured)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024 * 9 // 10)
    return 1024


def write_configs(folder: Path) -> Path:
    """folder/slurm.conf, cgroup.conf and an empty plugstack.conf; returns slurm.conf's path."""
    host, cpus = short_hostname(), os.cpu_count() or 1
    ctld_port, slurmd_port = free_ports(2)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    # munged wants its socket's folder open to every user (but writable only by its own)
    (folder / "munge").mkdir(exist_ok=True)
    (folder / "munge").chmod(0o755)
    conf = folder / "slurm.conf"
    lines = [
        "# A one-machine cluster written by scripts/local_slurm.py: every file it uses is in this folder.",
        "ClusterName=local",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # the munged started here, not the machine's /run/munge one (auth/munge and cred/munge read it);
        # a requeued job waits cred_expire+1 s before it starts again (a start within the second of
        # the requeue is refused, 'Job credential revoked'): 20 s rather than the default 120
        f"AuthInfo=socket={folder / 'munge' / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"PlugStackConfig={folder / 'plugstack.conf'}",
        "MailProg=/bin/true",
        # no cgroups: a container seldom lets a daemon create them
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # the main scheduling loop every second and backfill too: a job starts within a second or two
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=5",
        # a finished job stays in `scontrol show job` for 2 minutes (the default is 5)
        "MinJobAge=120",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        # the node as configured here, whatever slurmd detects (a container may report other sockets)
        "SlurmdParameters=config_overrides",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 "
        f"RealMemory={memory_mb()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf.write_text("\n".join(lines) + "\n")
    # Read by slurmd when a plugin asks; nothing here uses cgroups.
    (folder / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
    (folder / "plugstack.conf").write_text("")
    return conf


def write_munge_key(path: Path) -> None:
    if path.exists():
        return
    mungekey = _which("mungekey")
    if mungekey is not None:
        subprocess.run([mungekey, "--create", f"--keyfile={path}"], check=True, capture_output=True)
    else:
        path.write_bytes(os.urandom(1024))
    path.chmod(0o400)


def _spawn(folder: Path, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`command` in the foreground of a session of its own (a terminal's Ctrl-C does not reach it), its
    output appended to folder/<name>.out."""
    with open(folder / f"{name}.out", "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            start_new_session=True,
        )
    _children[process.pid] = process
    return process


def _record(folder: Path, pids: dict[str, int]) -> None:
    (folder / PIDS).write_text(json.dumps(pids, indent=2) + "\n")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path.name}: none"
    return "\n".join([f"--- {path.name} (last {min(lines, len(text))} lines):", *text[-lines:]])


def _logs(folder: Path) -> str:
    names = ("munged.log", "munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out")
    return "\n".join(_tail(folder / name) for name in names if (folder / name).exists())


def _client(command: list[str], env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def client_env(folder: Path) -> dict[str, str]:
    """The variables the client commands (sbatch, squeue, sinfo, scontrol, scancel) need."""
    return {"SLURM_CONF": str(Path(folder).resolve() / "slurm.conf")}


def start(folder: str | os.PathLike[str], timeout: float = READY_TIMEOUT_S) -> dict[str, str]:
    """Starts munged, slurmctld and slurmd with their files in `folder` and waits until the node is idle.
    Returns the environment variables the client commands need ({"SLURM_CONF": ...}). On failure it
    stops what it started and raises ClusterError with the tail of the daemons' logs."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / PIDS).exists() and any(_alive(pid, name) for name, pid in _read_pids(folder).items()):
        raise ClusterError(f"a cluster from {folder} is running: `{Path(__file__).name} stop {folder}` first")
    ensure_installed()
    conf = write_configs(folder)
    variables = client_env(folder)
    env = {**os.environ, **variables}
    munge_dir = folder / "munge"
    key, sock = munge_dir / "munge.key", munge_dir / "munge.socket"
    write_munge_key(key)
    pids: dict[str, int] = {}
    try:
        munged = _spawn(
            folder,
            "munged",
            [
                str(_which("munged")),
                "--foreground",
                "--force",  # runs as root, and over a stale socket of an earlier run
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            env,
        )
        pids["munged"] = munged.pid
        _record(folder, pids)
        _wait(lambda: _munge_works(sock), 15, "munged to answer on its socket", folder, pids)
        for name, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", short_hostname()])):
            process = _spawn(folder, name, [str(_which(name)), "-D", "-f", str(conf), *extra], env)
            pids[name] = process.pid
            _record(folder, pids)
        _wait(lambda: _node_state(env) == "idle", timeout, "the node to be idle in sinfo", folder, pids)
    except BaseException:
        stop(folder, cancel_jobs=False)
        raise
    return variables


def _munge_works(sock: Path) -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if munge is None or unmunge is None:
        return sock.exists()
    credential = subprocess.run([munge, "-n", f"--socket={sock}"], capture_output=True, timeout=10)
    if credential.returncode != 0:
        return False
    decoded = subprocess.run(
        [unmunge, f"--socket={sock}"], input=credential.stdout, capture_output=True, timeout=10
    )
    return decoded.returncode == 0


def _node_state(env: dict[str, str]) -> str:
    try:
        result = _client(["sinfo", "-h", "-o", "%T"], env, timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _wait(ready: Callable[[], bool], timeout: float, what: str, folder: Path, pids: dict[str, int]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        dead = [name for name, pid in pids.items() if not _alive(pid, name)]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}\n{_logs(folder)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{_logs(folder)}")
        time.sleep(0.5)


def _read_pids(folder: Path) -> dict[str, int]:
    try:
        return {name: int(pid) for name, pid in json.loads((folder / PIDS).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _alive(pid: int, name: str) -> bool:
    """Whether `pid` is a running (not zombie) process of the program `name`: a pid of an earlier run
    that the system gave to something else since is not ours to signal."""
    child = _children.get(pid)
    if child is not None:  # started here: its exit status says; /proc may still show the name before exec
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm is the program's name (cmdline can be empty for a moment after exec)
    program, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and program == name[:15]


def stop(folder: str | os.PathLike[str], cancel_jobs: bool = True, timeout: float = 15.0) -> None:
    """Cancels the cluster's jobs, then stops the processes folder/pids.json records (SIGTERM, then
    SIGKILL after `timeout` seconds): slurmd, slurmctld, munged. Nothing else is signalled."""
    folder = Path(folder).resolve()
    pids = _read_pids(folder)
    if not pids:
        return
    if cancel_jobs and _alive(pids.get("slurmctld", -1), "slurmctld"):
        env = {**os.environ, **client_env(folder)}
        try:
            _client(["scancel", "--user", str(os.getuid())], env, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                queue = _client(["squeue", "-h", "-o", "%i"], env, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    # the reverse of the start order: slurmd, slurmctld, then munged which they talk to
    for name in reversed(DAEMONS):
        pid = pids.get(name)
        if pid is not None:
            _terminate(pid, name, timeout)
    (folder / PIDS).unlink(missing_ok=True)


def _terminate(pid: int, name: str, timeout: float) -> None:
    if not _alive(pid, name):
        _reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, name) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid, name):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid, name):
            time.sleep(0.1)
    _reap(pid)


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", type=Path, help="the cluster's folder: configs, state, logs, pids.json")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            variables = start(args.dir)
            folder = args.dir.resolve()
            print(f"local SLURM cluster up: node {short_hostname()}, partition debug, logs in {folder}")
            print(f"stop it with: {sys.executable} {Path(__file__).resolve()} stop {folder}")
            print(" ".join(f"export {name}={value}" for name, value in variables.items()))
        else:
            stop(args.dir)
    except ClusterError as e:
        print(f"local_slurm.py {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
