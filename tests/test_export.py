"""export.py: ONNX and TorchScript files whose outputs match the checkpoint's, a sidecar that says how
to feed them, and nothing written when they do not match."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import compose_config, load_run

from classifier.errors import UserError
from classifier.tasks.export import export


def run_export(tmp_path, *overrides):
    return export(compose_config("export", tmp_path, list(overrides), quiet=False))


def val_batch(ckpt, count=12):
    module, datamodule = load_run(str(ckpt))
    images, _ = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        return images[:count], module.eval().net(images[:count]), module, datamodule


def test_onnx_matches_the_checkpoint_on_val_images_at_any_batch_size(small_digits_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run_dir, _ = small_digits_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    run_export(tmp_path, f"ckpt_path={ckpt}", "format=onnx")
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["file"] == "model.onnx" and sidecar["class_names"] == [str(d) for d in range(10)]
    assert sidecar["check"]["max_abs_difference"] <= 1e-4 and sidecar["check"]["runtime"].startswith(
        "onnxruntime"
    )
    assert sidecar["check"]["inputs"] == "16 val images of the checkpoint's data"
    images, expected, module, datamodule = val_batch(ckpt)
    spec = datamodule.input_spec
    assert sidecar["input"]["mean"] == list(spec.mean) and sidecar["input"]["img_size"] == spec.img_size == 32
    assert sidecar["output"]["temperature"] == module.temperature == 1.0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 12):
        (logits,) = session.run(["logits"], {"images": images[:batch].numpy()})
        assert np.abs(logits - expected[:batch].numpy()).max() < 1e-4
    assert not list(tmp_path.glob(".model.onnx.*"))  # no staging folder left behind


def test_torchscript_matches_the_checkpoint(small_digits_run, tmp_path):
    run_dir, _ = small_digits_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    output = tmp_path / "exported" / "digits.pt"
    run_export(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"output={output}")
    images, expected, _, _ = val_batch(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        loaded = torch.jit.load(str(output))
    with torch.no_grad():
        assert (loaded(images) - expected).abs().max() < 1e-5
        assert loaded(images[:3]).shape == (3, 10)
    sidecar = json.loads((tmp_path / "exported" / "digits.json").read_text())
    assert sidecar["format"] == "torchscript" and sidecar["output"]["shape"] == ["batch", 10]


def test_a_failed_check_writes_nothing_and_mistakes_are_one_line(small_digits_run, tmp_path):
    run_dir, _ = small_digits_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    # A tolerance no float computation meets: the check's failure path.
    with pytest.raises(UserError, match=r"export check failed: .* \(tolerance=-1.0\) on 16 val images"):
        run_export(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", "tolerance=-1")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.json").exists()
    with pytest.raises(UserError, match="format='tflite' is not one of onnx, torchscript"):
        run_export(tmp_path, f"ckpt_path={ckpt}", "format=tflite")
    with pytest.raises(UserError, match=r"output=.*model.onnx: a torchscript file name ends in .pt"):
        run_export(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'model.onnx'}")
    with pytest.raises(UserError, match="ckpt_path=.*missing.ckpt does not exist"):
        run_export(tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}")
