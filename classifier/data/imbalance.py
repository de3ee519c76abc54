"""Class imbalance on the data side: the training loss's weights per class (data.class_weights) and
the balanced sampler (data.sampler=balanced), both judged from the training split's class counts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from classifier.config_values import to_number
from classifier.data.splits import targets_of
from classifier.errors import UserError

log = logging.getLogger(__name__)

# data.sampler: None (shuffle) or 'balanced' (each training image drawn with probability 1/n_c of its
# class, with replacement: every class about equally often per epoch).
SAMPLERS = (None, "balanced")


def check_sampler(sampler: str | None) -> str | None:
    """data.sampler: None (shuffle) or 'balanced'.

    Raises:
        UserError: it is neither, listing the valid ones.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"data.sampler={sampler!r} is not one of null, {', '.join(s for s in SAMPLERS if s)}")
    return sampler


def check_class_weights(value: str | Sequence[float] | None) -> str | list[float] | None:
    """data.class_weights, the training loss's weight per class: None, 'auto' (inverse frequency in
    the training split, N / (K * n_c), resolved by loss_weights) or one non-negative number per class.

    Raises:
        UserError: anything else, naming the key (and the item that is not a number).
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise UserError(f"data.class_weights={value!r}: use auto, null or a list of numbers (one per class)")
    weights = [to_number(w, f"data.class_weights[{i}]") for i, w in enumerate(value)]
    if any(w < 0 for w in weights):
        raise UserError(f"data.class_weights={weights} must not be negative")
    return weights


def loss_weights(
    class_weights: str | list[float] | None, counts: np.ndarray, class_names: Sequence[str]
) -> list[float] | None:
    """The loss's weight per class: `class_weights` as given, or for 'auto' N / (K n_c) from the
    training split's `counts` (0, with a warning, for a class without training images).

    Raises:
        UserError: a list of weights does not have one per class.
    """
    if class_weights is None:
        return None
    if class_weights != "auto":
        if len(class_weights) != len(class_names):
            raise UserError(
                f"data.class_weights has {len(class_weights)} values; the data has"
                f" {len(class_names)} classes ({', '.join(class_names[:10])})"
            )
        return list(class_weights)
    missing = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if missing:
        log.warning("data.class_weights=auto: no training images of %s; weight 0", ", ".join(missing))
    # N / (K n_c): the average weight over the training images is 1, so the loss keeps its scale.
    return [float(counts.sum() / (len(counts) * c)) if c else 0.0 for c in counts]


def train_sampler(
    sampler: str | None, train: Dataset, class_counts: Callable[[], np.ndarray]
) -> WeightedRandomSampler | None:
    """The sampler data.sampler names for the training split `train` (None: the loader shuffles);
    `class_counts()` gives its images per class."""
    if sampler != "balanced":
        return None
    return balanced_sampler(targets_of(train), class_counts())


def balanced_sampler(labels: Sequence[int], counts: np.ndarray) -> WeightedRandomSampler:
    """Draws len(labels) images with replacement, each with probability 1/n_c of its class: every
    class about equally often per epoch."""
    per_image = 1.0 / counts[np.asarray(labels)]
    # Under DDP with trainer.use_distributed_sampler=true (the default), Lightning wraps any
    # sampler but Random/Sequential in fabric's DistributedSamplerWrapper (2.6: data_connector.py,
    # _get_distributed_sampler): each process draws the N indices (the same ones: every rank has
    # the run's seed) and keeps every world_size-th, so all ranks together still draw N, balanced.
    weights = torch.as_tensor(per_image, dtype=torch.double)
    return WeightedRandomSampler(weights, len(labels), replacement=True)
