"""Duplicate and leakage detection on generated images."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from classifier.audit import duplicates
from classifier.audit.duplicates import (
    DuplicatePair,
    ImageRef,
    feature_duplicates,
    find_duplicates,
    fingerprint_file,
    hamming_distances,
    perceptual_hashes,
)


def smooth_image(seed: int, side: int = 96) -> Image.Image:
    """A random but photo-like image: 6x6 random colours blown up smoothly (pure noise has no low
    frequencies for a perceptual hash to keep)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )


@pytest.fixture
def image_set(tmp_path):
    """Eight distinct images in train, and copies of some of them made the ways datasets get them."""
    train = [smooth_image(seed) for seed in range(8)]
    files = {}
    for i, img in enumerate(train):
        files[f"train/{i}.png"] = img
    files["train/copy_of_0.bmp"] = train[0]  # same pixels, another format
    files["train/copy_of_0_again.png"] = train[0]
    files["val/jpeg_of_1.jpg"] = train[1]  # saved as JPEG quality 75 below
    files["test/resized_2.png"] = train[2].resize((64, 64), Image.Resampling.BILINEAR)
    files["train/mirror_of_3.png"] = ImageOps.mirror(train[3])
    files["test/copy_of_4.png"] = train[4]
    refs = []
    for name, img in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        img.save(path, quality=75) if path.suffix == ".jpg" else img.save(path)
        refs.append(ImageRef(str(path), name.split("/")[0]))
    return refs, [fingerprint_file(ref.path) for ref in refs]


def pairs_by_name(pairs):
    return {(p.path.split("/")[-1], p.other_path.split("/")[-1]): p for p in pairs}


def test_exact_near_mirrored_and_leaks(image_set):
    refs, prints = image_set
    found = pairs_by_name(find_duplicates(refs, prints))
    assert set(found) == {
        ("copy_of_0.bmp", "0.png"),
        ("copy_of_0_again.png", "0.png"),
        ("1.png", "jpeg_of_1.jpg"),
        ("2.png", "resized_2.png"),
        ("mirror_of_3.png", "3.png"),
        ("4.png", "copy_of_4.png"),
    }
    # identical pixels are exact whatever the format; the extra copies go, the first stays
    assert found["copy_of_0.bmp", "0.png"] == DuplicatePair(
        refs[8].path, refs[0].path, "duplicate", "pixels", 1.0
    )
    assert found["4.png", "copy_of_4.png"].how == "pixels"
    # a re-encode and a resize are near, not exact; across train and val/test they are leaks, and the
    # held-out copy is the one kept, so excluding the train copy leaves val and test as they were
    for key in [("1.png", "jpeg_of_1.jpg"), ("2.png", "resized_2.png")]:
        assert found[key].how == "phash"
        assert 1 - 8 / 64 <= found[key].score <= 1.0  # a resize may move no bit at all
        assert found[key].issue == "leak"
    assert found["4.png", "copy_of_4.png"].issue == "leak"
    # a mirrored copy is a near duplicate, found through the mirrored hash
    assert found["mirror_of_3.png", "3.png"].how == "phash_mirrored"
    assert found["mirror_of_3.png", "3.png"].issue == "duplicate"


def test_mirror_image_hashes_swap():
    img = smooth_image(3)
    plain, mirrored = perceptual_hashes(img)
    assert perceptual_hashes(ImageOps.mirror(img)) == (mirrored, plain)
    assert bin(plain ^ mirrored).count("1") > 16  # so finding the mirrored copy needs the second hash


def test_distinct_images_are_not_paired():
    refs = [ImageRef(f"{seed}.png", "train") for seed in range(60)]
    prints = [duplicates.fingerprint(smooth_image(seed)) for seed in range(60)]
    assert find_duplicates(refs, prints) == []
    # the nearest of these 1,770 unrelated pairs is 12 bits apart (seeds 0-59): over the threshold
    hashes = np.array([p.phash for p in prints], dtype=np.uint64)
    distances = hamming_distances(hashes, hashes)[np.triu_indices(60, 1)]
    assert distances.min() > duplicates.MAX_HAMMING_DISTANCE


def test_pairwise_blocks_give_the_same_pairs(image_set, monkeypatch):
    refs, prints = image_set
    whole = find_duplicates(refs, prints)
    monkeypatch.setattr(duplicates, "BLOCK_CELLS", 7)  # one row per block
    assert find_duplicates(refs, prints) == whole


def test_hamming_distances_without_bitwise_count(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2**63, 5, dtype=np.uint64), rng.integers(0, 2**63, 4, dtype=np.uint64)
    expected = [[bin(int(x) ^ int(y)).count("1") for y in b] for x in a]
    assert hamming_distances(a, b).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy < 2.0
    assert hamming_distances(a, b).tolist() == expected


def test_feature_cosine_pairs(monkeypatch):
    refs = [ImageRef("a", "train"), ImageRef("b", "train"), ImageRef("c", "val"), ImageRef("d", "train")]
    features = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.99, 0.1, 0.0], [0.0, 0.0, 0.0]])
    expected = [DuplicatePair("a", "c", "leak", "cosine", pytest.approx(0.99 / np.hypot(0.99, 0.1)))]
    assert feature_duplicates(refs, features, min_cosine=0.95) == expected
    monkeypatch.setattr(duplicates, "BLOCK_CELLS", 1)
    assert feature_duplicates(refs, features, min_cosine=0.95) == expected
    assert feature_duplicates(refs, features, min_cosine=0.999) == []
