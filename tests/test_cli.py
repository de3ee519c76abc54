"""The root scripts as users run them: one readable error line for mistakes, files in the run dir."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


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


def test_eval_script_writes_the_reports_into_its_run_dir(digits_run, tmp_path):
    run_dir, metrics = digits_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    result = run_script(
        "eval.py", f"ckpt_path={ckpt}", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(written["test/top1"] - metrics["test/top1"]) < 1e-6
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "report.txt").is_file() and (tmp_path / "confusion_matrix.png").is_file()
