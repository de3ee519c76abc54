"""Confident learning: which given labels the out-of-sample probabilities disagree with.

The method of Northcutt, Jiang and Chuang (2021), "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 70: per-class thresholds (their Eq. 1's t_j), the confident joint C (Eq. 1),
its calibration to the joint distribution Q of given and true labels (Eqs. 2-3), and the pruning
method "prune by noise rate" (sec. 3.2, PBNR), then a ranking by self-confidence or normalised margin.

Written here rather than imported: the reference implementation, cleanlab, is AGPL-3.0, which this
project's licence does not take on, and the method is a few array operations. Everything is numpy
on (n, k) arrays: O(n k) time and memory, well under a second for 100,000 images.

`probs` must be out-of-sample (each image's probabilities from a model that did not train on it):
in-sample probabilities have memorised the wrong labels and hide them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

RankBy = Literal["self_confidence", "normalized_margin"]
RANKINGS = ("self_confidence", "normalized_margin")
# No class: an image with no probability at or above its class's threshold is left out of C (Eq. 1).
UNASSIGNED = -1


@dataclass(frozen=True)
class LabelIssue:
    """One image whose given label looks wrong.

    `score` is the ranking score of the given label (self-confidence or normalised margin): the
    lower, the more likely the label is wrong; issues are listed lowest score first.
    """

    index: int
    given_label: int
    suggested_label: int
    score: float


def check_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`labels` as int64 (n,) and `probs` as float64 (n, k). A mismatch is a bug in the caller, which
    computed both, so it raises ValueError rather than a user error."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be (n,) and (n, k)")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    if not np.isfinite(probs).all():
        raise ValueError("probs holds NaN or infinite values")
    return labels.astype(np.int64), probs


def per_class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j: the mean of p_j over the images labelled j (the paper's expected self-confidence).

    A class no image is labelled with gets +inf: there is nothing to estimate its threshold from,
    so no image is counted as belonging to it.
    """
    labels, probs = check_inputs(labels, probs)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def confident_assignments(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each image's confident class (Eq. 1): among the classes j with p_j >= t_j, the one of largest
    p_j; UNASSIGNED when no class reaches its threshold. Ties between equal p_j go to the lowest
    class index (numpy's argmax), a choice the paper leaves open."""
    probs = np.asarray(probs, dtype=np.float64)
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    assigned = masked.argmax(axis=1)
    return np.where(above.any(axis=1), assigned, UNASSIGNED)


def confident_joint(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(C, assigned): C[i][j] counts the images labelled i whose confident class is j (Eq. 1), and
    `assigned` is each image's confident class (UNASSIGNED for those C leaves out).

    Args:
        labels: (n,) given labels in [0, k).
        probs: (n, k) out-of-sample predicted probabilities.
        thresholds: (k,) per-class thresholds; per_class_thresholds(labels, probs) when None.
    """
    labels, probs = check_inputs(labels, probs)
    k = probs.shape[1]
    if thresholds is None:
        thresholds = per_class_thresholds(labels, probs)
    assigned = confident_assignments(probs, thresholds)
    counted = assigned != UNASSIGNED
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], assigned[counted]), 1)
    return joint, assigned


def calibrated_joint(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Q: each row of C rescaled to the number of images given that label (Eq. 2), then the whole
    matrix normalised to sum 1 (Eq. 3). A row C has no image in stays zero."""
    joint = np.asarray(joint, dtype=np.float64)
    row_sums = joint.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rescaled = np.where(row_sums > 0, joint / row_sums, 0.0) * np.asarray(label_counts)[:, None]
    total = rescaled.sum()
    return rescaled / total if total > 0 else rescaled


def prune_by_noise_rate(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """The images PBNR flags (sec. 3.2), as a boolean (n,) mask.

    For each off-diagonal cell (i, j), round(n * Q[i][j]) of the images labelled i are flagged: those
    with the largest margin p_j - p_i. As cleanlab does, an image whose given label is also its most
    probable class is then unflagged: the model agrees with the label, so PBNR's count has overshot.
    """
    labels, probs = check_inputs(labels, probs)
    n, k = probs.shape
    q = calibrated_joint(joint, np.bincount(labels, minlength=k))
    to_prune = np.rint(n * q).astype(np.int64)
    flagged = np.zeros(n, dtype=bool)
    for given in range(k):
        members = np.flatnonzero(labels == given)
        for other in range(k):
            count = min(to_prune[given, other], len(members))
            if other == given or count == 0:
                continue
            margins = probs[members, other] - probs[members, given]
            # stable sort: equal margins keep the images' order, so the result is reproducible
            chosen = members[np.argsort(-margins, kind="stable")[:count]]
            flagged[chosen] = True
    flagged &= probs.argmax(axis=1) != labels
    return flagged


def label_quality(labels: np.ndarray, probs: np.ndarray, rank_by: RankBy = "self_confidence") -> np.ndarray:
    """Each image's score for its given label, lower = more suspect: self-confidence p_given, or the
    normalised margin p_given - max_{j != given} p_j (in [-1, 1])."""
    labels, probs = check_inputs(labels, probs)
    given = probs[np.arange(len(labels)), labels]
    if rank_by == "self_confidence":
        return given
    if rank_by == "normalized_margin":
        return given - _best_other(labels, probs)[1]
    raise ValueError(f"rank_by must be one of {RANKINGS}, got {rank_by!r}")


def _best_other(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class, probability) of the most probable class other than the given one, per image."""
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    best = others.argmax(axis=1)
    return best, others[np.arange(len(labels)), best]


def find_label_issues(
    labels: np.ndarray, probs: np.ndarray, rank_by: RankBy = "self_confidence"
) -> list[LabelIssue]:
    """The images PBNR flags, most suspect first (lowest `rank_by` score; ties by index).

    The suggested label is the image's confident-joint column when C counted it off the diagonal,
    otherwise the most probable class other than the given one.

    Args:
        labels: (n,) given labels in [0, k).
        probs: (n, k) out-of-sample predicted probabilities, rows summing to 1.
        rank_by: "self_confidence" or "normalized_margin".
    """
    labels, probs = check_inputs(labels, probs)
    scores = label_quality(labels, probs, rank_by)
    joint, assigned = confident_joint(labels, probs)
    flagged = np.flatnonzero(prune_by_noise_rate(labels, probs, joint))
    best_other = _best_other(labels, probs)[0]
    off_diagonal = (assigned != UNASSIGNED) & (assigned != labels)
    suggested = np.where(off_diagonal, assigned, best_other)
    order = flagged[np.argsort(scores[flagged], kind="stable")]
    return [LabelIssue(int(i), int(labels[i]), int(suggested[i]), float(scores[i])) for i in order]
