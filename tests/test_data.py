"""Data modules on generated files: layouts, splits, transforms, and every kind of bad input."""

from __future__ import annotations

import logging
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import ready, write_image_folder
from PIL import Image
from torchvision.transforms import v2

from classifier.data import CIFAR10DataModule, CSVDataModule, DigitsDataModule, ImageFolderDataModule, verify
from classifier.data.images import load_rgb, to_rgb
from classifier.data.loaders import default_num_workers
from classifier.errors import UserError


def folder_module(root, **kwargs):
    return ready(ImageFolderDataModule(root=str(root), img_size=32, num_workers=0, batch_size=4, **kwargs))


def test_digits_fixed_split_and_transforms():
    dm = ready(DigitsDataModule(batch_size=32))
    sizes = {split: len(dm.dataset(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 1149, "val": 288, "test": 360}
    again = ready(DigitsDataModule(batch_size=32))
    assert again.dataset("val").targets == dm.dataset("val").targets  # the same split every time
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.min() >= 0 and labels.max() <= 9
    assert dm.num_workers == 0  # in memory: no worker processes


def test_imagefolder_splits_classes_and_normalisation(tmp_path):
    root = write_image_folder(tmp_path, {"train": 10, "test": 2}, size=40)
    dm = folder_module(root, val_split=0.2, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert dm.class_names == ["cat", "dog", "fox"]
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [24, 6, 6]
    val_labels = sorted(dm.dataset("val").dataset.targets[i] for i in dm.dataset("val").indices)
    assert val_labels == [0, 0, 1, 1, 2, 2]  # stratified
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 32, 32)
    # a red image (220, 40, 40) +-25 normalised with mean 0.5, std 0.25: R ~ +1.45, G and B ~ -1.37
    red = images[labels == 0].mean(dim=(0, 2, 3))
    assert red[0] == pytest.approx((220 / 255 - 0.5) / 0.25, abs=0.15)
    assert red[1] == pytest.approx((40 / 255 - 0.5) / 0.25, abs=0.15)


def test_input_side_follows_small_images_and_is_224_for_photos(tmp_path):
    small = write_image_folder(tmp_path / "small", {"train": 2}, size=28)
    dm = ready(ImageFolderDataModule(root=str(small)))
    assert dm.input_spec.img_size == 28
    assert any(isinstance(t, v2.RandomCrop) for t in dm.train_transform.transforms)  # pad-and-crop
    photos = write_image_folder(tmp_path / "photos", {"train": 2}, size=100)
    dm = ready(ImageFolderDataModule(root=str(photos)))
    assert dm.input_spec.img_size == 224
    assert any(isinstance(t, v2.RandomResizedCrop) for t in dm.train_transform.transforms)
    assert ready(ImageFolderDataModule(root=str(photos), img_size=96)).input_spec.img_size == 96


def test_class_folders_without_train_dir_are_the_training_split(tmp_path):
    write_image_folder(tmp_path, {"flat": 5})
    dm = folder_module(tmp_path / "flat", val_split=0.2)
    assert dm.class_names == ["cat", "dog", "fox"]
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 15
    assert not dm.has_test


def test_junk_files_and_hidden_folders_are_ignored(tmp_path):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2})
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "dog" / "Thumbs.db").write_bytes(b"\0\1")
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (8, 8)).save(hidden / "x.png")
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / ".hidden.png")
    macos = root / "train" / "__MACOSX" / "cat"  # what unzipping a macOS archive leaves
    macos.mkdir(parents=True)
    (macos / "._000.png").write_bytes(b"resource fork")
    dm = folder_module(root)
    assert dm.class_names == ["cat", "dog", "fox"]
    paths = [path for path, _ in dm.dataset("train").samples]
    assert len(paths) == 12 and all(path.endswith((".jpg", ".png")) for path in paths)
    assert not any("ipynb" in path or "/." in path or "MACOSX" in path for path in paths)


def write_broken_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not a png")
    good = folder / "good.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, quality=95)
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return ["empty.jpg", "text.png", "truncated.jpg"]


def test_broken_images_are_skipped_with_a_warning_naming_each(tmp_path, caplog):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2})
    broken = write_broken_images(root / "train" / "dog")
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root)
        train = dm.dataset("train")
    assert len(train) == 13  # 12 generated + good.jpg
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in broken:
        assert sum(name in message for message in warnings) == 1
    assert all("skipping unreadable image" in message for message in warnings)


def test_readable_images_are_decoded_once_until_they_change(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2})
    assert len(folder_module(root).dataset("train")) == 12
    assert list((tmp_path / "cache" / "classifier" / "readable-images").glob("*.json"))

    decoded = []
    real_decode = verify._decode
    monkeypatch.setattr(verify, "_decode", lambda path: decoded.append(path) or real_decode(path))
    assert len(folder_module(root).dataset("train")) == 12
    assert decoded == []  # all known readable: only stat() was needed
    changed = root / "train" / "cat" / "000.png"
    changed.write_bytes(b"now broken")
    assert len(folder_module(root).dataset("train")) == 11
    assert decoded == [str(changed)]


def test_on_bad_image_error_lists_all_of_them(tmp_path):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2})
    broken = write_broken_images(root / "train" / "dog")
    dm = ImageFolderDataModule(root=str(root), img_size=32, on_bad_image="error")  # reads nothing yet
    with pytest.raises(UserError) as info:
        dm.setup()
    message = str(info.value)
    assert "3 unreadable image(s)" in message and "\n" not in message
    for name in broken:
        assert name in message


@pytest.mark.parametrize(
    "mode",
    ["L", "RGBA", "P", "P-transparent", "CMYK", "I;16", "LA", "1", "F"],
)
def test_odd_image_modes_are_converted_to_rgb(tmp_path, mode):
    path = tmp_path / ("image.tiff" if mode in ("CMYK", "F") else "image.png")
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)  # 16-bit mid-grey
    elif mode == "P-transparent":
        img = Image.new("P", (8, 8), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        img.info["transparency"] = 0
        img.save(path, transparency=0)
    elif mode == "F":
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    else:
        Image.new(
            mode, (8, 8), {"RGBA": (10, 200, 30, 255), "LA": (128, 255), "CMYK": (0, 0, 0, 0)}.get(mode, 128)
        ).save(path)
    img = load_rgb(path)
    pixels = np.asarray(img)
    assert img.mode == "RGB" and pixels.shape == (8, 8, 3)
    if mode == "I;16":
        assert 120 <= pixels.mean() <= 135  # rescaled, not clipped to white
    if mode == "P-transparent":
        assert tuple(pixels[0, 0]) == (10, 200, 30)  # an opaque palette colour stays as it is
    if mode == "F":
        assert 120 <= pixels.mean() <= 135


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(np.asarray(to_rgb(img))[0, 0]) == (255, 255, 255)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"data.root=.*nowhere does not exist \(looked for /"):
        folder_module(tmp_path / "nowhere").class_names


def test_root_without_class_folders_says_what_was_expected(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="has no train/ folder of class folders"):
        folder_module(tmp_path).class_names


def test_empty_class_folder_is_named(tmp_path):
    root = write_image_folder(tmp_path, {"train": 3})
    (root / "train" / "zebra").mkdir()
    with pytest.raises(UserError, match="class folder.* with no images: .*zebra"):
        folder_module(root).class_names


def test_val_class_unknown_to_train_is_named(tmp_path):
    root = write_image_folder(tmp_path, {"train": 3})
    write_image_folder(tmp_path / "other", {"val": 2}, classes=("cat", "wolf"))
    (tmp_path / "other" / "val").rename(root / "val")
    with pytest.raises(UserError, match="not in the training classes: wolf"):
        folder_module(root).setup()


def test_csv_resolves_paths_orders_numeric_labels_and_reports_mistakes(tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"x": 4}, classes=("a", "b", "c"))
    files = sorted(root.rglob("*.*"))
    labels = {"a": "2", "b": "10", "c": "9"}
    (root / "list.csv").write_text(
        "file,y\n" + "\n".join(f"{p.relative_to(root)},{labels[p.parent.name]}" for p in files) + "\n"
    )
    dm = ready(
        CSVDataModule(
            csv=str(root / "list.csv"), path_column="file", label_column="y", img_size=32, val_split=0.25
        )
    )
    assert dm.class_names == ["2", "9", "10"]
    assert len(dm.dataset("train")) == 9 and len(dm.dataset("val")) == 3
    with pytest.raises(
        UserError, match=r"has no 'path' column: split at ',', its header reads \['file', 'y'\]"
    ):
        ready(CSVDataModule(csv=str(root / "list.csv"))).class_names
    with pytest.raises(UserError, match="data.csv=.*missing.csv does not exist"):
        ready(CSVDataModule(csv=str(tmp_path / "missing.csv"))).class_names


def test_csv_missing_image_file_is_skipped_like_a_broken_one(tmp_path, caplog):
    root = write_image_folder(tmp_path, {"x": 3}, classes=("a", "b"))
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (root / "l.csv").write_text("path,label\n" + "\n".join(rows + ["x/a/gone.jpg,a"]) + "\n")
    with caplog.at_level(logging.WARNING):
        dm = ready(CSVDataModule(csv=str(root / "l.csv"), img_size=32, val_split=0.34))
        dm.setup()
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 6
    assert any("gone.jpg" in r.getMessage() for r in caplog.records)


def test_cifar_imagefolder_layout_is_accepted(tmp_path):
    root = write_image_folder(tmp_path, {"train": 5, "test": 2}, size=32)
    dm = ready(CIFAR10DataModule(root=str(root)))
    assert dm.class_names == ["cat", "dog", "fox"]
    assert dm.has_test and len(dm.dataset("test")) == 6
    assert not dm.in_memory and dm.num_workers == default_num_workers()  # files: workers decode them


def test_cifar_offline_and_missing_says_where_files_go(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("classifier.data.cifar.download_and_extract_archive", offline)
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar"))  # reads nothing
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "\n" not in message
    assert f"CIFAR-10 is not in data.root={tmp_path / 'cifar'}" in message
    assert "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message
