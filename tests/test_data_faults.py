"""Data modules on hostile input: symlink loops, atypical image sizes, decompression bombs, CSVs in
other encodings and separators, non-numeric keys, and paths written with ~ or $VAR."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ready, write_cifar_batches, write_image_folder
from PIL import Image

from classifier.data import CIFAR10DataModule, CSVDataModule, DigitsDataModule, ImageFolderDataModule
from classifier.errors import UserError


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    return ready(ImageFolderDataModule(root=str(root), num_workers=0, batch_size=4, **kwargs))


def finishes_within(seconds: float, work: Callable):
    """`work()`'s result, failing (instead of hanging the suite) when it takes longer than `seconds`."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def set_up(root: Path) -> ImageFolderDataModule:
    dm = folder_module(root, img_size=32)
    dm.setup()
    return dm


def split_labels(dm: ImageFolderDataModule, split: str) -> Counter:
    return Counter(dm.class_names[label] for label in dm.dataset(split).targets)


def warning_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def write_solid(path: Path, side: int, height: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, height or side), (90, 140, 200)).save(path)
    return path


# -- symlink loops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["..", "../.."])
def test_a_symlink_loop_in_a_class_folder_is_skipped_with_one_warning(tmp_path, caplog, target):
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 2})
    link = root / "train" / "cat" / "loop"
    link.symlink_to(target)
    with caplog.at_level(logging.INFO):
        dm = finishes_within(10, lambda: set_up(root))
    assert split_labels(dm, "train") == {"cat": 8, "dog": 8, "fox": 8}
    assert len(dm.dataset("val")) == 6
    about_links = [line for line in warning_lines(caplog) if "symlink" in line]
    assert len(about_links) == 1
    assert str(link) in about_links[0] and os.path.realpath(link) in about_links[0]
    assert any("3 classes; train 24, val 6" in r.getMessage() for r in caplog.records)


def test_two_loops_and_a_cycle_between_outside_folders_finish_with_true_counts(tmp_path, caplog):
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 2})
    (root / "train" / "cat" / "loop").symlink_to("..")
    (root / "train" / "dog" / "up").symlink_to("../..")
    # Two folders outside the tree that link to each other, reached from fox: each is read once.
    outside = write_image_folder(tmp_path / "outside", {"a": 2, "b": 3}, classes=("x",))
    (outside / "a" / "x" / "to_b").symlink_to(outside / "b" / "x")
    (outside / "b" / "x" / "to_a").symlink_to(outside / "a" / "x")
    (root / "train" / "fox" / "more").symlink_to(outside / "a" / "x")
    with caplog.at_level(logging.WARNING):
        dm = finishes_within(10, lambda: set_up(root))
    assert split_labels(dm, "train") == {"cat": 8, "dog": 8, "fox": 8 + 2 + 3}
    about_links = [line for line in warning_lines(caplog) if "symlink" in line]
    assert len(about_links) == 1
    for link in ("cat/loop", "dog/up", "b/x/to_a"):
        assert link in about_links[0]


def test_a_symlink_to_a_folder_outside_the_tree_is_followed(tmp_path, caplog):
    root = write_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    extra = write_image_folder(tmp_path / "elsewhere", {"more": 5}, classes=("cat",))
    (root / "train" / "cat" / "linked").symlink_to(extra / "more" / "cat")
    (root / "train" / "dog" / "one.png").symlink_to(extra / "more" / "cat" / "000.png")  # a linked file
    with caplog.at_level(logging.WARNING):
        dm = set_up(root)
    assert split_labels(dm, "train") == {"cat": 4 + 5, "dog": 4 + 1, "fox": 4}
    assert not [line for line in warning_lines(caplog) if "symlink" in line]


# -- input size from the typical image -------------------------------------------------------------


def test_one_large_image_among_small_ones_keeps_the_small_side(tmp_path, caplog):
    root = write_image_folder(tmp_path, {"train": 10}, size=32)
    big = write_solid(root / "train" / "cat" / "000_big.png", 1000)
    with caplog.at_level(logging.INFO):
        folder = ready(ImageFolderDataModule(root=str(root)))
    assert folder.input_spec.img_size == 32
    decision = [r.getMessage() for r in caplog.records if r.getMessage().startswith("input side")]
    assert decision == [
        f"input side 32 px: median image side 32 px over 31 sampled images in {root / 'train'}"
        " (data.img_size overrides)"
    ]
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / "train").rglob("*.*"))]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    assert str(big.relative_to(root)) in "\n".join(rows)
    assert ready(CSVDataModule(csv=str(root / "list.csv"))).input_spec.img_size == 32


def test_mostly_large_images_train_at_224_even_when_the_first_class_is_small(tmp_path, caplog):
    for i in range(40):
        write_solid(tmp_path / "train" / "a_small" / f"{i:03d}.png", 16)
    for name in ("b_large", "c_large"):
        for i in range(50):
            write_solid(tmp_path / "train" / name / f"{i:03d}.png", 80, 70)
    with caplog.at_level(logging.INFO):
        dm = ready(ImageFolderDataModule(root=str(tmp_path)))
    assert dm.input_spec.img_size == 224
    assert any("median image side 80 px over 64 sampled images" in r.getMessage() for r in caplog.records)


def test_tiny_images_name_the_images_not_a_key_the_user_never_set(tmp_path):
    for name in ("cat", "dog"):
        for i in range(3):
            write_solid(tmp_path / "train" / name / f"{i}.png", 1)
    with pytest.raises(UserError) as info:
        ready(ImageFolderDataModule(root=str(tmp_path)))
    message = str(info.value)
    assert message.startswith(f"images in {tmp_path / 'train'} are too small to classify (median side 1 px")
    assert "cat/0.png" in message and "set data.img_size to upscale them" in message
    assert "data.img_size=1" not in message and "\n" not in message
    rows = "\n".join(f"train/{name}/{i}.png,{name}" for name in ("cat", "dog") for i in range(3))
    (tmp_path / "l.csv").write_text("path,label\n" + rows + "\n")
    with pytest.raises(UserError, match=rf"images listed in {tmp_path / 'l.csv'} are too small .*1 px"):
        ready(CSVDataModule(csv=str(tmp_path / "l.csv")))
    with pytest.raises(UserError, match="data.img_size=4 is too small"):
        ready(ImageFolderDataModule(root=str(tmp_path), img_size=4))
    assert ready(ImageFolderDataModule(root=str(tmp_path), img_size=16)).input_spec.img_size == 16


# -- decompression bombs ---------------------------------------------------------------------------


def test_images_over_pils_limits_are_named_and_its_warning_silenced(tmp_path, monkeypatch, caplog, recwarn):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2}, size=20)
    large = write_solid(root / "train" / "cat" / "large.png", 40)  # 1,600 pixels: over the warning limit
    bomb = write_solid(root / "train" / "dog" / "bomb.png", 100)  # 10,000: over twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root)  # samples image sizes too
        train = dm.dataset("train")
        at = [path for path, _ in train.samples].index(str(large))
        loaded = [train[at][0].size for _ in range(3)]  # as each epoch reads it
        batches = sum(1 for _ in dm.train_dataloader())
    assert loaded == [(40, 40)] * 3 and batches > 0
    assert split_labels(dm, "train") == {"cat": 5, "dog": 4, "fox": 4}
    lines = warning_lines(caplog)
    about_large = [line for line in lines if str(large) in line]
    assert len(about_large) == 1 and "40x40" in about_large[0] and "1600 pixels" in about_large[0]
    assert [line for line in lines if str(bomb) in line] == [
        f"skipping unreadable image {bomb} (DecompressionBombError: Image size (10000 pixels) exceeds limit"
        " of 2000 pixels, could be decompression bomb DOS attack.)"
    ]
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_large_images_are_reported_again_on_the_next_run(tmp_path, monkeypatch, caplog):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2}, size=20)
    large = write_solid(root / "train" / "cat" / "large.png", 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the second run finds the other files in the readable-image cache
            folder_module(root, img_size=32).setup()
    assert sum(str(large) in line for line in warning_lines(caplog)) == 2


def test_a_bomb_is_listed_by_on_bad_image_error(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, {"train": 4, "val": 2}, size=20)
    bomb = write_solid(root / "train" / "dog" / "bomb.png", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=rf"1 unreadable image\(s\) .*{bomb} \(DecompressionBombError"):
        folder_module(root, img_size=32, on_bad_image="error").setup()


# -- CSV encodings, empty files, delimiters --------------------------------------------------------


def write_csv_images(root: Path) -> list[tuple[str, str]]:
    """Images under root/imgs and their (relative path, label) rows; one label is 'é'."""
    write_image_folder(root / "imgs", {"x": 3}, classes=("cat", "é"), size=16)
    return [(f"imgs/x/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(root.rglob("*.*"))]


def test_csv_in_another_encoding_names_the_line_and_data_encoding(tmp_path):
    rows = write_csv_images(tmp_path)
    text = "path,label\n" + "".join(f"{path},{label}\n" for path, label in rows)
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    first_bad_line = 2 + [label for _, label in rows].index("é")
    with pytest.raises(UserError) as info:
        ready(CSVDataModule(csv=str(tmp_path / "l.csv"), img_size=32)).class_names
    message = str(info.value)
    assert message.startswith(f"data.csv={tmp_path / 'l.csv'} line {first_bad_line} is not valid utf-8")
    assert "data.encoding" in message and "\\x" not in message and "\n" not in message
    dm = ready(CSVDataModule(csv=str(tmp_path / "l.csv"), encoding="latin-1", img_size=32))
    assert dm.class_names == ["cat", "é"]
    (tmp_path / "bom.csv").write_bytes(text.encode("utf-8-sig"))
    assert ready(CSVDataModule(csv=str(tmp_path / "bom.csv"), img_size=32)).class_names == ["cat", "é"]
    with pytest.raises(UserError, match="data.encoding='klingon' is not an encoding Python knows"):
        ready(CSVDataModule(csv=str(tmp_path / "l.csv"), encoding="klingon", img_size=32)).class_names


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n"])
def test_an_empty_csv_says_so(tmp_path, content):
    (tmp_path / "l.csv").write_bytes(content)
    with pytest.raises(UserError, match=rf"^data.csv={tmp_path / 'l.csv'} is empty$"):
        ready(CSVDataModule(csv=str(tmp_path / "l.csv"), img_size=32)).class_names


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_the_delimiter_is_detected_from_the_header(tmp_path, delimiter):
    rows = write_csv_images(tmp_path)
    lines = [f"path{delimiter}label", *(f"{path}{delimiter}{label}" for path, label in rows)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    dm = ready(CSVDataModule(csv=str(tmp_path / "l.csv"), img_size=32, val_split=0.34))
    assert dm.class_names == ["cat", "é"]
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 6


def test_an_explicit_delimiter_is_used_and_a_wrong_one_says_what_was_read(tmp_path):
    rows = write_csv_images(tmp_path)
    lines = ["path;label;note", *(f"{path};{label};a,b" for path, label in rows)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    assert ready(CSVDataModule(csv=str(tmp_path / "l.csv"), delimiter=";", img_size=32)).class_names == [
        "cat",
        "é",
    ]
    with pytest.raises(UserError) as info:
        ready(CSVDataModule(csv=str(tmp_path / "l.csv"), delimiter=",", img_size=32)).class_names
    message = str(info.value)
    assert "has no 'path' column" in message and "path;label;note" in message and "','" in message
    for key in ("data.delimiter", "data.path_column", "data.label_column"):
        assert key in message


# -- non-numeric keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", "abc", "data.batch_size='abc' is not an integer"),
        ("batch_size", 2.5, "data.batch_size=2.5 is not an integer"),
        ("num_workers", "many", "data.num_workers='many' is not an integer"),
        ("img_size", "big", "data.img_size='big' is not an integer"),
        ("val_split", "tenth", "data.val_split='tenth' is not a number"),
        ("split_seed", "s", "data.split_seed='s' is not an integer"),
        ("crop_pct", "most", "data.crop_pct='most' is not a number"),
        ("crop_scale", ["a", 1.0], "data.crop_scale[0]='a' is not a number"),
        ("mean", [0.5, "x", 0.5], "data.mean[1]='x' is not a number"),
        ("std", [0.2, 0.2, True], "data.std[2]=True is not a number"),
        ("mean", 0.5, "data.mean=0.5 must be a list of 3 numbers"),
    ],
)
def test_non_numeric_keys_name_the_key(key, value, message):
    with pytest.raises(UserError) as info:
        ready(DigitsDataModule(**{key: value}))
    assert str(info.value).startswith(message)


def test_numeric_strings_are_accepted_and_range_checks_kept():
    dm = ready(
        DigitsDataModule(batch_size="16", num_workers="0", val_split="0.2", crop_pct="0.9", mean=["0.1"] * 3)
    )
    assert (dm.batch_size, dm.num_workers, dm.val_split, dm.input_spec.crop_pct) == (16, 0, 0.2, 0.9)
    assert dm.input_spec.mean == (0.1, 0.1, 0.1)
    with pytest.raises(UserError, match="data.batch_size=0 must be at least 1"):
        ready(DigitsDataModule(batch_size=0))
    with pytest.raises(UserError, match=r"data.val_split=1.5 must be in \[0, 1\)"):
        ready(DigitsDataModule(val_split="1.5"))


# -- ~ and $VAR in path keys -----------------------------------------------------------------------


def test_paths_expand_home_and_environment_variables(tmp_path, monkeypatch):
    home, data = tmp_path / "home", tmp_path / "data"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MY_DATA", str(data))
    write_image_folder(home / "imgs", {"train": 3, "val": 2}, size=16)
    write_image_folder(data / "imgs", {"train": 3, "val": 2}, size=16)
    for root in ("~/imgs", "$MY_DATA/imgs", "${MY_DATA}/imgs"):
        dm = folder_module(root, img_size=32)
        dm.setup()
        assert len(dm.dataset("train")) == 9, root
    rows = [
        f"train/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((data / "imgs/train").rglob("*.*"))
    ]
    (home / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    dm = ready(CSVDataModule(csv="~/l.csv", root="$MY_DATA/imgs", img_size=32, val_split=0.34))
    dm.setup()
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 9
    write_cifar_batches(home / "cifar")
    assert len(ready(CIFAR10DataModule(root="~/cifar", download=False)).class_names) == 10
    with pytest.raises(
        UserError, match=rf"data.root=\$MY_DATA/none does not exist \(looked for {data}/none\)"
    ):
        folder_module("$MY_DATA/none").class_names


# -- the new keys from the command line ------------------------------------------------------------


def test_csv_keys_and_numeric_mistakes_from_the_command_line(compose_train, tmp_path):
    from classifier.engine.build import build_datamodule
    from classifier.errors import describe_user_error

    rows = write_csv_images(tmp_path)
    text = "path;label\n" + "".join(f"{path};{label}\n" for path, label in rows)
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    csv_keys = ["data=csv", f"data.csv={tmp_path / 'l.csv'}", "data.img_size=32", "data.num_workers=0"]
    cfg = compose_train(*csv_keys, "data.delimiter=';'", "data.encoding=latin-1")
    assert build_datamodule(cfg.data).class_names == ["cat", "é"]
    cfg = compose_train(*csv_keys, "data.encoding=latin-1", "data.batch_size=abc")
    with pytest.raises(Exception) as info:
        build_datamodule(cfg.data)
    assert describe_user_error(info.value) == "data.batch_size='abc' is not an integer"


def test_many_files_are_checked_in_processes_with_the_same_findings(tmp_path, monkeypatch):
    from conftest import write_image_folder

    import classifier.data.verify as verify

    root = write_image_folder(tmp_path / "many", {"train": 6})
    broken = root / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    paths = sorted(root.rglob("*.*"))
    threads = verify.check_images(paths)
    monkeypatch.setattr(verify, "PROCESS_POOL_FILES", 1)
    processes = verify.check_images(paths, workers=2)
    assert [p for p, _ in processes.unreadable] == [p for p, _ in threads.unreadable] == [broken]
    assert processes.unreadable[0][1] == threads.unreadable[0][1]
