"""Chapter 1.2: split the PNG tree into train, valid and test folders, per class, seeded.

Counts per class follow the ratios exactly by largest remainder (8:1:1 of 1,000 images is
800/100/100), so every class is represented in each split as the ratios say. The split
folders hold hard links to unpack's files: the tutorial's folder layout without a second
copy of the bytes (a copy is made only where the filesystem cannot link).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from cifarlab.atomic import atomic_dir, free_space, on_disk
from cifarlab.data.layout import (
    MANIFEST_LINE,
    SPLITS,
    from_test_batch,
    png_number,
    read_manifest,
    read_meta,
    require_space,
    write_manifest,
)
from cifarlab.errors import DataError, ParamsError


def largest_remainder(n: int, ratios: list[float]) -> list[int]:
    """Integer counts summing to n, proportional to ratios, rounding by largest remainder."""
    total = sum(ratios)
    quotas = [n * r / total for r in ratios]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(ratios)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _class_files(png_dir: Path, cls: str) -> list[str]:
    folder = png_dir / cls
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; run the unpack stage (dvc repro unpack)")
    names = [e.name for e in os.scandir(folder) if e.name.endswith(".png")]
    return sorted(names, key=lambda name: png_number(folder / name))


def assign(files: list[str], ratios: list[float], rng: np.random.Generator) -> list[list[str]]:
    """Shuffle one class's files and cut them by largest-remainder counts."""
    counts = largest_remainder(len(files), ratios)
    order = rng.permutation(len(files))
    cuts = np.cumsum([0] + counts)
    return [[files[j] for j in sorted(order[cuts[k] : cuts[k + 1]])] for k in range(len(counts))]


def split(
    png_dir: str | Path,
    meta_path: str | Path,
    out: str | Path,
    *,
    mode: str = "ratio",
    train: float = 0.8,
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    progress=print,
) -> dict[str, int]:
    """Write out/<split>/<class>/<file> links and their manifest (out.md5); return images per split."""
    png_dir, out = Path(png_dir), Path(out)
    meta = read_meta(meta_path)
    classes = meta["classes"]
    if mode == "standard" and "test_batch" not in meta["batches"]:
        raise ParamsError(
            "split.mode", "standard mode takes test_batch as the test split, but data.batches does not list it", mode
        )
    rng = np.random.default_rng(seed)
    totals: dict[str, int] = dict.fromkeys(SPLITS, 0)
    md5s = read_manifest(png_dir)
    manifest: dict[str, str] = {}
    per_class = {cls: _class_files(png_dir, cls) for cls in classes}
    check_space(png_dir, out, per_class)
    with atomic_dir(out) as tmp:
        for cls in classes:
            files = per_class[cls]
            if mode == "ratio":
                parts = assign(files, [train, valid, test], rng)
            else:
                is_test = [from_test_batch(f) for f in files]
                pool = [f for f, t in zip(files, is_test) if not t]
                parts = assign(pool, [train, valid], rng) + [[f for f, t in zip(files, is_test) if t]]
            for name, part in zip(SPLITS, parts):
                folder = tmp / name / cls
                folder.mkdir(parents=True)
                for f in part:
                    _link(png_dir / cls / f, folder / f)
                    try:
                        manifest[f"{name}/{cls}/{f}"] = md5s[f"{cls}/{f}"]
                    except KeyError:
                        raise DataError(f"{png_dir / cls / f}: not in {png_dir}.md5; rerun the unpack stage") from None
                totals[name] += len(part)
        for name in SPLITS:
            if totals[name] == 0:
                key = "split.mode" if mode == "standard" and name == "test" else f"split.{name}"
                raise ParamsError(
                    key,
                    f"the {name} split would be empty ({sum(totals.values())} images so far); every split needs images",
                )
    write_manifest(out, manifest)
    progress("split: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return totals


def check_space(png_dir: Path, out: Path, per_class: dict[str, list[str]]) -> None:
    """Before any link: room for the folders and the manifest, and for a copy of every file
    where the tree cannot be hard-linked (another filesystem than unpack's)."""
    n = sum(len(files) for files in per_class.values())
    block = free_space(out.parent)[2]
    out.parent.mkdir(parents=True, exist_ok=True)
    # directory entries (about 64 bytes a name) in 3 x classes folders, and the manifest
    need = on_disk(n * 64, block) + 3 * (len(per_class) + 1) * block + on_disk(n * MANIFEST_LINE, block)
    files = 3 * (len(per_class) + 1) + 1
    copies = os.stat(png_dir).st_dev != os.stat(out.parent).st_dev
    if copies:
        need += sum(on_disk((png_dir / cls / f).stat().st_size, block) for cls, fs in per_class.items() for f in fs)
        files += n
    require_space(
        out,
        need,
        files,
        f"split {n:,} images" + (f" (copies: another filesystem than {png_dir}, so no hard links)" if copies else ""),
    )


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(src, dst)
