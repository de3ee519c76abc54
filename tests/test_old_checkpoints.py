"""Checkpoints written before the package was regrouped into subpackages still load: the fixture is a
best.ckpt that main at 135a3cf wrote (`python train.py trainer.max_epochs=2 model.width=4 logger=none
measure_cpu_speed=false`), whose saved config names `classifier.module.ClassifierModule`, and its
metrics.json from that run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, load_run
from torchvision.transforms.functional import to_pil_image

from classifier.data import DigitsDataModule
from classifier.tasks.evaluate import evaluate
from classifier.tasks.export import export
from classifier.tasks.predict import predict

FIXTURES = Path(__file__).parent / "fixtures"
OLD_CHECKPOINT = FIXTURES / "checkpoint_135a3cf.ckpt"


def test_the_fixture_names_the_old_module_path():
    saved = torch.load(OLD_CHECKPOINT, weights_only=True)["classifier"]["config"]
    assert saved["module"]["_target_"] == "classifier.module.ClassifierModule"


def test_eval_reproduces_the_metrics_the_old_run_wrote(tmp_path):
    metrics = evaluate(compose_config("eval", tmp_path, [f"ckpt_path={OLD_CHECKPOINT}"], quiet=False))
    expected = json.loads((FIXTURES / "checkpoint_135a3cf.metrics.json").read_text())
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_predict_and_export_take_the_old_checkpoint(tmp_path):
    module, datamodule = load_run(str(OLD_CHECKPOINT))
    assert isinstance(datamodule, DigitsDataModule) and module.class_names == [str(d) for d in range(10)]
    images = tmp_path / "images"
    images.mkdir()
    val = datamodule.dataset("val")
    for i in range(4):
        image, label = val[i]
        to_pil_image(image).save(images / f"{i}_{label}.png")
    output = tmp_path / "preds.csv"
    predict(
        compose_config(
            "predict",
            tmp_path / "p",
            [f"ckpt_path={OLD_CHECKPOINT}", f"input={images}", f"output={output}", "device=cpu"],
            quiet=False,
        )
    )
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(row["label"] in module.class_names for row in rows)
    assert all(0 < float(row["prob"]) <= 1 for row in rows)

    export(
        compose_config(
            "export", tmp_path / "e", [f"ckpt_path={OLD_CHECKPOINT}", "format=torchscript"], quiet=False
        )
    )
    sidecar = json.loads((tmp_path / "e" / "model.json").read_text())
    assert sidecar["check"]["max_abs_difference"] <= 1e-4
    assert np.isfinite(sidecar["check"]["max_abs_difference"])
