"""Stage stats (tutorial 1.5): the per-channel mean and std of the training images, for Normalize.

The tutorial estimated them on a random 2,000-image sample by concatenating arrays, which
is quadratic in time and grows memory with the data. Here every training image counts,
and each worker keeps only integer sums (exact, whatever the order) per channel, so
memory stays flat however large the data set grows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarlab.atomic import write_json
from cifarlab.data.images import load_rgb32
from cifarlab.data.index import read_index
from cifarlab.data.parallel import map_ranges


def channel_stats(index_path: str | Path, root: str | Path = ".", workers: int = 0) -> dict:
    items = read_index(index_path)
    root = Path(root)

    def task(start, stop):
        s = np.zeros(3, dtype=np.int64)
        s2 = np.zeros(3, dtype=np.int64)
        for i in range(start, stop):
            px = load_rgb32(root / items[i][0], items.where(i)).reshape(-1, 3).astype(np.int64)
            s += px.sum(0)
            s2 += (px * px).sum(0)
        return s, s2

    parts = map_ranges(task, len(items), workers)
    s = sum(p[0] for p in parts)
    s2 = sum(p[1] for p in parts)
    n = len(items) * 32 * 32
    mean = np.asarray(s / n / 255.0)  # s: the channels' sums, an array (sum() of none would be 0)
    std = np.sqrt(np.maximum(s2 / n / 255.0**2 - mean**2, 0.0))
    return {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "images": len(items),
        "source": Path(index_path).as_posix(),
    }


def write_stats(index_path: str | Path, out: str | Path, root: str | Path = ".", progress=print) -> dict:
    stats = channel_stats(index_path, root)
    write_json(out, stats)
    progress(f"stats: {stats['images']} images, mean {stats['mean']}, std {stats['std']}")
    return stats
