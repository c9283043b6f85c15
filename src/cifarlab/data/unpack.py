"""Chapter 1.1 of the tutorial: the archive's batches as PNG files, one folder per class.

Layout: ``<out>/<class>/<class>_<number>.png``, numbered as layout.py explains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..atomic import atomic_dir, write_json
from ..errors import DataError
from .archive import Batch, read_archive
from .layout import BATCH_SIZE, batch_offset, png_name
from .parallel import map_ranges

def _write_pngs(out: Path, classes: list[str], batch: Batch, progress) -> None:
    hwc = np.ascontiguousarray(batch.data.transpose(0, 2, 3, 1))
    labels = batch.labels
    offset = batch_offset(batch.name)

    def task(start: int, stop: int) -> int:
        for i in range(start, stop):
            cls = classes[labels[i]]
            # compress_level 1: the files are tiny, and level 6 costs time for no real saving
            Image.fromarray(hwc[i]).save(out / cls / png_name(cls, offset + i), compress_level=1)
        return stop - start

    done = sum(map_ranges(task, len(labels)))
    progress(f"unpack: {batch.name}: wrote {done} PNG files")


def unpack(archive: str | Path, batches: list[str], out: str | Path, meta_out: str | Path,
           md5: Optional[str] = None, progress=print) -> dict:
    """Write every image of `batches` as a PNG under `out`; write class names and batch ranges to `meta_out`.

    Nothing is written unless the whole archive is valid: it is checked (members, pickles,
    md5) before the first PNG, and the tree is built beside `out` and swapped in at the end.
    """
    classes, parsed = read_archive(archive, batches, md5)
    meta = {"classes": classes, "batches": {}}
    with atomic_dir(out) as tmp:
        for cls in classes:
            (tmp / cls).mkdir()
        for batch in parsed:
            if len(batch.labels) > BATCH_SIZE:
                raise DataError(f"{archive}:{batch.name}: {len(batch.labels)} images; a CIFAR batch holds at most {BATCH_SIZE}")
            start = batch_offset(batch.name)
            meta["batches"][batch.name] = {"first": start, "count": int(len(batch.labels)),
                                           "per_class": np.bincount(batch.labels, minlength=len(classes)).tolist()}
            _write_pngs(tmp, classes, batch, progress)
    write_json(meta_out, meta)
    return meta

