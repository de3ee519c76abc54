"""data.exclude and data.relabel: an audit's issues.csv (classifier/audit/issues_file.py) applied to
the run's splits.

Applied after the split policy (val carved out of train, folds, few-shot), so every image not listed
stays in the split it was in: val and test differ from an earlier run's only by the files dropped.
Relabelling changes train only: val and test keep their given labels, so their scores stay
comparable with runs made before the audit (a user who trusts the suggestions for the held-out
splits too edits the data itself).

A row's path matches a data file after normalisation (os.path.normpath of the absolute path, without
touching the disk): an absolute path as it is, a relative one under the data's image folder
(data.root, or a CSV's folder) or, failing that, under the working directory (the data's own paths
when data.root is relative). Listed files that match no image are counted in one warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from classifier.audit.issues_file import IssueRow, apply_exclude, apply_relabel, read_issues
from classifier.data.decoded import file_samples
from classifier.data.images import ImageFileDataset
from classifier.errors import UserError
from classifier.files import expand_path, file_sha256

log = logging.getLogger(__name__)

Samples = list[tuple[str, int]]


def _key(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def check_issues_key(value: object, key: str) -> str | None:
    """data.exclude / data.relabel: None, or the path of an issues.csv (read at setup).

    Raises:
        UserError: the value is not a path.
    """
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise UserError(f"{key}={value!r} must be the path of an issues.csv (null: none)")
    return os.fspath(value)


@dataclass(frozen=True)
class IssuesFile:
    """An issues.csv as given to one key, read and identified by content."""

    key: str  # data.exclude or data.relabel
    given: str  # as the config wrote it
    path: Path
    sha256: str
    rows: list[IssueRow]

    @classmethod
    def read(cls, key: str, given: str) -> IssuesFile:
        path = expand_path(given)
        rows = read_issues(path)  # checks every row; a missing file is a one-line error
        sha256 = file_sha256(path)
        return cls(key, given, path.resolve(), sha256, rows)

    def matched(self, data_keys: set[str], root: Path | None) -> tuple[list[IssueRow], int]:
        """The rows, each whose path names a data file with that path made the data's own (the others
        match nothing and are still checked when applied); and how many listed files named none."""
        rows, stale = [], set()
        for row in self.rows:
            found = _data_key(row.path, data_keys, root)
            if found is None:
                stale.add(os.path.normpath(row.path))
            rows.append(row if found is None else dataclasses.replace(row, path=found))
        return rows, len(stale)

    def warn_stale(self, stale: int, listed: int) -> None:
        if stale:
            log.warning(
                "%s=%s: %d of the %d files it lists match no image of the data (a stale file, or another"
                " data.root?); they are ignored",
                self.key,
                self.given,
                stale,
                listed,
            )

    def card(self) -> dict[str, Any]:
        return {"issues_file": str(self.path), "sha256": self.sha256}


def _data_key(listed: str, data_keys: set[str], root: Path | None) -> str | None:
    path = expand_path(listed)
    candidates = [path] if path.is_absolute() else [*([root / path] if root else []), path]
    return next((_key(c) for c in candidates if _key(c) in data_keys), None)


def _large(dataset: Dataset) -> set[str]:
    """The files of `dataset` already reported as over PIL's pixel warning limit."""
    if isinstance(dataset, Subset):
        return _large(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return set().union(*(_large(part) for part in dataset.datasets))
    return set(getattr(dataset, "large", ()))


@dataclass
class IssueEdits:
    """data.exclude and data.relabel of one data module (either may be None)."""

    exclude: str | None = None
    relabel: str | None = None
    applied: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, exclude: object = None, relabel: object = None) -> IssueEdits:
        return cls(check_issues_key(exclude, "data.exclude"), check_issues_key(relabel, "data.relabel"))

    def __bool__(self) -> bool:
        return bool(self.exclude or self.relabel)

    def apply(
        self, datasets: Mapping[str, Dataset], class_names: Sequence[str], root: Path | None, what: str
    ) -> dict[str, Dataset]:
        """`datasets` (the run's splits) less the excluded files and with train's labels relabelled;
        `applied` records what was done, for the model card.

        Raises:
            UserError: the data is not read from files (`what` names the data module), or an issues
                file is missing or wrong (one line naming the file, and the row).
        """
        if not self:
            return dict(datasets)
        samples = {name: file_samples(dataset) for name, dataset in datasets.items()}
        if any(items is None for items in samples.values()):
            key, value = ("data.exclude", self.exclude) if self.exclude else ("data.relabel", self.relabel)
            raise UserError(
                f"{key}={value}: {what} does not read its images from files, so an issues file cannot"
                " name them (data=imagefolder or data=csv can)"
            )
        data_keys = {_key(path) for items in samples.values() for path, _ in items}
        if self.exclude:
            samples = self._exclude(IssuesFile.read("data.exclude", self.exclude), samples, data_keys, root)
        if self.relabel:
            issues = IssuesFile.read("data.relabel", self.relabel)
            samples["train"] = self._relabel(issues, samples["train"], class_names, data_keys, root)
        return {
            name: ImageFileDataset(samples[name], large=_large(dataset)) for name, dataset in datasets.items()
        }

    def _exclude(
        self, issues: IssuesFile, samples: dict[str, Samples], data_keys: set[str], root: Path | None
    ) -> dict[str, Samples]:
        rows, stale = issues.matched(data_keys, root)
        issues.warn_stale(stale, len({os.path.normpath(row.path) for row in issues.rows}))
        counts = {}
        for name, items in samples.items():
            result = apply_exclude(items, rows)
            counts[name] = len(result.dropped)
            samples[name] = result.samples
            log.info("data.exclude: %d of the %d %s images excluded", len(result.dropped), len(items), name)
        self.applied["excluded"] = {**issues.card(), "images": counts, "stale_files": stale}
        return samples

    def _relabel(
        self,
        issues: IssuesFile,
        train: Samples,
        class_names: Sequence[str],
        data_keys: set[str],
        root: Path | None,
    ) -> Samples:
        label_rows = [row for row in issues.rows if row.issue == "label"]
        rows, stale = dataclasses.replace(issues, rows=label_rows).matched(data_keys, root)
        issues.warn_stale(stale, len({os.path.normpath(row.path) for row in label_rows}))
        result = apply_relabel(train, rows, class_names)
        log.info(
            "data.relabel: %d of the %d train images relabelled (val and test keep their labels)",
            len(result.changed),
            len(train),
        )
        changed = {"train": len(result.changed)}
        self.applied["relabelled"] = {**issues.card(), "images": changed, "stale_files": stale}
        return result.samples
