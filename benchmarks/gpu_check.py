"""The GPU check, in one command on a machine with a GPU: the tests marked `gpu` (tests/test_gpu.py),
the speed run against airbench94, a few epochs of experiment=cifar10_resnet18, and bf16 training
throughput of resnet50 and vit_b at 224 px against timm's own benchmark.py; one table at the end.

    make gpu-wheels                       # here, with a network: .whl/ (what a bare GPU machine lacks)
    make gpu-check                        # there: python3 benchmarks/gpu_check.py
    python3 benchmarks/gpu_check.py --cifar-tar cifar10-jpg.tar.gz --timm-benchmark benchmark.py \
        [--only tests speedrun resnet18 throughput] [--runs 2] [--out gpu-check]

Set-up: where Hydra is missing (a GPU machine's image has torch, Lightning, timm, torchmetrics and
TensorBoard but not Hydra, OmegaConf or airbench), the wheels in --wheels (.whl/, made by
`make gpu-wheels`) go into a folder of their own on PYTHONPATH with --no-deps, and so does this
project: nothing of the machine's own packages is replaced. Each part runs in its own process with a
time limit; one that fails is a row saying so, and the others still run. The table also goes to
OUT/gpu_check.md and everything to OUT/gpu_check.json. Without CUDA the parts that need it are rows
saying "no GPU" (and the tests skip): the script's set-up, parsing and table are tested on the CPU
(tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "speedrun", "resnet18", "throughput")
THROUGHPUT_MODELS = {"resnet50": "resnet50", "vit_b": "vit_base_patch16_224"}


def run(command: list[str], env: dict[str, str], timeout: float, log: Path) -> tuple[int, str]:
    """`command` from the repository root; its exit status and output (also written to `log`)."""
    print("$", " ".join(command), flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = 124
        output = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
    return status, output


def install(wheels: Path, site: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment with Hydra & co. importable: as they are, or from `wheels` into `site`."""
    probe = subprocess.run([sys.executable, "-c", "import hydra, omegaconf"], env=env, capture_output=True)
    if probe.returncode == 0 and not wheels.is_dir():
        return env
    found = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    if probe.returncode != 0 and not found:
        sys.exit(f"error: Hydra is not installed and {wheels} holds no wheels: run `make gpu-wheels` first")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*pip, "--upgrade", "--target", str(site), *found], check=True, env=env)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])}
    return env


def cifar_folder(tar: Path | None, data: Path) -> Path | None:
    """The CIFAR-10 JPEG folder (train/, test/): `data`, unpacked from `tar` when missing."""
    if (data / "train").is_dir():
        return data
    if tar is None or not tar.is_file():
        return None
    with tarfile.open(tar) as archive:
        archive.extractall(data.parent, filter="data")
    return data if (data / "train").is_dir() else None


def junit_results(path: Path) -> list[dict[str, str]]:
    """One row per test case of a JUnit XML file: name, outcome (passed, failed, error, skipped), and
    the first line of the message."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or found.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        rows.append({"test": case.get("name", "?"), "outcome": outcome, "message": message[:160]})
    return rows


def timm_train_rate(output: str) -> float | None:
    """samples/s of timm's benchmark.py `--bench train` from its output."""
    match = re.search(r"Train benchmark.*?([\d.]+)\s*samples/sec", output, re.DOTALL) or re.search(
        r"train_samples_per_sec['\"]?:\s*([\d.]+)", output
    )
    return float(match.group(1)) if match else None


def train_py_rate(run_dir: Path) -> float | None:
    """The steady-state train/images_per_sec a train.py run logged (logger=csv)."""
    import csv

    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        values = [
            float(row["train/images_per_sec"]) for row in csv.DictReader(f) if row.get("train/images_per_sec")
        ]
    return values[-1] if values else None


def part_tests(env, out: Path) -> dict:
    xml = out / "gpu-tests.xml"
    status, output = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:xdist",
            "-m",
            "gpu",
            "-q",
            f"--junitxml={xml}",
            "tests/test_gpu.py",
        ],
        env,
        1800,
        out / "logs" / "tests.log",
    )
    rows = junit_results(xml) if xml.is_file() else []
    return {"status": status, "tests": rows, "tail": output[-1500:]}


def part_speedrun(env, out: Path, data: Path, runs: int) -> dict:
    status, output = run(
        [
            sys.executable,
            "benchmarks/speedrun_vs_airbench.py",
            "--data",
            str(data),
            "--runs",
            str(runs),
            "--out",
            str(out),
        ],
        env,
        1800,
        out / "logs" / "speedrun.log",
    )
    found = out / "speedrun.json"
    return {
        "status": status,
        **(json.loads(found.read_text()) if status == 0 and found.is_file() else {}),
        "tail": output[-1500:],
    }


def part_resnet18(env, out: Path, data: Path, epochs: int) -> dict:
    run_dir = out / "resnet18"
    status, output = run(
        [
            sys.executable,
            "train.py",
            "experiment=cifar10_resnet18",
            f"data.root={data}",
            f"trainer.max_epochs={epochs}",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        ],
        env,
        1800,
        out / "logs" / "resnet18.log",
    )
    result = {"status": status, "epochs": epochs, "tail": output[-1500:]}
    if status == 0:
        import yaml

        card = yaml.safe_load((run_dir / "model_card.yaml").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        result |= {
            "seconds_per_epoch": card["training"]["seconds"] / epochs,
            "test_top1": metrics.get("test/top1"),
            "images_per_s": train_py_rate(run_dir),
        }
    return result


def part_throughput(env, out: Path, data: Path, timm_benchmark: Path | None, batch: int) -> dict:
    rows = {}
    for name, timm_name in THROUGHPUT_MODELS.items():
        run_dir = out / f"throughput_{name}"
        status, output = run(
            [
                sys.executable,
                "train.py",
                "data=imagefolder",
                f"data.root={data}",
                f"model={name}",
                "data.img_size=224",
                f"data.batch_size={batch}",
                "trainer.precision=bf16-mixed",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=60",
                "trainer.limit_val_batches=2",
                "trainer.limit_test_batches=2",
                "logger=csv",
                f"hydra.run.dir={run_dir}",
            ],
            env,
            900,
            out / "logs" / f"throughput_{name}.log",
        )
        row = {"status": status, "train_py": train_py_rate(run_dir) if status == 0 else None, "timm": None}
        if timm_benchmark is not None and timm_benchmark.is_file():
            timm_status, timm_output = run(
                [
                    sys.executable,
                    str(timm_benchmark),
                    "--model",
                    timm_name,
                    "--bench",
                    "train",
                    "--amp",
                    "--amp-dtype",
                    "bfloat16",
                    "--batch-size",
                    str(batch),
                    "--img-size",
                    "224",
                    "--num-classes",
                    "10",
                ],
                env,
                900,
                out / "logs" / f"timm_{name}.log",
            )
            row |= {"timm_status": timm_status, "timm": timm_train_rate(timm_output)}
        rows[name] = row
    return {"status": max(r["status"] for r in rows.values()), "models": rows}


def _outcome(part: dict) -> str:
    return part.get("skipped") or f"failed, exit {part.get('status')}"


def _figure(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(results: dict) -> str:
    """The one table the check prints: a line per test and per measurement."""
    lines = [
        f"GPU check on {results.get('device', '?')}, {results.get('date', '?')}",
        "",
        "| part | what | result |",
        "|---|---|---|",
    ]
    tests = results.get("tests")
    if tests is not None:
        for row in tests.get("tests", []):
            note = f" ({row['message']})" if row["outcome"] != "passed" and row["message"] else ""
            lines.append(f"| test | {row['test']} | {row['outcome']}{note} |")
        if not tests.get("tests"):
            lines.append(f"| test | tests/test_gpu.py | exit {tests.get('status')}, no results |")
    speed = results.get("speedrun")
    if speed is not None:
        if "summary" in speed:
            for runner, s in speed["summary"].items():
                lines.append(
                    f"| speed run | {runner} | test top-1 {s['test_top1']:.4f},"
                    f" {s['seconds']:.1f} s own clock, {s['command_s']:.1f} s whole command |"
                )
            lines.append(f"| speed run | time ratio (own clocks) | {speed['ratio']:.2f} (target <= 1.5) |")
        else:
            lines.append(f"| speed run | airbench94 vs cifar10_speedrun | {_outcome(speed)} |")
    resnet = results.get("resnet18")
    if resnet is not None:
        if resnet.get("seconds_per_epoch") is not None:
            lines.append(
                f"| resnet18 | experiment=cifar10_resnet18, {resnet['epochs']} epochs | "
                f"{resnet['seconds_per_epoch']:.1f} s/epoch,"
                f" {_figure(resnet.get('images_per_s'), 0)} images/s, test top-1 {resnet['test_top1']:.4f} |"
            )
        else:
            lines.append(f"| resnet18 | experiment=cifar10_resnet18 | {_outcome(resnet)} |")
    through = results.get("throughput")
    if through is not None:
        if "models" in through:
            for name, row in through["models"].items():
                ratio = row["train_py"] / row["timm"] if row.get("train_py") and row.get("timm") else None
                lines.append(
                    f"| bf16 training, 224 px | {name} | train.py {_figure(row['train_py'], 0)} images/s,"
                    f" timm benchmark.py {_figure(row['timm'], 0)}, ratio {_figure(ratio, 2)} |"
                )
        else:
            lines.append(f"| bf16 training, 224 px | resnet50, vit_b | {through.get('skipped')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument(
        "--cifar-tar", type=Path, default=None, help="cifar10-jpg.tar.gz, unpacked when --data is missing"
    )
    parser.add_argument(
        "--timm-benchmark", type=Path, default=None, help="timm's benchmark.py (from its repository)"
    )
    parser.add_argument("--runs", type=int, default=2, help="speed-run rounds")
    parser.add_argument("--epochs", type=int, default=3, help="resnet18 epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="throughput batch size")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = install(args.wheels, args.out / "site", dict(os.environ))
    import torch

    cuda = torch.cuda.is_available()
    results: dict = {
        "device": torch.cuda.get_device_name() if cuda else f"no GPU (CPU, {os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
    }
    data = cifar_folder(args.cifar_tar, args.data) if set(args.only) - {"tests"} else None
    for part in args.only:
        started = time.perf_counter()
        if part == "tests":
            results[part] = part_tests(env, args.out)
        elif not cuda:
            results[part] = {"skipped": "no GPU"}
        elif data is None:
            results[part] = {"skipped": f"no CIFAR-10 JPEGs at {args.data} (give --cifar-tar)"}
        elif part == "speedrun":
            results[part] = part_speedrun(env, args.out, data, args.runs)
        elif part == "resnet18":
            results[part] = part_resnet18(env, args.out, data, args.epochs)
        else:
            results[part] = part_throughput(env, args.out, data, args.timm_benchmark, args.batch_size)
        results[part]["seconds"] = time.perf_counter() - started
        print(f"{part}: {results[part]['seconds']:.0f} s", flush=True)
    printed = table(results)
    print("\n" + printed)
    (args.out / "gpu_check.md").write_text(printed + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    failed = [p for p in args.only if results[p].get("status") not in (None, 0)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
