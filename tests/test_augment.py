"""Augmentation presets (the `augment` group); class imbalance is in test_imbalance.py."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
from conftest import ready, write_image_folder
from PIL import Image
from timm.data.auto_augment import RandAugment as TimmRandAugment
from torchvision.transforms import v2

from classifier.data import DigitsDataModule
from classifier.data.transforms import Augment, InputSpec, create_train_transform
from classifier.engine.build import build_datamodule
from classifier.errors import describe_user_error
from classifier.tasks.train import train

PRESETS = ["none", "basic", "strong", "randaugment", "trivialaugment", "autoaugment"]


def op_types(transform) -> list[type]:
    return [type(step) for step in transform.transforms]


@pytest.fixture
def photo_folder(tmp_path):
    return write_image_folder(tmp_path / "photos", {"train": 4, "val": 2}, size=96)


@pytest.fixture
def small_folder(tmp_path):
    return write_image_folder(tmp_path / "small", {"train": 4, "val": 2}, size=32)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_builds_the_ops_it_names_at_32_and_224_px(
    compose_train, preset, small_folder, photo_folder
):
    for folder, side in ((small_folder, 32), (photo_folder, 224)):
        cfg = compose_train(
            f"augment={preset}", "data=imagefolder", f"data.root={folder}", "data.num_workers=0"
        )
        datamodule = build_datamodule(cfg.data, augment=cfg.augment)
        assert datamodule.input_spec.img_size == side
        ops = op_types(datamodule.train_transform)
        crop = v2.RandomCrop if side == 32 else v2.RandomResizedCrop
        assert (crop in ops) == (preset != "none")
        assert (v2.RandomHorizontalFlip in ops) == (preset != "none")
        assert (v2.RandomErasing in ops) == (preset == "strong")
        policies = {
            TimmRandAugment: "randaugment",
            v2.TrivialAugmentWide: "trivialaugment",
            v2.AutoAugment: "autoaugment",
        }
        named = [policies[op] for op in ops if op in policies]
        assert named == (
            [] if preset in ("none", "basic") else ["randaugment" if preset == "strong" else preset]
        )
        steps = datamodule.train_transform.transforms
        if preset == "autoaugment":
            (policy,) = [s for s in steps if isinstance(s, v2.AutoAugment)]
            expected = v2.AutoAugmentPolicy.CIFAR10 if side == 32 else v2.AutoAugmentPolicy.IMAGENET
            assert policy.policy == expected
        if preset == "strong":
            (policy,) = [s for s in steps if isinstance(s, TimmRandAugment)]
            assert policy.num_layers == 2 and all(op.magnitude == 9 for op in policy.ops)
            (erasing,) = [s for s in steps if isinstance(s, v2.RandomErasing)]
            assert erasing.p == 0.25
            # the policy runs on the small image before the crop, on the cropped photo after it
            assert (op_types(datamodule.train_transform).index(TimmRandAugment) < ops.index(crop)) == (
                side == 32
            )
        assert datamodule.train_transform(Image.new("RGB", (side + 10, side))).shape == (3, side, side)


def test_basic_is_the_default_and_the_transform_of_before(compose_train):
    cfg = compose_train()
    assert cfg.augment.policy is None and cfg.augment.crop and cfg.augment.erasing == 0
    spec = InputSpec(32, crop_pct=1.0)
    expected = [v2.ToImage, v2.Resize, v2.RandomCrop, v2.RandomHorizontalFlip, v2.ToDtype, v2.Normalize]
    assert op_types(create_train_transform(spec, augment=Augment.from_config(cfg.augment))) == expected
    assert op_types(create_train_transform(spec)) == expected


def test_overrides_reach_the_policy_and_bad_values_name_their_key(compose_train):
    cfg = compose_train("augment=randaugment", "augment.magnitude=5", "augment.num_ops=3")
    datamodule = build_datamodule(cfg.data, augment=cfg.augment)
    (policy,) = [s for s in datamodule.train_transform.transforms if isinstance(s, TimmRandAugment)]
    assert policy.num_layers == 3 and {op.magnitude for op in policy.ops} == {5}
    for override, message in [
        ("augment.policy=mixmatch", "augment.policy='mixmatch' is not one of null, randaugment"),
        ("augment.magnitude=11", r"augment.magnitude=11 must be in 0..10 \(timm's RandAugment scale\)"),
        ("augment.erasing=1.5", r"augment.erasing=1.5 must be in \[0, 1\]"),
        ("+augment.colour=0.4", "augment.colour is not an augmentation key"),
    ]:
        cfg = compose_train(override)
        with pytest.raises(Exception) as error:  # Hydra wraps it; the command line prints this line
            build_datamodule(cfg.data, augment=cfg.augment)
        assert re.match(message, describe_user_error(error.value))


def test_none_is_deterministic_and_erasing_erases():
    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (32, 32, 3), dtype=np.uint8))
    spec = InputSpec(32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    none = create_train_transform(spec, augment=Augment(crop=False, hflip=False))
    assert torch.equal(none(image), none(image))
    erase = create_train_transform(spec, augment=Augment(crop=False, hflip=False, erasing=1.0))
    erased = erase(image)
    zero = (erased == 0).all(dim=0)  # erased pixels are 0 in every channel: the mean colour
    assert 0 < zero.float().mean() < 1
    assert not (none(image) == 0).all(dim=0).any()
    assert torch.equal(erased[:, ~zero], none(image)[:, ~zero])  # the rest untouched


def test_policies_work_on_in_memory_tensors_and_change_images():
    torch.manual_seed(0)
    datamodule = ready(DigitsDataModule(augment={"policy": "randaugment", "magnitude": 10, "crop": False}))
    image = datamodule.dataset("train")[0][0]
    assert isinstance(image, torch.Tensor)
    outputs = [datamodule.train_transform(image) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outputs)
    assert len({o.sum().item() for o in outputs}) > 1


@pytest.mark.slow  # a one-batch run of every split
def test_a_run_with_the_strong_preset_trains(compose_train, recorders):
    from conftest import RECORD

    train(compose_train("augment=strong", "trainer.fast_dev_run=true", "logger=none", RECORD))
    (recorder,) = recorders
    assert np.isfinite(recorder.train_loss).all() and len(recorder.batches["train"]) == 1


def test_randaugment_at_low_magnitudes_never_asks_pillow_for_zero_bits():
    # timm's Posterize level is magnitude / 10 * 4 bits: 0 below 2.5, which Pillow refuses
    transform = create_train_transform(
        InputSpec(32, crop_pct=1.0), augment=Augment(policy="randaugment", magnitude=0, num_ops=3)
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    random.seed(0)  # timm draws its ops with Python's random
    for _ in range(200):  # about 1 in 12 drew a 0-bit posterize before
        assert transform(image).shape == (3, 32, 32)
    from classifier.data.transforms import posterize_keeping_a_bit

    one_bit = np.asarray(posterize_keeping_a_bit(image, 0))
    assert set(np.unique(one_bit)) <= {0, 128}
