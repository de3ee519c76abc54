"""Class imbalance on the data side: data.class_weights (the loss's weights per class) and
data.sampler=balanced (a weighted sampler, also when Lightning shards it over DDP processes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from conftest import ready, write_image_folder
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from torch.utils.data import WeightedRandomSampler

from classifier.data.base import ClassificationDataModule
from classifier.data.memory import TensorImageDataset
from classifier.data.splits import Splits
from classifier.engine.build import build_datamodule
from classifier.errors import UserError, describe_user_error

DATA_CONFIGS = ["cifar10", "cifar100", "csv", "digits", "imagefolder"]


class CountedClasses(ClassificationDataModule):
    """In memory: `train_counts[c]` training images of class c (blank 8 px ones), 2 val images each."""

    NATIVE_IMG_SIZE = 8
    in_memory = True

    def __init__(self, train_counts: Sequence[int], **kwargs):
        super().__init__(batch_size=50, num_workers=0, **kwargs)
        self.train_counts = list(train_counts)

    def read_class_names(self) -> list[str]:
        return [f"class{c}" for c in range(len(self.train_counts))]

    def load_splits(self, class_names: list[str]) -> Splits:
        def blank_images(counts: list[int]) -> TensorImageDataset:
            labels = np.repeat(np.arange(len(counts)), counts)
            return TensorImageDataset(torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8), labels)

        return Splits(train=blank_images(self.train_counts), val=blank_images([2] * len(self.train_counts)))


def counted(train_counts: Sequence[int], **kwargs) -> CountedClasses:
    return ready(CountedClasses(train_counts, **kwargs))


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_data_config_has_both_keys_off_by_default(compose_train, data):
    cfg = compose_train(f"data={data}")
    assert cfg.data.class_weights is None and cfg.data.sampler is None


def test_auto_weights_are_inverse_training_frequency():
    assert counted([18, 2, 4]).loss_class_weights is None
    weights = counted([18, 2, 4], class_weights="auto").loss_class_weights
    assert weights == pytest.approx([24 / (3 * 18), 24 / (3 * 2), 24 / (3 * 4)])
    # normalised: the average weight over the training images is 1, so the loss keeps its scale
    assert np.dot(weights, [18, 2, 4]) / 24 == pytest.approx(1.0)


def test_a_class_without_training_images_gets_weight_0_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="classifier"):
        weights = counted([6, 0, 3], class_weights="auto").loss_class_weights
    assert weights == pytest.approx([9 / (3 * 6), 0.0, 9 / (3 * 3)])
    assert "no training images of class1" in caplog.text


def test_explicit_weights_are_kept_and_a_wrong_length_is_one_line():
    assert counted([3, 3, 3], class_weights=[1, 2.5, "3"]).loss_class_weights == [1.0, 2.5, 3.0]
    with pytest.raises(UserError) as error:
        counted([3, 3, 3], class_weights=[1, 2]).loss_class_weights
    assert (
        str(error.value) == "data.class_weights has 2 values; the data has 3 classes (class0, class1, class2)"
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("inverse", "data.class_weights='inverse': use auto, null or a list of numbers (one per class)"),
        (2.0, "data.class_weights=2.0: use auto, null or a list of numbers (one per class)"),
        ([1, "heavy"], "data.class_weights[1]='heavy' is not a number"),
        ([1, -1], "data.class_weights=[1.0, -1.0] must not be negative"),
    ],
)
def test_bad_class_weights_fail_at_construction(value, message):
    with pytest.raises(UserError) as error:
        CountedClasses([3, 3], class_weights=value)
    assert str(error.value) == message


def test_class_weights_from_the_command_line_reach_the_runs_loss(compose_train, tmp_path):
    from classifier.engine.build import build_module

    root = tmp_path / "imbalanced"
    for name, count in (("cat", 18), ("dog", 2), ("fox", 4)):
        write_image_folder(root, {"train": count, "val": 2}, classes=(name,), size=16)
    cfg = compose_train(
        "data=imagefolder", f"data.root={root}", "data.class_weights=auto", "data.num_workers=0"
    )
    module = build_module(cfg, build_datamodule(cfg.data))
    assert module.class_weights.tolist() == pytest.approx([24 / 54, 4.0, 2.0])
    cfg = compose_train(
        "data=imagefolder", f"data.root={root}", "data.class_weights=[1,2]", "data.num_workers=0"
    )
    with pytest.raises(Exception) as error:
        build_module(cfg, build_datamodule(cfg.data))
    assert describe_user_error(error.value).startswith("data.class_weights has 2 values")


def labels_of_an_epoch(datamodule: ClassificationDataModule) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in datamodule.train_dataloader()])


def test_the_balanced_sampler_draws_classes_equally_and_shuffling_does_not():
    torch.manual_seed(0)  # a run's seed_everything
    balanced = counted([900, 100], sampler="balanced")
    loader = balanced.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler) and loader.sampler.replacement
    drawn = np.bincount(labels_of_an_epoch(balanced), minlength=2)
    assert drawn.sum() == 1000  # an epoch is still as long as the training split
    assert drawn.max() / drawn.min() < 1.15
    assert np.bincount(labels_of_an_epoch(counted([900, 100])), minlength=2).tolist() == [900, 100]


def test_an_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(UserError) as error:
        CountedClasses([3, 3], sampler="weighted")
    assert str(error.value) == "data.sampler='weighted' is not one of null, balanced"


def test_the_balanced_sampler_stays_balanced_when_lightning_shards_it_over_2_processes():
    datamodule = counted([900, 100], sampler="balanced")
    labels = np.repeat([0, 1], [900, 100])
    loader = datamodule.train_dataloader()
    shards = []
    for rank in (0, 1):
        # What Lightning's Trainer does to a training loader under DDP (use_distributed_sampler=true).
        sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank)
        assert isinstance(sampler, DistributedSamplerWrapper)
        torch.manual_seed(0)  # every process runs with the same seed
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 500  # together, one epoch of the training split
    for drawn in (shards[0], shards[1], shards[0] + shards[1]):
        counts = np.bincount(labels[drawn], minlength=2)
        assert counts.max() / counts.min() < 1.15
