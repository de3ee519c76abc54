"""A CSV of image paths and labels, with an optional split column."""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

from classifier.data.base import ClassificationDataModule, Splits
from classifier.data.images import ImageFileDataset, largest_side
from classifier.data.transforms import native_side
from classifier.data.verify import drop_unreadable
from classifier.errors import UserError

SPLITS = ("train", "val", "test")


def _sort_labels(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), others alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class CSVDataModule(ClassificationDataModule):
    """Images listed in a CSV file.

    Args:
        csv: the CSV file; one row per image.
        root: folder that relative paths start from; None is the CSV file's folder.
        path_column, label_column: names of the image-path and class-label columns.
        split_column: optional column with train / val / test per row; without it every row trains
            and validation comes from `val_split`.
    """

    def __init__(
        self,
        csv: str,
        root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str = "split",
        **kwargs,
    ):
        # Set before the base __init__, which reads native_img_size.
        self.csv_path = csv
        self.root = root
        self.path_column, self.label_column, self.split_column = path_column, label_column, split_column
        super().__init__(**kwargs)

    @property
    def native_img_size(self) -> int:
        base = self._image_root()
        return native_side(largest_side(base / row[self.path_column].strip() for row in self.rows[:32]))

    @cached_property
    def rows(self) -> list[dict[str, str]]:
        if self.csv_path in (None, "", "???"):
            raise UserError("data.csv is not set: point it at a CSV with path,label columns")
        path = Path(self.csv_path).expanduser()
        if not path.is_file():
            raise UserError(f"data.csv={self.csv_path} does not exist (looked for {path.resolve()})")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for key, column in (
                ("data.path_column", self.path_column),
                ("data.label_column", self.label_column),
            ):
                if column not in columns:
                    raise UserError(
                        f"data.csv={self.csv_path} has no '{column}' column (columns: {', '.join(columns)});"
                        f" set {key}"
                    )
            rows = [row for row in reader if any((value or "").strip() for value in row.values())]
        for line, row in enumerate(rows, start=2):
            if not (row[self.path_column] or "").strip() or not (row[self.label_column] or "").strip():
                raise UserError(f"data.csv={self.csv_path} line {line}: empty path or label")
            split = self._split_of(row)
            if split not in SPLITS:
                raise UserError(
                    f"data.csv={self.csv_path} line {line}: split '{split}' is not one of {', '.join(SPLITS)}"
                )
        if not rows:
            raise UserError(f"data.csv={self.csv_path} has no rows")
        return rows

    def _split_of(self, row: dict[str, str]) -> str:
        return (row.get(self.split_column) or "train").strip().lower()

    @cached_property
    def class_names(self) -> list[str]:
        return _sort_labels(
            {row[self.label_column].strip() for row in self.rows if self._split_of(row) == "train"}
        )

    def _image_root(self) -> Path:
        return Path(self.root).expanduser() if self.root else Path(self.csv_path).expanduser().parent

    def load_splits(self) -> Splits:
        index = {name: i for i, name in enumerate(self.class_names)}
        base = self._image_root()
        samples: dict[str, list] = {name: [] for name in SPLITS}
        for row in self.rows:
            label = row[self.label_column].strip()
            split = self._split_of(row)
            if label not in index:
                raise UserError(
                    f"data.csv={self.csv_path}: label '{label}' in {split} rows never appears in train"
                )
            samples[split].append((base / row[self.path_column].strip(), index[label]))
        datasets = {}
        for split, items in samples.items():
            if items:
                kept = drop_unreadable(items, self.on_bad_image, f"{self.csv_path} ({split})")
                if not kept:
                    raise UserError(f"data.csv={self.csv_path}: no readable images in the {split} rows")
                datasets[split] = ImageFileDataset(kept)
        if "train" not in datasets:
            raise UserError(f"data.csv={self.csv_path} has no train rows")
        return Splits(**datasets)
