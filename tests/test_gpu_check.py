"""benchmarks/gpu_check.py on the CPU: what `make gpu-check` reads (JUnit XML, timm's benchmark
output, train.py's logged speed), the table it prints, and the whole command on a machine without a
GPU, where the GPU tests skip and the measurements are rows saying so."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import junit_results, table, timm_train_rate, train_py_rate  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_gpu" name="test_a" time="1.0"/>
<testcase classname="tests.test_gpu" name="test_b" time="2.0">
<failure message="AssertionError: 0.4 &gt;= 0.85">trace</failure></testcase>
<testcase classname="tests.test_gpu" name="test_c" time="0.0">
<skipped message="needs a CUDA GPU">skip</skipped></testcase>
</testsuite></testsuites>"""


def test_junit_results_give_each_test_its_outcome_and_first_message_line(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    assert junit_results(path) == [
        {"test": "test_a", "outcome": "passed", "message": ""},
        {"test": "test_b", "outcome": "failed", "message": "AssertionError: 0.4 >= 0.85"},
        {"test": "test_c", "outcome": "skipped", "message": "needs a CUDA GPU"},
    ]


def test_timm_s_train_benchmark_line_is_read():
    output = (
        "Benchmarking in bfloat16 precision. NHWC layout. torchscript disabled\n"
        "Train [8/40]. 2890.12 samples/sec. 44.287 ms/step.\n"
        "Train benchmark of resnet50 done. 2871.37 samples/sec, 44.58 ms/sample\n"
    )
    assert timm_train_rate(output) == pytest.approx(2871.37)
    assert timm_train_rate("no such line") is None


def test_train_py_s_last_logged_speed_is_read(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,train/images_per_sec,val/top1\n0,,0.5\n0,1200.5,\n1,1300.25,\n"
    )
    assert train_py_rate(tmp_path) == 1300.25
    assert train_py_rate(tmp_path / "missing") is None


def test_the_table_has_a_row_per_test_and_per_measurement():
    results = {
        "device": "NVIDIA H200",
        "date": "2026-12-03",
        "tests": {
            "status": 1,
            "tests": [
                {"test": "test_a", "outcome": "passed", "message": ""},
                {"test": "test_b", "outcome": "failed", "message": "boom"},
            ],
        },
        "speedrun": {
            "summary": {
                "airbench94": {"test_top1": 0.9401, "seconds": 3.5, "command_s": 20.0},
                "cifar10_speedrun": {"test_top1": 0.9410, "seconds": 4.9, "command_s": 30.0},
            },
            "ratio": 1.4,
        },
        "resnet18": {
            "status": 0,
            "epochs": 3,
            "seconds_per_epoch": 12.34,
            "images_per_s": 4000.0,
            "test_top1": 0.8,
        },
        "throughput": {
            "status": 0,
            "models": {
                "resnet50": {"status": 0, "train_py": 2500.0, "timm": 2800.0},
                "vit_b": {"status": 0, "train_py": 1000.0, "timm": None},
            },
        },
    }
    lines = table(results).splitlines()
    assert lines[0] == "GPU check on NVIDIA H200, 2026-12-03"
    assert "| test | test_a | passed |" in lines and "| test | test_b | failed (boom) |" in lines
    assert "| speed run | time ratio (own clocks) | 1.40 (target <= 1.5) |" in lines
    assert any(line.startswith("| resnet18 |") and "12.3 s/epoch" in line for line in lines)
    assert (
        "| bf16 training, 224 px | resnet50 | train.py 2,500 images/s, timm benchmark.py 2,800, ratio 0.89 |"
        in lines
    )
    assert (
        "| bf16 training, 224 px | vit_b | train.py 1,000 images/s, timm benchmark.py —, ratio — |" in lines
    )


@pytest.mark.process
@pytest.mark.slow  # the GPU tests collected and skipped in another interpreter
def test_the_whole_check_without_a_gpu_skips_the_gpu_parts_and_says_so(tmp_path):
    pytest.importorskip("hydra")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check runs it for real")
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--out",
            str(tmp_path),
            "--wheels",
            str(tmp_path / "none"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    printed = (tmp_path / "gpu_check.md").read_text()
    assert printed.startswith("GPU check on no GPU (CPU, ")
    tests = [line for line in printed.splitlines() if line.startswith("| test |")]
    assert len(tests) >= 9 and all(
        line.endswith("skipped (needs a CUDA GPU: make gpu-check on a machine with one) |") for line in tests
    ), tests
    for part in ("speed run", "resnet18", "bf16 training, 224 px"):
        assert any(
            line.startswith(f"| {part} |") and line.endswith("no GPU |") for line in printed.splitlines()
        )
    assert json.loads((tmp_path / "gpu_check.json").read_text())["tests"]["status"] == 0
    assert printed.strip() in result.stdout
