"""A wheel carries the configs and trains without the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import CONF_DIR, REPO


@pytest.mark.process
@pytest.mark.slow  # builds a wheel and trains with it in other processes
def test_wheel_ships_the_configs_and_trains_outside_the_repo(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("classifier", "conf", "hydra_plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)], check=True
    )
    wheel = next(tmp_path.glob("classifier-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in CONF_DIR.rglob("*.yaml"):
        if config.parent.name == "local":  # this machine's settings: not the project's, not shipped
            continue
        assert f"classifier/conf/{config.relative_to(CONF_DIR)}" in names
    assert not [name for name in names if name.startswith("classifier/conf/local/")]
    for module in (REPO / "classifier").rglob("*.py"):  # every module of every subpackage
        assert f"{module.relative_to(REPO)}" in names, f"pyproject.toml's packages leave out {module}"
    assert "hydra_plugins/classifier_optuna_sweeper/optuna_sweeper.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace other plugins share

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = elsewhere / "run"
    script = (
        "import sys, classifier; print(classifier.__file__);"
        "sys.argv = ['classifier-train', 'trainer=debug', 'logger=none', f'hydra.run.dir={sys.argv[1]}'];"
        "from classifier.cli import train_command; train_command()"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(site))  # the installed copy, not the repository
    assert set(json.loads((run_dir / "metrics.json").read_text())) >= {"val/top1", "test/top1"}
