"""How a data set's train, val and test splits become the ones a run uses: val carved out of train,
k-fold cross-validation, few-shot subsets. Seeded by data.split_seed, apart from the run seed, so
every run (and eval.py) sees the same images in each split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.utils.data import ConcatDataset, Dataset, Subset

from classifier.config_values import to_number
from classifier.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Untransformed data sets; `val` None means: carve it out of `train` with `val_split`."""

    train: Dataset
    val: Dataset | None = None
    test: Dataset | None = None


def targets_of(dataset: Dataset) -> list[int]:
    """The label of each image of `dataset`, in its order (through Subsets and ConcatDatasets)."""
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [target for part in dataset.datasets for target in targets_of(part)]
    return list(dataset.targets)


def split_off_val(train: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A stratified, seeded split, so every run (and eval.py) sees the same validation images."""
    labels = np.asarray(targets_of(train))
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and len(labels) * fraction >= len(counts) else None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return Subset(train, sorted(train_idx.tolist())), Subset(train, sorted(val_idx.tolist()))


def split_fold(pool: Dataset, folds: int, fold: int, seed: int) -> tuple[Subset, Subset]:
    """(train, val) of cross-validation fold `fold` of `folds`: val is that fold of a seeded shuffle,
    stratified by class when every class has at least `folds` images (else plain k-fold)."""
    labels = np.asarray(targets_of(pool))
    stratified = np.bincount(labels)[np.bincount(labels) > 0].min() >= folds
    if not stratified:
        log.warning("data.folds=%d: a class has fewer images than folds; the folds are not stratified", folds)
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return Subset(pool, sorted(train_idx.tolist())), Subset(pool, sorted(val_idx.tolist()))


def few_shot_subset(train: Dataset, shots: int, seed: int, class_names: Sequence[str]) -> Subset:
    """`shots` training images of every class, drawn by a permutation seeded by `seed`: the same
    images for the same seed, and the K-shot subset holds the (K-1)-shot one (each class takes the
    first K of its images in that order), so results for growing K differ by the added images only.

    Raises:
        UserError: a class has fewer than `shots` training images (naming the first few).
    """
    labels = np.asarray(targets_of(train))
    order = np.random.default_rng(seed).permutation(len(labels))
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"{class_names[c]} ({counts[c]})" for c in range(len(class_names)) if counts[c] < shots]
    if short:
        raise UserError(
            f"data.shots_per_class={shots}: the training split has fewer images of"
            f" {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}"
        )
    taken = np.zeros(len(class_names), dtype=np.int64)
    chosen = []
    for index in order:
        label = labels[index]
        if taken[label] < shots:
            taken[label] += 1
            chosen.append(int(index))
    return Subset(train, sorted(chosen))


def _check_folds(folds: object, fold: object) -> tuple[int | None, int | None]:
    if folds is None:
        if fold is not None:
            raise UserError(f"data.fold={fold} needs data.folds=K (the number of cross-validation folds)")
        return None, None
    folds = to_number(folds, "data.folds", int)
    if folds < 2:
        raise UserError(f"data.folds={folds} must be 2 or more")
    if fold is None:
        every = f"-m 'data.fold=range({folds})'"
        raise UserError(f"data.folds={folds} needs data.fold=i (0..{folds - 1}); every fold: {every}")
    fold = to_number(fold, "data.fold", int)
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} must be in 0..{folds - 1} (data.folds={folds})")
    return folds, fold


def _check_shots(shots: object) -> int | None:
    if shots is None:
        return None
    shots = to_number(shots, "data.shots_per_class", int)
    if shots < 1:
        raise UserError(f"data.shots_per_class={shots} must be 1 or more (null: every training image)")
    return shots


@dataclass(frozen=True)
class SplitPolicy:
    """The data keys that say which images train and which validate.

    val_split: fraction of train held out for validation when the data has no val split.
    split_seed: seed of every split below; fixed apart from the run seed so eval.py sees the same split.
    folds, fold: k-fold cross-validation: train and val become fold `fold`'s split of the training
        images (with the data's own val images, when it has them), stratified and seeded by
        split_seed; the test split stays as it is.
    shots_per_class: few-shot training: K training images per class (after val is split off; val
        and test stay whole), drawn with split_seed (few_shot_subset); None: all of them.
    """

    val_split: float = 0.1
    split_seed: int = 0
    folds: int | None = None
    fold: int | None = None
    shots_per_class: int | None = None

    @classmethod
    def from_config(
        cls,
        val_split: object = 0.1,
        split_seed: object = 0,
        folds: object = None,
        fold: object = None,
        shots_per_class: object = None,
    ) -> SplitPolicy:
        """The policy of the config's values, each checked.

        Raises:
            UserError: a value is not a number, or out of its range (one line naming the key).
        """
        fraction = to_number(val_split, "data.val_split")
        if not 0 <= fraction < 1:
            raise UserError(f"data.val_split={val_split} must be in [0, 1)")
        seed = to_number(split_seed, "data.split_seed", int)
        folds, fold = _check_folds(folds, fold)
        return cls(fraction, seed, folds, fold, _check_shots(shots_per_class))

    def apply(self, splits: Splits, class_names: Sequence[str]) -> dict[str, Dataset]:
        """The run's train, val and (when the data has one) test sets from the data set's `splits`.

        Raises:
            UserError: there is no val split and val_split is 0, or too few images for the shots.
        """
        train, val = splits.train, splits.val
        if self.folds:
            pool = train if val is None else ConcatDataset([train, val])
            train, val = split_fold(pool, self.folds, self.fold, self.split_seed)
            log.info("data.folds=%d: fold %d of %d images is val", self.folds, self.fold, len(pool))
        elif val is None:
            if self.val_split <= 0:
                raise UserError("no validation data: provide a val split or set data.val_split > 0")
            train, val = split_off_val(train, self.val_split, self.split_seed)
        if self.shots_per_class:
            train = few_shot_subset(train, self.shots_per_class, self.split_seed, class_names)
            log.info("data.shots_per_class=%d: %d training images", self.shots_per_class, len(train))
        datasets = {"train": train, "val": val}
        if splits.test is not None:
            datasets["test"] = splits.test
        return datasets
