"""How the audit's searches grow with N: the pHash pair search, the feature cosine search and confident
learning on random inputs of growing size (random hashes and features pair with nothing, so this is
the comparison cost alone). docs/audit.md's cost table.

    python benchmarks/audit_scaling.py
"""

from __future__ import annotations

import random
import time

import numpy as np

from classifier.audit.confident import find_label_issues
from classifier.audit.duplicates import Fingerprint, ImageRef, feature_duplicates, find_duplicates


def _seconds(run) -> tuple[float, int]:
    start = time.perf_counter()
    found = run()
    return time.perf_counter() - start, len(found)


def main() -> None:
    rng = random.Random(0)
    for n in (10_000, 50_000, 100_000):
        refs = [ImageRef(f"{i}.jpg", "train" if i % 5 else "test") for i in range(n)]
        prints = [Fingerprint(f"{i:064x}", rng.getrandbits(64), rng.getrandbits(64)) for i in range(n)]
        seconds, pairs = _seconds(lambda refs=refs, prints=prints: find_duplicates(refs, prints))
        print(f"pHash pairs, N={n:,}: {seconds:.1f} s ({pairs} chance pairs)", flush=True)
    gen = np.random.default_rng(0)
    for n, d in ((10_000, 512), (50_000, 512), (20_000, 2048)):
        refs = [ImageRef(f"{i}.jpg", "train") for i in range(n)]
        features = gen.standard_normal((n, d), dtype=np.float32)
        seconds, pairs = _seconds(lambda refs=refs, features=features: feature_duplicates(refs, features))
        print(f"feature pairs, N={n:,} d={d}: {seconds:.1f} s ({pairs} pairs)", flush=True)
    n, k = 100_000, 100
    probs = gen.dirichlet(np.full(k, 0.1), size=n)
    labels = gen.integers(0, k, size=n)
    seconds, flagged = _seconds(lambda: find_label_issues(labels, probs))
    print(f"confident learning, N={n:,} k={k}: {seconds:.1f} s ({flagged} flagged)", flush=True)


if __name__ == "__main__":
    main()
