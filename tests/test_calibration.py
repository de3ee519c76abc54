"""Temperature scaling and test-time augmentation: the fitted temperature against a brute-force
minimum, the views TTA averages, and both through eval.py on a trained checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, load_run

from classifier.errors import UserError
from classifier.evaluation.calibration import calibration_of, fit_temperature, temperature_effect
from classifier.evaluation.tta import TestTimeAugmentation, corner_crops, shifted
from classifier.run.checkpoints import TEMPERATURE_KEY
from classifier.tasks.evaluate import CALIBRATED_CHECKPOINT, evaluate


def scaled_logits(scale: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits of a perfectly calibrated model (each label drawn from the softmax of its logits),
    times `scale`: over-confident for scale > 1, under-confident below 1."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(n, classes, generator=generator)
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits * scale, labels


def brute_force_temperature(logits, labels) -> float:
    grid = torch.linspace(0.05, 12, 1200, dtype=torch.float64)  # steps of 0.01
    nll = torch.stack([F.cross_entropy(logits.double() / t, labels) for t in grid])
    return float(grid[nll.argmin()])


@pytest.mark.parametrize("scale", [4.0, 0.3])
def test_the_fitted_temperature_is_the_nll_minimum_and_undoes_the_miscalibration(scale):
    logits, labels = scaled_logits(scale)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(brute_force_temperature(logits, labels), abs=0.011)
    assert temperature == pytest.approx(scale, rel=0.2)  # the model was calibrated at scale 1
    effect = temperature_effect(logits, labels, temperature)
    assert effect["nll_after"] < effect["nll_before"] - 0.1
    assert effect["ece_after"] < effect["ece_before"] / 3
    assert effect["ece_after"] < 0.03
    # the predicted classes do not change
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


def test_calibration_of_matches_a_hand_computation():
    # right with 0.9, wrong with 0.9 (true class at 0.1), right with 0.6 (see test_metrics for the ECE)
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1])
    result = calibration_of(probabilities, labels)
    # the true classes' probabilities: 0.9, 0.1, 0.6
    assert result["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6)) / 3)
    # bin of 0.9: accuracy 1/2 (2 images); bin of 0.6: accuracy 1 (1 image)
    assert result["ece"] == pytest.approx(2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6))


def test_tta_views_are_the_flip_the_shifts_and_the_corner_crops():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    small = TestTimeAugmentation(32, flip=True)
    plain, flip, right, left = small.views(images)
    assert torch.equal(plain, images) and torch.equal(flip, images.flip(-1))
    # moved by 2 pixels (32 // 16) down and right, and up and left
    assert torch.equal(right[..., 2:, 2:], images[..., :-2, :-2])
    assert torch.equal(left[..., :-2, :-2], images[..., 2:, 2:])
    assert torch.equal(shifted(images, 1, 0)[..., :, 1:], images[..., :, :-1])
    assert small.view_names == ["plain", "flip", "shift +", "shift -"]
    assert TestTimeAugmentation(32, flip=False).view_names == ["plain", "shift +", "shift -"]

    photos = torch.rand(2, 3, 96, 96)
    views = TestTimeAugmentation(96, flip=False).views(photos)
    assert len(views) == 5 and all(v.shape == photos.shape for v in views)
    top_left = F.interpolate(photos[..., :84, :84], size=(96, 96), mode="bilinear")
    assert torch.allclose(views[1], top_left) and torch.allclose(corner_crops(photos, 0.875)[3], views[4])
    assert not torch.allclose(views[1], views[4])


def test_tta_averages_the_softmax_of_the_views_at_the_temperature():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    images = torch.randn(5, 3, 32, 32)
    tta = TestTimeAugmentation(32, flip=True)
    probabilities, plain_logits = tta.probabilities(net, images, temperature=2.0)
    expected = torch.stack([(net(v) / 2.0).softmax(1) for v in tta.views(images)]).mean(0)
    assert torch.allclose(probabilities, expected, atol=1e-6)
    assert torch.allclose(plain_logits, net(images))
    assert torch.allclose(probabilities.sum(1), torch.ones(5))
    assert not torch.allclose(probabilities, (net(images) / 2.0).softmax(1))  # the views matter


@pytest.mark.long
def test_eval_calibrates_and_augments_a_checkpoint(small_digits_run, tmp_path):
    run_dir, trained = small_digits_run
    best = run_dir / "checkpoints" / "best.ckpt"
    metrics = evaluate(compose_config("eval", tmp_path, [f"ckpt_path={best}", "calibrate=true", "tta=true"]))
    report = json.loads((tmp_path / "report.json").read_text())
    calibration = report["calibration"]
    temperature = calibration["temperature"]
    assert calibration["fitted_on"] == "val" and calibration["images"] == 288
    assert calibration["val"]["nll_after"] < calibration["val"]["nll_before"]
    # metrics.json is the calibrated model's: same top-1, the NLL and ECE after scaling
    assert metrics["val/top1"] == pytest.approx(trained["val/top1"], abs=1e-6)
    assert metrics["val/nll"] == pytest.approx(calibration["val"]["nll_after"], abs=1e-4)
    assert metrics["test/ece"] == pytest.approx(calibration["test"]["ece_after"], abs=1e-4)
    assert calibration["val"]["nll_before"] == pytest.approx(trained["val/nll"], abs=1e-4)
    text = (tmp_path / "report.txt").read_text()
    assert f"temperature scaling: T={temperature:.4f}, fitted on val (288 images)" in text

    # The given checkpoint is left as it was; calibrated.ckpt carries the temperature.
    assert TEMPERATURE_KEY not in torch.load(best, weights_only=True)["classifier"]
    calibrated = tmp_path / CALIBRATED_CHECKPOINT
    assert torch.load(calibrated, weights_only=True)["classifier"][TEMPERATURE_KEY] == temperature
    module, datamodule = load_run(str(calibrated))
    assert module.temperature == temperature

    # TTA: digits trains without flips, so the views are the shifts; recomputed here in plain torch.
    assert report["tta"]["views"] == ["plain", "shift +", "shift -"]
    assert "val/loss_tta" not in metrics and {"val/top1_tta", "test/nll_tta"} <= set(metrics)
    module.eval()
    tta = TestTimeAugmentation(32, flip=False)
    with torch.no_grad():
        batches = [(tta.probabilities(module, x, temperature)[0], y) for x, y in datamodule.val_dataloader()]
    probabilities, labels = torch.cat([p for p, _ in batches]), torch.cat([y for _, y in batches])
    top1 = (probabilities.argmax(1) == labels).double().mean().item()
    assert metrics["val/top1_tta"] == pytest.approx(top1, abs=1e-6)
    assert report["tta"]["val"] == {"top1": metrics["val/top1_tta"], "top1_without": metrics["val/top1"]}
    assert "test-time augmentation: plain, shift +, shift -" in text

    # eval.py on calibrated.ckpt reports what calibration did, without fitting again
    again = evaluate(compose_config("eval", tmp_path / "again", [f"ckpt_path={calibrated}"]))
    for key in ("val/nll", "val/ece", "test/nll"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-5), key


def test_calibrate_and_tta_are_true_or_false(small_digits_run, tmp_path):
    best = small_digits_run[0] / "checkpoints" / "best.ckpt"
    with pytest.raises(UserError, match="calibrate='maybe' must be true or false"):
        evaluate(compose_config("eval", tmp_path, [f"ckpt_path={best}", "calibrate=maybe"]))
    with pytest.raises(UserError, match="tta=1 must be true or false"):
        evaluate(compose_config("eval", tmp_path, [f"ckpt_path={best}", "tta=1"]))


def test_a_hostile_temperature_is_refused(small_digits_run, tmp_path):
    run_dir, _ = small_digits_run
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["classifier"][TEMPERATURE_KEY] = -1.0
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(UserError, match=r"bad.ckpt holds temperature=-1.0, which is not a positive number"):
        load_run(str(tmp_path / "bad.ckpt"))
