"""Stage index (tutorial 1.3): one txt index per split, one ``path label`` line per image.

Paths are relative to the repository root, so an index written on one machine still works
in a clone elsewhere. The lines are sorted by label, then by image number, so the same split
always gives the same bytes. `cifarlab.data.index` reads them back.
"""

from __future__ import annotations

import os
from pathlib import Path

from cifarlab.atomic import write_text
from cifarlab.data.layout import SPLITS, png_number, read_manifest, read_meta
from cifarlab.errors import DataError


def write_indexes(
    split_dir: str | Path, classes: list[str], out_dir: str | Path, root: str | Path = ".", progress=print
) -> dict[str, int]:
    """One index per split, from the split's manifest (split_dir.md5): what it lists is what DVC tracks."""
    split_dir, out_dir, root = Path(split_dir), Path(out_dir), Path(root)
    files = read_manifest(split_dir)
    label_of = {cls: i for i, cls in enumerate(classes)}
    rel = Path(os.path.relpath(split_dir, root)).as_posix()
    by_split: dict[str, list[tuple[int, int, str]]] = {name: [] for name in SPLITS}
    for path in files:
        name, cls, fname = path.split("/")
        if name not in by_split or cls not in label_of:
            raise DataError(f"{split_dir}.md5: unexpected entry {path!r}; rerun the split stage")
        by_split[name].append((label_of[cls], png_number(fname), f"{rel}/{path} {label_of[cls]}"))
    counts = {}
    for name in SPLITS:
        lines = [line for _, _, line in sorted(by_split[name])]
        write_text(out_dir / f"{name}.txt", "".join(line + "\n" for line in lines))
        counts[name] = len(lines)
    progress("index: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def run(split_dir: str | Path, meta: str | Path, out_dir: str | Path) -> dict[str, int]:
    """The stage: the class names come from unpack's meta.json."""
    return write_indexes(split_dir, read_meta(meta)["classes"], out_dir)
