"""Chapter 1.1 of the tutorial: the archive's batches as PNG files, one folder per class.

Layout: ``<out>/<class>/<class>_<number>.png``, numbered as layout.py explains.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from cifarlab.archive.reader import Batch, iter_batches
from cifarlab.atomic import atomic_dir, free_space, on_disk, write_json
from cifarlab.data.layout import BATCH_SIZE, MANIFEST_LINE, batch_offset, png_name, require_space, write_manifest
from cifarlab.data.parallel import map_ranges
from cifarlab.errors import DataError

#: the largest PNG of a 32x32 RGB image (noise at compress_level 1: zlib falls back to stored
#: blocks, 3,104 bytes of rows plus the PNG chunks); real images are about 2.4 KB
PNG_MAX_BYTES = 3200


def space_needed(out: Path, images: int) -> int:
    """Bytes the PNG tree of `images` images and its manifest take on the filesystem of `out`."""
    block = free_space(out.parent)[2]
    return images * on_disk(PNG_MAX_BYTES, block) + on_disk(images * MANIFEST_LINE, block) + 64 * block


def _write_pngs(out: Path, classes: list[str], batch: Batch, progress) -> dict[str, str]:
    """Write one batch's PNGs; return {relative path: md5} for the manifest."""
    chw = batch.data  # [N, 3, 32, 32]: each image is made HWC on its own, never the whole batch at once
    labels = batch.labels
    offset = batch_offset(batch.name)

    def task(start: int, stop: int) -> list[tuple[str, str]]:
        done = []
        for i in range(start, stop):
            cls = classes[labels[i]]
            rel = f"{cls}/{png_name(cls, offset + i)}"
            buf = io.BytesIO()
            # compress_level 1: the files are tiny, and level 6 costs time for no real saving
            hwc = np.ascontiguousarray(chw[i].transpose(1, 2, 0))
            Image.fromarray(hwc).save(buf, format="PNG", compress_level=1)
            data = buf.getvalue()
            (out / rel).write_bytes(data)
            done.append((rel, hashlib.md5(data).hexdigest()))
        return done

    entries = dict(e for part in map_ranges(task, len(labels)) for e in part)
    progress(f"unpack: {batch.name}: wrote {len(entries)} PNG files")
    return entries


def unpack(
    archive: str | Path,
    batches: list[str],
    out: str | Path,
    meta_out: str | Path,
    *,
    md5: Optional[str] = None,
    progress=print,
) -> dict:
    """Write every image of `batches` as a PNG under `out`, its md5 manifest beside it (out.md5),
    and the class names and batch ranges to `meta_out`.

    The archive streams through once, one batch in memory at a time. The tree is built
    beside `out` and swapped in only after the stream ended with every check passed
    (members, pickles, md5), so a bad archive leaves the previous output as it was.
    """
    meta: dict = {"classes": None, "batches": {}}
    manifest: dict[str, str] = {}
    out = Path(out)
    with atomic_dir(out) as tmp:
        done = 0
        # a plain loop, not enumerate(): enumerate keeps its last result tuple for reuse, and
        # with it the previous batch, alive while the next one is read (+40 MB at 60,000 images)
        for classes, batch in iter_batches(archive, batches, md5):
            # before the first PNG of each batch: room for this batch and the rest (CIFAR-10's
            # batches are all the same size), so a full disk stops the stage before it writes
            left = len(batch.labels) * (len(batches) - done)
            require_space(
                out,
                space_needed(out, left),
                left + len(classes),
                f"unpack {left:,} images" + (f" ({len(batches) - done} batches)" if len(batches) > 1 else ""),
            )
            done += 1  # noqa: SIM113 - not enumerate(), see above
            if meta["classes"] is None:
                meta["classes"] = classes
                for cls in classes:
                    (tmp / cls).mkdir()
            if len(batch.labels) > BATCH_SIZE:
                raise DataError(
                    f"{archive}:{batch.name}: {len(batch.labels)} images; a CIFAR batch holds at most {BATCH_SIZE}"
                )
            meta["batches"][batch.name] = {
                "first": batch_offset(batch.name),
                "count": len(batch.labels),
                "per_class": np.bincount(batch.labels, minlength=len(classes)).tolist(),
            }
            manifest.update(_write_pngs(tmp, classes, batch, progress))
            del batch  # before the next batch is read: one batch in memory at a time
    write_manifest(out, manifest)
    meta["batches"] = {b: meta["batches"][b] for b in batches}
    write_json(meta_out, meta)
    return meta
