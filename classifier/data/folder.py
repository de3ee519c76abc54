"""ImageFolder trees: root/train/<class>/*, root/val/<class>/* and optional root/test/<class>/*."""

from __future__ import annotations

import itertools
import logging
from functools import cached_property
from pathlib import Path

from classifier.data.base import ClassificationDataModule
from classifier.data.images import ImageFileDataset, has_image_files, is_ignored, iter_image_files
from classifier.data.sizing import SAMPLE_SIZE, infer_input_side, spread_sample
from classifier.data.splits import Splits
from classifier.data.verify import checked_dataset
from classifier.errors import UserError
from classifier.files import expand_path

log = logging.getLogger(__name__)


def existing_root(root: str | Path | None, key: str = "data.root") -> Path:
    if root is None or str(root) in ("", "???"):
        raise UserError(f"{key} is not set: point it at your data, e.g. {key}=/path/to/images")
    path = expand_path(root)
    if not path.exists():
        raise UserError(f"{key}={root} does not exist (looked for {path.resolve()})")
    return path


def is_image_folder_tree(root: Path) -> bool:
    """True when `root` holds a train/ folder of class folders (the ImageFolder layout)."""
    return (root / "train").is_dir()


def train_dir_of(root: Path) -> Path:
    """root/train, or root itself when it holds class folders directly (then val comes from val_split)."""
    if is_image_folder_tree(root):
        return root / "train"
    if root.is_dir() and any(has_image_files(d, tree=root) for d in class_dirs(root)):
        log.info("%s has no train/ folder: using its class folders as the training split", root)
        return root
    raise UserError(
        f"data.root={root} has no train/ folder of class folders (expected {root}/train/<class>/<image>)"
    )


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def find_class_names(train_dir: Path) -> list[str]:
    """Sorted class folder names of `train_dir`.

    Raises:
        UserError: there are no class folders, or one of them holds no image.
    """
    dirs = class_dirs(train_dir)
    if not dirs:
        raise UserError(f"{train_dir} has no class folders (expected {train_dir}/<class>/<image>)")
    empty = [str(d) for d in dirs if not has_image_files(d, tree=train_dir)]
    if empty:
        raise UserError(f"class folder(s) with no images: {', '.join(empty)}")
    return [d.name for d in dirs]


def sample_image_files(train_dir: Path, count: int = SAMPLE_SIZE) -> list[Path]:
    """About `count` image files spread over the class folders (the first few of each, from up to
    `count` folders): enough to judge the typical image without listing a tree of millions, which
    reading the split does once anyway."""
    dirs = spread_sample(class_dirs(train_dir), count)
    per_class = -(-count // max(1, len(dirs)))
    return [path for d in dirs for path in itertools.islice(iter_image_files(d, train_dir), per_class)]


def read_split(split_dir: Path, class_names: list[str], on_bad_image: str) -> ImageFileDataset:
    """The images of one split folder, labelled by their class folder.

    Raises:
        UserError: a class folder is not one of `class_names`, or no readable image is left.
    """
    index = {name: i for i, name in enumerate(class_names)}
    dirs = class_dirs(split_dir)
    unknown = [d.name for d in dirs if d.name not in index]
    if unknown:
        raise UserError(f"{split_dir} has class folder(s) not in the training classes: {', '.join(unknown)}")
    skipped_links: list[tuple[Path, Path]] = []
    samples = [(path, index[d.name]) for d in dirs for path in iter_image_files(d, split_dir, skipped_links)]
    if skipped_links:
        warn_skipped_links(split_dir, skipped_links, len(samples))
    dataset = checked_dataset(samples, on_bad_image, split_dir)
    if not len(dataset):
        raise UserError(f"{split_dir} has no readable images")
    return dataset


def warn_skipped_links(split_dir: Path, links: list[tuple[Path, Path]], found: int, shown: int = 10) -> None:
    listing = ", ".join(f"{link} -> {target}" for link, target in links[:shown])
    more = f" and {len(links) - shown} more" if len(links) > shown else ""
    log.warning(
        "%s: not following %d symlinked folder(s) that lead back into the split, its parents or a folder"
        " already read (a loop, or the same images again under another class): %s%s; %d image files found",
        split_dir,
        len(links),
        listing,
        more,
        found,
    )


def read_image_folder(root: Path, train_dir: Path, class_names: list[str], on_bad_image: str) -> Splits:
    """train from `train_dir`; val and test from root/val and root/test when `train_dir` is root/train."""
    splits = {"train": read_split(train_dir, class_names, on_bad_image)}
    if train_dir != root:
        for name in ("val", "test"):
            if (root / name).is_dir():
                splits[name] = read_split(root / name, class_names, on_bad_image)
    return Splits(**splits)


class ImageFolderDataModule(ClassificationDataModule):
    """Any folder of images sorted into one sub-folder per class."""

    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = root

    def native_img_size(self) -> int:
        train_dir = self.train_dir
        return infer_input_side(sample_image_files(train_dir), f"in {train_dir}", relative_to=train_dir)

    @cached_property
    def root_dir(self) -> Path:
        return existing_root(self.root)

    @cached_property
    def train_dir(self) -> Path:
        return train_dir_of(self.root_dir)

    def read_class_names(self) -> list[str]:
        return find_class_names(self.train_dir)

    def image_root(self) -> Path:
        return self.root_dir

    def load_splits(self, class_names: list[str]) -> Splits:
        return read_image_folder(self.root_dir, self.train_dir, class_names, self.on_bad_image)
