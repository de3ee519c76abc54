"""The dataset profile on generated images of every mode, size and kind of damage it reports."""

import json

import numpy as np
import pytest
from PIL import Image

from classifier.audit.profile import (
    ASPECT_BUCKETS,
    EXIF_ORIENTATION,
    TINY_SIDE,
    aspect_bucket,
    profile_dataset,
    side_bucket,
)

CLASSES = ["cat", "dog", "fox"]


def save(path, mode, size, **kwargs):
    Image.new(mode, size).save(path, **kwargs)
    return str(path)


@pytest.fixture
def dataset(tmp_path):
    """Train: one file of each kind; test: two RGB images, one of them a copy of a train file's path."""
    rgb = save(tmp_path / "rgb.jpg", "RGB", (64, 48))
    gray = save(tmp_path / "gray.png", "L", (32, 32))
    rgba = save(tmp_path / "rgba.png", "RGBA", (40, 80))
    cmyk = save(tmp_path / "cmyk.jpg", "CMYK", (50, 50))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 20), 40000, dtype=np.uint16)).save(deep)
    tiny = save(tmp_path / "tiny.png", "RGB", (10, 10))
    wide = save(tmp_path / "wide.png", "RGB", (200, 20))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Image.new("RGB", (64, 64)).tobytes()[:100])  # no header at all
    big = save(tmp_path / "big.png", "RGB", (1100, 300))
    train = [(rgb, 0), (gray, 0), (rgba, 0), (cmyk, 0), (str(deep), 1), (tiny, 1), (wide, 0), (broken, 1)]
    test = [(big, 1), (rgb, 1)]
    return {"train": train, "test": test}


def test_counts_modes_flags_and_lists(dataset, tmp_path):
    profile = profile_dataset(dataset, CLASSES)
    assert json.loads(json.dumps(profile)) == profile
    train = profile["splits"]["train"]
    assert train["images"] == 8 and train["readable"] == 7
    assert train["per_class"] == {"cat": 5, "dog": 3, "fox": 0}
    assert train["empty_classes"] == ["fox"]
    assert train["imbalance_ratio"] == pytest.approx(5 / 3)
    # Recent Pillow opens a 16-bit grayscale PNG as "I;16"; the floor (9.2) widens it to 32-bit "I".
    deep_mode = Image.open(tmp_path / "deep.png").mode
    assert deep_mode in ("I;16", "I")
    assert train["modes"] == dict(sorted({"CMYK": 1, deep_mode: 1, "L": 1, "RGB": 3, "RGBA": 1}.items()))
    assert train["flags"] == {"grayscale": 2, "alpha": 1, "cmyk": 1, "16-bit": 1}
    # widths 64 32 40 50 20 10 200; heights 48 32 80 50 30 10 20; shorter sides 48 32 40 50 20 10 20
    assert train["width"] == {"min": 10, "median": 40, "max": 200}
    assert train["height"] == {"min": 10, "median": 32, "max": 80}
    assert train["aspect"]["min"] == pytest.approx(0.5)
    assert train["aspect"]["median"] == pytest.approx(1.0)
    assert train["aspect"]["max"] == pytest.approx(10.0)
    assert train["shorter_side_buckets"] == {
        "<16": 1,
        "16-31": 2,
        "32-63": 4,
        "64-127": 0,
        "128-255": 0,
        "256-511": 0,
        "512-1023": 0,
        ">=1024": 0,
    }
    assert train["aspect_buckets"] == {
        "tall (<1/4)": 0,
        "portrait [1/4, 3/4)": 2,
        "square [3/4, 4/3]": 4,
        "landscape (4/3, 4]": 0,
        "wide (>4)": 1,
    }
    test = profile["splits"]["test"]
    assert test["per_class"] == {"cat": 0, "dog": 2, "fox": 0}
    assert test["imbalance_ratio"] == 1.0
    assert test["shorter_side_buckets"]["256-511"] == 1 and test["shorter_side_buckets"]["32-63"] == 1
    assert test["aspect_buckets"]["landscape (4/3, 4]"] == 1
    assert test["flags"] == {"grayscale": 0, "alpha": 0, "cmyk": 0, "16-bit": 0}

    [broken] = profile["broken"]
    assert (broken["split"], broken["path"]) == ("train", str(tmp_path / "broken.jpg"))
    assert "UnidentifiedImageError" in broken["reason"]
    assert profile["tiny"] == [
        {"split": "train", "path": str(tmp_path / "tiny.png"), "width": 10, "height": 10}
    ]
    assert profile["extreme"] == [
        {"split": "train", "path": str(tmp_path / "wide.png"), "width": 200, "height": 20, "aspect": 10.0}
    ]


def test_truncated_file_found_by_the_checker(tmp_path):
    """A file whose header reads fine but whose pixels end early: only decoding finds it."""
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert Image.open(cut).size == (64, 64)
    profile = profile_dataset({"train": [(whole, 0), (cut, 0)]}, ["x"])
    assert [b["path"] for b in profile["broken"]] == [str(cut)]
    assert profile["splits"]["train"]["readable"] == 1
    assert profile["splits"]["train"]["width"] == {"min": 64, "median": 64, "max": 64}


def test_exif_rotation_alpha_by_transparency_and_tall(tmp_path):
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # turned 90 degrees: training sees it 30 wide, 200 high
    Image.new("RGB", (200, 30)).save(rotated, exif=exif)
    palette = tmp_path / "palette.png"
    Image.new("P", (20, 20)).save(palette, transparency=0)
    profile = profile_dataset({"train": [(rotated, 0), (palette, 1)]}, ["a", "b"])
    assert profile["extreme"] == [
        {"split": "train", "path": str(rotated), "width": 30, "height": 200, "aspect": pytest.approx(0.15)}
    ]
    assert profile["splits"]["train"]["aspect_buckets"]["tall (<1/4)"] == 1
    assert profile["splits"]["train"]["flags"]["alpha"] == 1
    assert profile["splits"]["train"]["modes"] == {"P": 1, "RGB": 1}


def test_empty_split_and_bad_label(tmp_path):
    profile = profile_dataset({"val": []}, CLASSES)
    assert profile["splits"]["val"]["imbalance_ratio"] is None
    assert profile["splits"]["val"]["width"] == {"min": None, "median": None, "max": None}
    with pytest.raises(ValueError, match="label 3"):
        profile_dataset({"train": [(save(tmp_path / "a.png", "RGB", (8, 8)), 3)]}, CLASSES)


def test_bucket_edges():
    assert side_bucket(TINY_SIDE - 1) == "<16" and side_bucket(TINY_SIDE) == "16-31"
    assert side_bucket(1023) == "512-1023" and side_bucket(1024) == ">=1024"
    tall, portrait, square, landscape, wide = (name for name, _ in ASPECT_BUCKETS)
    found = [aspect_bucket(a) for a in (0.2, 0.25, 0.75, 4 / 3, 4.0, 4.01)]
    assert found == [tall, portrait, square, square, landscape, wide]
