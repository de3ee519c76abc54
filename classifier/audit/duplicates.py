"""Exact and near-duplicate images, within a split and across splits (train<->val/test is leakage).

Three tests of sameness, from strictest to loosest:

- **Exact**: the same decoded RGB pixels (a SHA-256 of the uint8 array and its shape), whatever the
  file format or metadata. Grouping by digest: O(N).
- **Perceptual hash**: the DCT pHash (Zauner 2010, "Implementation and Benchmarking of Perceptual Image
  Hash Functions", as phash.org computes it): grayscale, 32x32, 2D DCT-II, the 8x8 lowest frequencies
  without the DC row and column, each bit "above the median". Images closer than MAX_HAMMING_DISTANCE
  of 64 bits are near duplicates: a JPEG re-encode or a resize moves a few bits, while the hashes of
  unrelated images differ in about half their bits. A horizontally flipped copy counts too: each image
  is also hashed mirrored, and a pair's distance is the smaller of plain and mirrored (a flip is the
  commonest augmentation, so a mirrored test image in train is leakage all the same).
  Written here with numpy (the DCT is one 32x32 matrix product each way) instead of adding the
  imagehash package for thirty lines.
- **Feature cosine** (optional): given (N, d) features of any backbone, pairs with cosine similarity at
  or above a threshold, which also catches crops and colour changes that move many hash bits.

Cost: every pair is compared, in blocks of rows so memory stays bounded (BLOCK_CELLS comparisons at a
time, each pair once). The hashes cost N^2 / 2 64-bit XOR-and-popcounts (twice: plain and mirrored):
5,000 images take 0.2 s on 2 busy cores of an Intel Xeon (AVX512, AMX), so 100,000 about 1.5 minutes.
The features cost N^2 d / 2 multiply-adds: 5,000 images of d = 256 take 0.3 s there; 50,000 of
d = 1024 (1.3e12) several minutes.
Beyond about 100,000 images an approximate nearest-neighbour index (FAISS) is the practical choice.
Exact duplicates are compared once: only one image of each group of identical ones enters the
pairwise searches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from classifier.data.images import load_rgb

# At most this many bits of 64 apart are near duplicates. Unrelated images' bits differ like coin
# flips, and P(Binomial(64, 1/2) <= 8) = 2.8e-10: about one chance pair per 2e9 comparisons, while a
# JPEG re-encode at quality 75 or a resize moves 0-6 bits (tests/test_audit_duplicates.py).
MAX_HAMMING_DISTANCE = 8
# A classifier's penultimate features cluster by class: with a CIFAR-10-trained CNN on 4,040 planted
# CIFAR images, 0.95 gave 18,346 pairs, 0.98 gave 210 and 0.99 gave 32, 29 of them the planted copies
# (docs/audit.md); the planted pairs themselves ranged from cosine 0.90 to 1.0.
MIN_COSINE = 0.99
HASH_SIDE, LOW_FREQUENCIES = 32, 8
# Pairwise comparisons per block: (rows x N) uint64s, 64 MiB each way.
BLOCK_CELLS = 1 << 23
# The copy a duplicate pair keeps is the one in the most held-out split, so that excluding the other
# copies leaves val and test as they were (scores stay comparable); within a split, the earlier one.
KEEP_ORDER = {"test": 0, "val": 1, "train": 2}
HELD_OUT = frozenset({"val", "test"})

Issue = Literal["duplicate", "leak"]
How = Literal["pixels", "phash", "phash_mirrored", "cosine"]


@dataclass(frozen=True)
class ImageRef:
    """An image of the audited data: its path as the data module lists it, and its split."""

    path: str
    split: str


@dataclass(frozen=True)
class Fingerprint:
    """What the duplicate searches need of one image: the digest of its pixels and its pHash, plain and
    of its mirror image."""

    digest: str
    phash: int
    phash_mirrored: int


@dataclass(frozen=True)
class DuplicatePair:
    """Two copies of one image. `path` is the copy to drop, `other_path` the copy to keep (KEEP_ORDER);
    `issue` is "leak" when one is in train and the other in val or test; `score` is their similarity:
    1.0 for identical pixels, 1 - distance/64 for pHash, the cosine for features."""

    path: str
    other_path: str
    issue: Issue
    how: How
    score: float


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-256 of a uint8 image array with its shape, so 2x6 and 3x4 images of equal bytes differ."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D @ x is the DCT of the column x."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    d = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(HASH_SIDE)


def _hash_bits(gray: np.ndarray) -> int:
    coefficients = _DCT @ gray @ _DCT.T
    low = coefficients[1 : LOW_FREQUENCIES + 1, 1 : LOW_FREQUENCIES + 1].ravel()
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


def perceptual_hashes(img: Image.Image) -> tuple[int, int]:
    """The 64-bit pHash of `img` and of its horizontal mirror image."""
    small = img.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    gray = np.asarray(small, dtype=np.float64)
    return _hash_bits(gray), _hash_bits(gray[:, ::-1])


def fingerprint(img: Image.Image) -> Fingerprint:
    """The Fingerprint of an RGB image."""
    plain, mirrored = perceptual_hashes(img)
    return Fingerprint(pixel_digest(np.asarray(img.convert("RGB"))), plain, mirrored)


def fingerprint_file(path: str | Path) -> Fingerprint:
    """The Fingerprint of an image file as training sees it (upright RGB, classifier.data.images)."""
    return fingerprint(load_rgb(path))


_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bit distances between two arrays of 64-bit hashes (uint64)."""
    xor = np.bitwise_xor(a[:, None], b[None, :])
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(xor)
    return _POPCOUNT[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1, dtype=np.uint8)


def _row_blocks(n: int) -> Iterator[slice]:
    rows = max(1, BLOCK_CELLS // max(n, 1))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _keep_rank(images: Sequence[ImageRef], index: int) -> tuple[int, int]:
    return KEEP_ORDER.get(images[index].split, len(KEEP_ORDER)), index


def _pair(images: Sequence[ImageRef], i: int, j: int, how: How, score: float) -> DuplicatePair:
    kept, dropped = sorted([i, j], key=lambda index: _keep_rank(images, index))
    splits = {images[i].split, images[j].split}
    issue: Issue = "leak" if "train" in splits and splits & HELD_OUT else "duplicate"
    return DuplicatePair(images[dropped].path, images[kept].path, issue, how, score)


def _exact_groups(fingerprints: Sequence[Fingerprint]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for index, print_ in enumerate(fingerprints):
        groups.setdefault(print_.digest, []).append(index)
    return list(groups.values())


def find_duplicates(
    images: Sequence[ImageRef],
    fingerprints: Sequence[Fingerprint],
    max_distance: int = MAX_HAMMING_DISTANCE,
) -> list[DuplicatePair]:
    """Exact and pHash near-duplicate pairs among `images` (all splits together), exact ones first.

    A group of m identical images gives m - 1 pairs, each extra copy against the one kept; near pairs
    are searched between one image of each group only.

    Args:
        images: each image's path and split.
        fingerprints: fingerprint_file of each image, in the same order.
        max_distance: the largest Hamming distance (of 64 bits) that is a near duplicate.
    """
    if len(images) != len(fingerprints):
        raise ValueError(f"{len(images)} images but {len(fingerprints)} fingerprints")
    pairs = []
    representatives = []
    for group in _exact_groups(fingerprints):
        keep = min(group, key=lambda index: _keep_rank(images, index))
        representatives.append(keep)
        pairs += [_pair(images, keep, other, "pixels", 1.0) for other in group if other != keep]
    reps = np.array(sorted(representatives), dtype=np.int64)
    plain = np.array([fingerprints[i].phash for i in reps], dtype=np.uint64)
    mirrored = np.array([fingerprints[i].phash_mirrored for i in reps], dtype=np.uint64)
    for rows in _row_blocks(len(reps)):
        later = slice(rows.start, None)  # each pair once: a row against itself and the rows after it
        straight = hamming_distances(plain[rows], plain[later])
        flipped = hamming_distances(plain[rows], mirrored[later])
        distance = np.minimum(straight, flipped)
        for r, c in zip(*np.nonzero(distance <= max_distance), strict=True):
            i, j = rows.start + r, rows.start + c
            if j <= i:
                continue
            how: How = "phash" if straight[r, c] <= flipped[r, c] else "phash_mirrored"
            pairs.append(_pair(images, reps[i], reps[j], how, 1.0 - float(distance[r, c]) / 64))
    return pairs


def feature_duplicates(
    images: Sequence[ImageRef], features: np.ndarray, min_cosine: float = MIN_COSINE
) -> list[DuplicatePair]:
    """Pairs whose (N, d) features have cosine similarity >= `min_cosine`, most similar first.

    O(N^2 d) time in row blocks of BLOCK_CELLS similarities: bounded memory, whatever N.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(images):
        raise ValueError(f"features {features.shape} must be ({len(images)}, d)")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)  # a zero vector is similar to nothing
    found = []
    for rows in _row_blocks(len(unit)):
        similarity = unit[rows] @ unit[rows.start :].T  # each pair once, as in find_duplicates
        for r, c in zip(*np.nonzero(similarity >= min_cosine), strict=True):
            i, j = rows.start + r, rows.start + c
            if j > i:
                found.append((float(similarity[r, c]), int(i), int(j)))
    found.sort(key=lambda hit: (-hit[0], hit[1], hit[2]))
    return [_pair(images, i, j, "cosine", min(score, 1.0)) for score, i, j in found]
