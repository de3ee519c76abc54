"""The paths that only a real GPU exercises: mixed precision, torch.compile, the fused optimizer,
decoded images resident on the GPU, channels_last, predict.py and export.py on CUDA against the CPU,
the one-GPU-per-job claim, and DDP over NCCL. Marked `gpu`: skipped without CUDA (conftest), run by
`make gpu-check` (benchmarks/gpu_check.py) on a machine with one."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import REPO, compose_config, load_run, write_image_folder

from classifier.tasks.export import export
from classifier.tasks.predict import predict
from classifier.tasks.train import train

pytestmark = pytest.mark.gpu

# digits on the GPU: a few hundred steps in seconds
ON_GPU = [
    "trainer.accelerator=gpu",
    "trainer.devices=1",
    "model.width=16",
    "logger=none",
    "measure_cpu_speed=false",
]


class RecordOnGpu(L.Callback):
    """What training saw: the first conv weight's layout and device, the optimizer's defaults, and
    per epoch the labels and the mean pixel of every training batch."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        RecordOnGpu.seen = {
            "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last),
            "device": str(conv.weight.device),
            "optimizer": dict(trainer.optimizers[0].defaults),
            "labels": [],
            "means": [],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        RecordOnGpu.seen["labels"].extend(labels.tolist())
        RecordOnGpu.seen["means"].append(images.float().mean().item())
        RecordOnGpu.seen["batch_device"] = str(images.device)


RECORD = "+callbacks.gpu_record._target_=test_gpu.RecordOnGpu"


def run(compose_train, *overrides: str) -> dict[str, float]:
    return train(compose_train(*ON_GPU, *overrides))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_to_the_accuracy_of_float32(compose_train, tmp_path, precision):
    mixed = run(compose_train, "trainer.max_epochs=3", f"trainer.precision={precision}")
    full = train(
        compose_train(*ON_GPU, "trainer.max_epochs=3", "trainer.precision=32", output_dir=tmp_path / "f")
    )
    assert mixed["test/top1"] >= 0.85 and abs(mixed["test/top1"] - full["test/top1"]) <= 0.03


def test_compiled_network_trains_and_matches_eager_predictions(compose_train, tmp_path):
    compiled = run(compose_train, "trainer.max_epochs=3", "module.compile=true", RECORD)
    assert compiled["test/top1"] >= 0.7  # 0.76 after 2 epochs on the CPU
    module, datamodule = load_run(str(tmp_path / "run" / "checkpoints" / "best.ckpt"))
    assert not any(key.startswith("net._orig_mod") for key in module.state_dict())  # saved uncompiled


def test_adamw_uses_the_fused_kernel_and_the_network_is_channels_last(compose_train):
    run(compose_train, "trainer.max_epochs=1", "trainer.limit_train_batches=5", RECORD)
    seen = RecordOnGpu.seen
    assert seen["optimizer"].get("fused") is True
    assert seen["channels_last"] is True and seen["device"].startswith("cuda")


def test_device_resident_batches_match_the_loader_s(compose_train, tmp_path):
    run(compose_train, "trainer.max_epochs=1", "data.device_resident=true", RECORD)
    resident = dict(RecordOnGpu.seen)
    train(compose_train(*ON_GPU, "trainer.max_epochs=1", RECORD, output_dir=tmp_path / "loader"))
    loader = RecordOnGpu.seen
    assert resident["batch_device"].startswith("cuda")
    assert sorted(resident["labels"]) == sorted(loader["labels"])  # every training image once
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(resident["means"]) == pytest.approx(mean(loader["means"]), abs=0.02)


def test_predict_on_cuda_gives_the_cpu_s_predictions(small_digits_run, tmp_path):
    run_dir, _ = small_digits_run
    images = write_image_folder(tmp_path / "images", {"val": 4})
    rows = {}
    for device in ("cpu", "cuda"):
        output = tmp_path / f"{device}.csv"
        predict(
            compose_config(
                "predict",
                tmp_path / device,
                [
                    f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                    f"input={images / 'val'}",
                    f"output={output}",
                    f"device={device}",
                    "top_k=3",
                ],
                quiet=False,
            )
        )
        with open(output, newline="") as f:
            rows[device] = list(csv.DictReader(f))
    assert len(rows["cpu"]) == len(rows["cuda"]) > 0
    for cpu, cuda in zip(rows["cpu"], rows["cuda"], strict=True):
        assert cpu.keys() == cuda.keys()
        for key, value in cpu.items():
            try:
                assert float(cuda[key]) == pytest.approx(float(value), abs=1e-3), key
            except ValueError:
                assert cuda[key] == value, key


def test_a_gpu_trained_checkpoint_exports_and_runs_in_onnxruntime_like_the_checkpoint(
    compose_train, tmp_path
):
    run(compose_train, "trainer.max_epochs=1", "trainer.precision=bf16-mixed")
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    export(compose_config("export", tmp_path / "export", [f"ckpt_path={ckpt}", "format=onnx"], quiet=False))
    sidecar = json.loads((tmp_path / "export" / "model.json").read_text())
    assert sidecar["check"]["max_abs_difference"] <= 1e-4


def test_each_sweep_job_claims_a_gpu_of_its_own(tmp_path):
    from classifier.engine.devices import claim_gpu

    count = torch.cuda.device_count()
    with claim_gpu(tmp_path, count) as first:
        assert 0 <= first < count
        if count == 1:
            with pytest.raises(TimeoutError), claim_gpu(tmp_path, count, timeout=0):
                pass
        else:
            with claim_gpu(tmp_path, count) as second:
                assert second != first


def test_ddp_over_nccl_on_one_gpu(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "trainer=ddp",
            "trainer.devices=1",
            "trainer.max_epochs=1",
            "model.width=8",
            "logger=none",
            "measure_cpu_speed=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "distributed_backend=nccl" in output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/top1"] > 0.5
