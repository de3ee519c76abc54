"""A CSV of image paths and labels, with an optional split column."""

from __future__ import annotations

import codecs
import csv
import io
from functools import cached_property
from pathlib import Path

from classifier.data.base import ClassificationDataModule
from classifier.data.sizing import infer_input_side, spread_sample
from classifier.data.splits import Splits
from classifier.data.verify import checked_dataset
from classifier.errors import UserError
from classifier.files import expand_path

SPLITS = ("train", "val", "test")
# Separators tried on the header line when data.delimiter is null, in this order.
DELIMITERS = (",", ";", "\t", "|")
# Ways to write a tab on a command line, where a literal one is hard to type.
TAB_NAMES = ("\\t", "tab")


def _sort_labels(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), others alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def decode_csv(raw: bytes, encoding: str, shown: str) -> str:
    """`raw` as text; a UTF-8 byte-order mark is dropped (spreadsheets write one).

    Raises:
        UserError: `encoding` is unknown, or names the first line that is not valid in it.
    """
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise UserError(
            f"data.encoding={encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)"
        ) from None
    if codec == "utf-8" and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        # The exception's own text quotes raw bytes, which tell a user nothing: name the line instead.
        raise UserError(
            f"{shown} line {line} is not valid {encoding}: set data.encoding to the file's encoding"
            " (e.g. data.encoding=latin-1 or cp1252)"
        ) from None


def header_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip())


def split_header(line: str, delimiter: str) -> list[str]:
    return [name.strip() for name in next(csv.reader([line], delimiter=delimiter))]


def detect_delimiter(header: str, columns: tuple[str, ...]) -> str:
    """The first of DELIMITERS that splits `header` into names including all `columns`, else ','."""
    for delimiter in DELIMITERS:
        if set(columns) <= set(split_header(header, delimiter)):
            return delimiter
    return ","


def explicit_delimiter(value: str) -> str:
    delimiter = "\t" if value in TAB_NAMES else str(value)
    if len(delimiter) != 1:
        raise UserError(f"data.delimiter={value!r} must be one character (or tab)")
    return delimiter


def read_table(text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header's column names, and (line number, {column: value}) for each row with a value
    anywhere; a row's missing trailing values read as ''."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    names: list[str] | None = None
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        if names is None:
            names = [cell.strip() for cell in cells]
            continue
        padded = cells + [""] * (len(names) - len(cells))
        rows.append((reader.line_num, dict(zip(names, padded, strict=False))))  # extra cells are dropped
    return names or [], rows


class CSVDataModule(ClassificationDataModule):
    """Images listed in a CSV file.

    Args:
        csv: the CSV file; one row per image.
        root: folder that relative paths start from; None is the CSV file's folder.
        path_column, label_column: names of the image-path and class-label columns.
        split_column: optional column with train / val / test per row; without it every row trains
            and validation comes from `val_split`.
        encoding: the file's text encoding (a UTF-8 byte-order mark is allowed).
        delimiter: the field separator; None picks the one of , ; tab | that splits the header
            into names including `path_column` and `label_column`.
    """

    def __init__(
        self,
        csv: str,
        root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str = "split",
        encoding: str = "utf-8",
        delimiter: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.csv_path = csv
        self.root = root
        self.path_column, self.label_column, self.split_column = path_column, label_column, split_column
        self.encoding, self.delimiter = encoding, delimiter

    def native_img_size(self) -> int:
        base = self._image_root()
        paths = [base / row[self.path_column].strip() for row in spread_sample(self.rows)]
        return infer_input_side(paths, f"listed in {self.csv_path}", relative_to=base)

    @cached_property
    def rows(self) -> list[dict[str, str]]:
        shown = f"data.csv={self.csv_path}"
        text = decode_csv(self._csv_file().read_bytes(), self.encoding, shown)
        if not text.strip():
            raise UserError(f"{shown} is empty")
        columns = (self.path_column, self.label_column)
        if self.delimiter:
            delimiter = explicit_delimiter(self.delimiter)
        else:
            delimiter = detect_delimiter(header_line(text), columns)
        names, rows = read_table(text, delimiter)
        for column in columns:
            if column not in names:
                raise UserError(
                    f"{shown} has no '{column}' column: split at {delimiter!r}, its header reads {names};"
                    " set data.delimiter to the file's separator, or data.path_column / data.label_column"
                    " to the names of its path and label columns"
                )
        for line, row in rows:
            self._check_row(row, line, shown)
        if not rows:
            raise UserError(f"{shown} has no rows")
        return [row for _, row in rows]

    def _csv_file(self) -> Path:
        if self.csv_path in (None, "", "???"):
            raise UserError("data.csv is not set: point it at a CSV with path,label columns")
        path = expand_path(self.csv_path)
        if not path.is_file():
            raise UserError(f"data.csv={self.csv_path} does not exist (looked for {path.resolve()})")
        return path

    def _check_row(self, row: dict[str, str], line: int, shown: str) -> None:
        if not row.get(self.path_column, "").strip() or not row.get(self.label_column, "").strip():
            raise UserError(f"{shown} line {line}: empty path or label")
        split = self._split_of(row)
        if split not in SPLITS:
            raise UserError(f"{shown} line {line}: split '{split}' is not one of {', '.join(SPLITS)}")

    def _split_of(self, row: dict[str, str]) -> str:
        return (row.get(self.split_column) or "train").strip().lower()

    def read_class_names(self) -> list[str]:
        return _sort_labels(
            {row[self.label_column].strip() for row in self.rows if self._split_of(row) == "train"}
        )

    def _image_root(self) -> Path:
        return expand_path(self.root) if self.root else self._csv_file().parent

    def image_root(self) -> Path:
        return self._image_root()

    def load_splits(self, class_names: list[str]) -> Splits:
        index = {name: i for i, name in enumerate(class_names)}
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
                dataset = checked_dataset(items, self.on_bad_image, f"{self.csv_path} ({split})")
                if not len(dataset):
                    raise UserError(f"data.csv={self.csv_path}: no readable images in the {split} rows")
                datasets[split] = dataset
        if "train" not in datasets:
            raise UserError(f"data.csv={self.csv_path} has no train rows")
        return Splits(**datasets)
