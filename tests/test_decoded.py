"""The decoded-image cache and batch augmentation: the same images, labels and augmentation
distributions as the per-image path, a cache that is reused and rebuilt when files change."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ready, write_image_folder
from torchvision.transforms import v2

from classifier.data import ImageFolderDataModule
from classifier.data.batched import random_crops, random_erasing
from classifier.data.decoded import cache_key, file_samples
from classifier.errors import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def folder_module(root, **kwargs):
    options = {"num_workers": 0, "batch_size": 8, "mean": MEAN, "std": STD, **kwargs}
    return ready(ImageFolderDataModule(root=str(root), **options))


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "pets", {"train": 10, "val": 3, "test": 2}, size=24)


def test_eval_batches_are_the_per_image_eval_transform_in_order(folder):
    per_image = folder_module(folder, decoded_cache=False)
    cached = folder_module(folder, decoded_cache=True)
    assert cached.uses_decoded_cache and not per_image.uses_decoded_cache
    for split in ("val", "test"):
        loader = getattr(cached, f"{split}_dataloader")()
        got = list(loader)
        expected = list(getattr(per_image, f"{split}_dataloader")())
        assert len(got) == len(expected)
        for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
            assert torch.equal(labels, want_labels)
            assert torch.equal(images, want_images)


def test_a_training_epoch_serves_every_image_once_in_a_new_order(folder):
    cached = folder_module(folder, decoded_cache=True)
    labels = np.asarray([label for _, label in cached.dataset("train").samples])
    loader = cached.train_dataloader()
    epochs = []
    for _ in range(2):
        seen = []
        for batch in loader:
            images, batch_labels = batch
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 24, 24)
            seen += batch_labels.tolist()
        epochs.append(seen)
    assert all(len(seen) == 24 for seen in epochs)  # 30 images in full batches of 8
    assert all(Counter(seen) <= Counter(labels.tolist()) for seen in epochs)
    assert epochs[0] != epochs[1]


def test_batch_crops_are_the_per_image_crops_drawn_as_often():
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8)
    padded = F.pad(image.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    possible = {
        (top, left): padded[0, :, top : top + 8, left : left + 8] for top in range(5) for left in range(5)
    }
    crops = random_crops(image.expand(5000, -1, -1, -1), 2)
    counts = Counter()
    for crop in crops:
        (offset,) = [key for key, value in possible.items() if torch.equal(value, crop)]
        counts[offset] += 1
    assert set(counts) == set(possible)  # every offset, and nothing else
    assert max(counts.values()) / min(counts.values()) < 1.5  # uniform: 200 expected each
    # torchvision's per-image RandomCrop with reflect padding draws from the same 25 crops
    per_image = v2.RandomCrop(8, padding=2, padding_mode="reflect")
    for _ in range(50):
        crop = per_image(image[0])
        assert any(torch.equal(crop, value) for value in possible.values())


def test_batch_flips_and_erasing_match_the_per_image_rates(folder):
    cached = folder_module(folder, decoded_cache=True, augment={"erasing": 0.5, "crop": False})
    augment = cached.batch_augment()
    assert augment.flip and augment.padding == 0 and augment.erasing == 0.5
    torch.manual_seed(0)
    image = torch.randint(1, 255, (1, 3, 24, 24), dtype=torch.uint8)
    batch = augment(image.expand(4000, -1, -1, -1))
    plain = v2.functional.normalize(v2.functional.to_dtype(image, torch.float32, scale=True), MEAN, STD)
    erased = (batch == 0).all(dim=1)  # boxes of 0 in every channel
    rows_erased = erased.flatten(1).any(1)
    not_erased = batch[~rows_erased]
    flipped = (not_erased == plain.flip(-1)).flatten(1).all(1)
    assert (not_erased[~flipped] == plain).flatten(1).all(1).all()  # plain or mirrored, same floats
    assert flipped.float().mean() == pytest.approx(0.5, abs=0.04)
    # erasing: as often, and boxes as large, as torchvision's RandomErasing draws them
    reference = v2.RandomErasing(0.5, value=0)
    theirs = torch.stack([reference(plain[0]) for _ in range(4000)])
    their_boxes = (theirs == 0).all(dim=1).flatten(1)
    assert rows_erased.float().mean().item() == pytest.approx(
        their_boxes.any(1).float().mean().item(), abs=0.04
    )
    ours_area = erased.flatten(1)[rows_erased].float().mean(1).mean()
    their_area = their_boxes[their_boxes.any(1)].float().mean(1).mean()
    assert ours_area.item() == pytest.approx(their_area.item(), rel=0.1)
    assert 0.1 < ours_area < 0.2  # mean of U(0.02, 0.33), less the boxes that did not fit


def test_erasing_boxes_fit_and_cover_one_rectangle():
    torch.manual_seed(1)
    out = random_erasing(torch.ones(200, 3, 16, 20), p=1.0)
    for image in out:
        box = (image == 0).all(0)
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(folder, caplog):
    import logging

    first = folder_module(folder, decoded_cache=True)
    spec = first.input_spec
    key = cache_key(file_samples(first.dataset("val")), spec)
    with caplog.at_level(logging.INFO, logger="classifier"):
        first.val_dataloader()
        folder_module(folder, decoded_cache=True).val_dataloader()
    messages = [r.getMessage() for r in caplog.records if "decoded cache:" in r.getMessage()]
    assert sum("decoding 9 images of val" in m for m in messages) == 1  # then read back
    path = file_samples(first.dataset("val"))[0][0]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert cache_key(file_samples(first.dataset("val")), spec) != key


def test_auto_falls_back_to_the_per_image_path_and_true_says_why(folder):
    assert not folder_module(folder, augment={"policy": "randaugment"}).uses_decoded_cache
    assert not folder_module(folder, img_size=96).uses_decoded_cache
    # an eval crop (scale to side / crop_pct, crop the side) is not what the arrays hold
    assert not folder_module(folder, crop_pct=0.875).uses_decoded_cache
    assert not folder_module(folder, crop_mode="squash").uses_decoded_cache
    assert folder_module(folder).uses_decoded_cache  # auto: small images, basic augmentation
    with pytest.raises(
        UserError, match=r"cannot be used here: augment.policy=trivialaugment: per-image augmentation$"
    ):
        folder_module(folder, decoded_cache=True, augment={"policy": "trivialaugment"}).uses_decoded_cache
    with pytest.raises(UserError, match=r"augment.color_jitter=0.4: per-image augmentation$"):
        folder_module(folder, decoded_cache=True, augment={"color_jitter": 0.4}).uses_decoded_cache
    with pytest.raises(UserError, match="data.decoded_cache='yes' is not one of auto, true, false"):
        ImageFolderDataModule(root=str(folder), decoded_cache="yes")


def test_images_not_at_the_input_size_are_resized_as_the_per_image_path_does(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "mixed", {"train": 4, "val": 2}, size=40)
    for i, path in enumerate(sorted((root / "val").rglob("*.*"))):
        Image.open(path).convert("L" if i % 2 else "RGB").resize((40 + 6 * i, 30)).save(path)
    per_image = folder_module(root, decoded_cache=False, img_size=24)
    cached = folder_module(root, decoded_cache=True, img_size=24)
    for (images, labels), (want, want_labels) in zip(
        cached.val_dataloader(), per_image.val_dataloader(), strict=True
    ):
        assert torch.equal(labels, want_labels) and images.shape[-1] == 24
        assert torch.allclose(images, want, atol=1e-5)


def test_an_epoch_has_the_per_image_paths_labels_and_class_balance(folder):
    # 30 training images in batches of 5: both paths serve every image once per epoch
    per_image = folder_module(folder, decoded_cache=False, batch_size=5)
    cached = folder_module(folder, decoded_cache=True, batch_size=5)
    for _ in range(2):
        want = Counter(int(y) for _, labels in per_image.train_dataloader() for y in labels)
        got = Counter(int(y) for _, labels in cached.train_dataloader() for y in labels)
        assert got == want == Counter({0: 10, 1: 10, 2: 10})


@pytest.mark.parametrize("workers", [0, 2])  # decoded here, or in loader worker processes
def test_a_file_that_breaks_after_the_scan_is_named_in_one_line(folder, workers):
    cached = folder_module(folder, decoded_cache=True, num_workers=workers)
    path = file_samples(cached.dataset("val"))[1][0]
    with open(path, "wb") as f:
        f.write(b"not an image any more")
    with pytest.raises(UserError, match=r"^cannot read image .*") as error:
        cached.val_dataloader()
    assert path in str(error.value) and "\n" not in str(error.value)


def test_decoding_leaves_the_runs_random_stream_alone(folder):
    cached = folder_module(folder, decoded_cache=True)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    cached.val_dataloader()  # decodes val (a cold cache: this test's own cache dir)
    assert torch.equal(torch.get_rng_state(), before)
