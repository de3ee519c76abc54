"""issues.csv: what the audit found, one row per suspect image, and what training does with it.

Columns, in this order: path, issue, given_label, suggested_label, score, other_path.

- `label` rows: `path` looks mislabelled; `given_label` and `suggested_label` are class names; `score`
  is the label's quality (self-confidence or normalised margin: lower is more suspect).
- `duplicate` and `leak` rows: `path` is a copy of `other_path` (a leak when one is in train and the
  other in val or test); `score` is their similarity (1.0 for identical pixels). The audit writes the
  copy to drop as `path` and the one to keep as `other_path`: the held-out copy of a leak, so val and
  test stay as they were.

Excluding drops every `path` of every row, whatever its kind, and never an `other_path` (unless that
file is also some row's `path`): of a group of copies the one never listed as `path` stays. Relabelling
applies `suggested_label` of `label` rows only. A user may edit the file (delete rows they disagree
with, add columns of notes, which are ignored); reading checks every row and names the file and line.
Paths match the data's own paths after normalisation (os.path.normpath), without touching the disk.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from classifier.errors import UserError
from classifier.files import write_atomically

COLUMNS = ("path", "issue", "given_label", "suggested_label", "score", "other_path")
ISSUE_KINDS = ("label", "duplicate", "leak")
PAIR_KINDS = ("duplicate", "leak")


@dataclass(frozen=True)
class IssueRow:
    """One row of issues.csv. `where` ("issues.csv line 4") names a row read from a file in messages."""

    path: str
    issue: str
    score: float
    given_label: str = ""
    suggested_label: str = ""
    other_path: str = ""
    where: str = field(default="", compare=False)

    @property
    def origin(self) -> str:
        """Where the row came from, for messages: its file and line, or its path for a row built in code."""
        return self.where or f"the issue row of {self.path}"


def write_issues(rows: Iterable[IssueRow], path: str | Path) -> None:
    """Write `rows` to `path` as issues.csv, atomically (a crash leaves the previous file whole)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        if row.issue not in ISSUE_KINDS or not math.isfinite(row.score):
            raise ValueError(f"not an issue row: {row}")
        values = (
            row.path,
            row.issue,
            row.given_label,
            row.suggested_label,
            repr(float(row.score)),
            row.other_path,
        )
        writer.writerow(values)
    write_atomically(buffer.getvalue().encode("utf-8"), path)


def read_issues(path: str | Path) -> list[IssueRow]:
    """The rows of an issues.csv, each checked.

    Raises:
        UserError: the file is missing or not UTF-8 text, lacks a column, or a row has too few fields,
            an empty path, an unknown issue, a score that is not a finite number, or a duplicate or
            leak without other_path. The message names the file and the line.
    """
    shown = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # -sig: spreadsheets save a BOM
    except FileNotFoundError:
        raise UserError(f"issues file {shown} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"issues file {shown} is a folder, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"issues file {shown} is not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _check_header(reader.fieldnames, shown)
    return [_parse_row(record, f"{shown} line {reader.line_num}") for record in reader]


def _check_header(fieldnames: Sequence[str] | None, shown: str) -> None:
    expected = ",".join(COLUMNS)
    if not fieldnames:
        raise UserError(f"issues file {shown} is empty: expected the header {expected}")
    missing = [name for name in COLUMNS if name not in fieldnames]
    if missing:
        raise UserError(f"issues file {shown} has no column {', '.join(missing)} (expected {expected})")


def _parse_row(record: dict[str | None, str | None], where: str) -> IssueRow:
    if any(record.get(name) is None for name in COLUMNS):
        given = sum(value is not None for key, value in record.items() if key is not None)
        raise UserError(f"{where}: {given} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
    values = {name: str(record[name]).strip() for name in COLUMNS}
    if not values["path"]:
        raise UserError(f"{where}: the path is empty")
    if values["issue"] not in ISSUE_KINDS:
        raise UserError(f"{where}: issue '{values['issue']}' is not one of {', '.join(ISSUE_KINDS)}")
    if values["issue"] in PAIR_KINDS and not values["other_path"]:
        raise UserError(f"{where}: a {values['issue']} row needs other_path, the file it copies")
    return IssueRow(
        path=values["path"],
        issue=values["issue"],
        score=_parse_score(values["score"], where),
        given_label=values["given_label"],
        suggested_label=values["suggested_label"],
        other_path=values["other_path"],
        where=where,
    )


def _parse_score(text: str, where: str) -> float:
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise UserError(f"{where}: score '{text}' is not a finite number")
    return score


def _key(path: str | Path) -> str:
    return os.path.normpath(os.fspath(path))


@dataclass(frozen=True)
class Excluded:
    """A split's samples less the excluded files, and the paths dropped (in the split's order)."""

    samples: list[tuple[str, int]]
    dropped: list[str]


@dataclass(frozen=True)
class Relabelled:
    """A split's samples with suggested labels applied, and each change: (path, old label, new label)."""

    samples: list[tuple[str, int]]
    changed: list[tuple[str, int, int]]


def apply_exclude(samples: Sequence[tuple[str, int]], issues: Iterable[IssueRow]) -> Excluded:
    """`samples` ((path, label) of one split) without the files listed as `path` in any issue row."""
    excluded = {_key(row.path) for row in issues}
    kept, dropped = [], []
    for path, label in samples:
        if _key(path) in excluded:
            dropped.append(path)
        else:
            kept.append((path, label))
    return Excluded(kept, dropped)


def apply_relabel(
    samples: Sequence[tuple[str, int]], issues: Iterable[IssueRow], classes: Sequence[str]
) -> Relabelled:
    """`samples` ((path, class index) of one split) with the suggested label of each `label` row applied.

    Raises:
        UserError: a row to apply has no suggested_label, suggests a class the data does not have, or
            gives a given_label other than the file's label in the data (the file was written for other
            labels); two rows suggest different labels for one file. The message names the row.
    """
    index_of = {name: i for i, name in enumerate(classes)}
    suggestions = _suggestions(issues, index_of)
    relabelled, changed = [], []
    for path, label in samples:
        row = suggestions.get(_key(path))
        if row is None:
            relabelled.append((path, label))
            continue
        if row.given_label and row.given_label != classes[label]:
            raise UserError(
                f"{row.origin}: given_label '{row.given_label}' but the data labels {path}"
                f" '{classes[label]}': this issues file was written for other labels"
            )
        new = index_of[row.suggested_label]
        relabelled.append((path, new))
        if new != label:
            changed.append((path, label, new))
    return Relabelled(relabelled, changed)


def _suggestions(issues: Iterable[IssueRow], index_of: dict[str, int]) -> dict[str, IssueRow]:
    suggestions: dict[str, IssueRow] = {}
    for row in issues:
        if row.issue != "label":
            continue
        if not row.suggested_label:
            raise UserError(f"{row.origin}: no suggested_label to relabel {row.path} with")
        if row.suggested_label not in index_of:
            raise UserError(
                f"{row.origin}: suggested_label '{row.suggested_label}' is not one of the data's"
                f" {len(index_of)} classes ({_shortened(list(index_of))})"
            )
        earlier = suggestions.setdefault(_key(row.path), row)
        if earlier.suggested_label != row.suggested_label:
            raise UserError(
                f"{row.origin}: suggests '{row.suggested_label}' for {row.path}, but {earlier.origin}"
                f" suggested '{earlier.suggested_label}'"
            )
    return suggestions


def _shortened(names: list[str], shown: int = 10) -> str:
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
