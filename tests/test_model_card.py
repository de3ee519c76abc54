"""model_card.yaml: what the model is, its data, recipe, metrics, CPU speed, training time, hardware."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from conftest import compose_config
from torch import nn

from classifier.evaluation.machine import cpu_inference_speed
from classifier.tasks.evaluate import evaluate


class Sleepy(nn.Module):
    """A network whose forward pass takes 10 ms whatever the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return x.mean(dim=(2, 3))


def test_cpu_speed_is_per_image_latency_and_batch_throughput():
    speed = cpu_inference_speed(Sleepy(), img_size=8)
    assert 10 <= speed["batch_1_ms_per_image"] < 30
    assert 64 / 0.03 < speed["batch_64_images_per_s"] <= 64 / 0.01
    assert speed["input"] == [3, 8, 8] and speed["threads"] == torch.get_num_threads()


@pytest.mark.long
def test_a_run_and_an_evaluation_write_their_model_cards(small_digits_run, tmp_path):
    run_dir, metrics = small_digits_run
    card = yaml.safe_load((run_dir / "model_card.yaml").read_text())
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    parameters = sum(
        v.numel()
        for k, v in state["state_dict"].items()
        if k.startswith("net.") and "running" not in k and "num_batches" not in k
    )
    assert card["model"]["name"] == "scratch_cnn" and card["model"]["parameters"] == parameters
    assert card["model"]["checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert card["data"]["class_names"] == [str(d) for d in range(10)]
    assert card["data"]["images"] == {"train": 1149, "val": 288, "test": 360}
    assert card["input"]["img_size"] == 32 and card["recipe"]["optimizer"]["lr"] == 1e-2
    assert card["metrics"]["val"]["top1"] == pytest.approx(metrics["val/top1"], abs=1e-6)
    assert card["metrics"]["test"]["ece"] == pytest.approx(metrics["test/ece"], abs=1e-6)
    assert card["training"]["epochs"] == 1 and card["training"]["global_steps"] == 10
    assert card["training"]["seconds"] > 0 and card["training"]["accelerator"] == "CPUAccelerator"
    # the session's pytest process trained it: its peak is at least what torch alone takes
    assert 100 < card["training"]["peak_resident_mib"] < 64 * 1024
    assert card["hardware"]["cpu_cores"] >= 1 and card["software"]["torch"] == torch.__version__
    assert "inference_cpu" not in card  # the tests turn the measurement off (conftest.QUIET)

    best = run_dir / "checkpoints" / "best.ckpt"
    evaluate(compose_config("eval", tmp_path, [f"ckpt_path={best}", "measure_cpu_speed=true"]))
    card = yaml.safe_load((tmp_path / "model_card.yaml").read_text())
    assert card["metrics"] == {
        split: {
            k.split("/")[1]: pytest.approx(v, abs=1e-6) for k, v in metrics.items() if k.startswith(split)
        }
        for split in ("val", "test")
    }
    assert card["training"]["checkpoint_epoch"] == 1 and card["training"]["global_step"] == 10
    assert card["training"]["seconds"] > 0  # from the checkpoint's run metadata
    speed = card["inference_cpu"]
    assert speed["batch_1_ms_per_image"] > 0 and speed["batch_64_images_per_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics, abs=1e-5)
