"""The data tree's naming rules, in one place for every stage that reads or writes it.

Image i of test_batch is ``<class>_<i>.png`` (the tutorial's names); image i of data_batch_k
is ``<class>_<10000*k + i>.png``, so names stay unique across batches and never change when
a batch is added. ``meta.json`` (written by unpack) holds the class names and batch ranges;
``normalize.json`` (written by stats) the mean and std that Normalize uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cifarlab.atomic import free_space, write_text
from cifarlab.errors import DataError, ResourceError, size_text

SPLITS = ("train", "valid", "test")
BATCH_SIZE = 10000
_NUMBER = re.compile(r"_(\d+)\.png$")


def batch_offset(name: str) -> int:
    """Where a batch's image numbers start: test_batch at 0, data_batch_k at 10000*k."""
    return 0 if name == "test_batch" else BATCH_SIZE * int(name.rsplit("_", 1)[1])


def png_name(cls: str, number: int) -> str:
    return f"{cls}_{number}.png"


def png_number(path: str | Path) -> int:
    m = _NUMBER.search(str(path))
    if not m:
        raise DataError(f"{path}: not named <class>_<number>.png as unpack writes")
    return int(m.group(1))


def from_test_batch(path: str | Path) -> bool:
    return png_number(path) < BATCH_SIZE


#: an upper bound of one manifest line's bytes (`<md5>  <split>/<class>/<class>_<number>.png`)
MANIFEST_LINE = 96


def require_space(target: str | Path, need_bytes: int, need_files: int, what: str) -> None:
    """Stop before any work when the filesystem that will hold `target` has less free space
    (or fewer free files, where it counts them) than `what` needs; the message says both."""
    free, files, _ = free_space(Path(target).parent)
    short_bytes = need_bytes > free
    short_files = files is not None and need_files > files
    if short_bytes or short_files:
        need = size_text(need_bytes) + (f" and {need_files:,} files" if short_files else "")
        have = size_text(free) + (f" and room for {files:,} files" if short_files else "")
        raise ResourceError(
            f"{target}: not enough free space to {what}: it needs about {need}, the filesystem "
            f"has {have} free; free some space there (or move the project to a larger disk), "
            "then rerun `dvc repro`"
        )


def manifest_path(tree: str | Path) -> Path:
    """The md5 manifest beside a tree: data/png -> data/png.md5."""
    tree = Path(tree)
    return tree.with_name(tree.name + ".md5")


def write_manifest(tree: str | Path, entries: dict[str, str]) -> None:
    """`md5  relative/path` lines (md5sum's format, so `md5sum -c` checks a tree by hand).

    Downstream stages depend on this one small file instead of the tree it describes: it
    holds every file's content hash, so nothing changes in the tree without it changing,
    and DVC hashes a 10,000-file tree once (as an output) instead of once per dependant.
    """
    write_text(manifest_path(tree), "".join(f"{md5}  {rel}\n" for rel, md5 in sorted(entries.items())))


def read_manifest(tree: str | Path) -> dict[str, str]:
    path = manifest_path(tree)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the stage that writes {Path(tree).name} (dvc repro)") from None
    out = {}
    for n, line in enumerate(lines, 1):
        md5, sep, rel = line.partition("  ")
        if not sep or len(md5) != 32:
            raise DataError(f"{path}:{n}: not an 'md5  path' line: {line!r}")
        out[rel] = md5
    return out


def read_meta(path: str | Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
        assert isinstance(meta["classes"], list) and isinstance(meta["batches"], dict)
        return meta
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the unpack stage (dvc repro unpack)") from None
    except (ValueError, KeyError, AssertionError, TypeError):
        raise DataError(f"{path}: not the class and batch file the unpack stage writes") from None


def read_stats(path: str | Path) -> dict:
    """normalize.json as the stats stage wrote it, or a DataError naming the file."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the stats stage (dvc repro stats)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not the JSON the stats stage writes ({exc}); rerun it (dvc repro stats --force)"
        ) from None
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise DataError(f"{path}: no 'mean' and 'std'; rerun the stats stage (dvc repro stats --force)")
    return stats
