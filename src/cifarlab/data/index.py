"""Chapter 1.3: the txt indexes, one ``path label`` line per image, and their reader.

Paths are relative to the repository root, so an index written on one machine still works
in a clone elsewhere. The reader is the one place an index is parsed: every consumer gets
the same checks and the same errors, naming the file and the line.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..atomic import write_text
from ..errors import DataError
from .layout import SPLITS, png_number, read_manifest


def write_indexes(split_dir: str | Path, classes: list[str], out_dir: str | Path, root: str | Path = ".",
                  progress=print) -> dict[str, int]:
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


class Index(list):
    """(path, label) pairs, with `lines[i]` the line number of entry i, for error messages."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.lines: list[int] = []

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"


def read_index(path: str | Path, num_classes: int = 10) -> Index:
    """Parse an index into (path, label) pairs; a malformed line is an error naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: index missing; run the index stage (dvc repro index)") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text index") from None
    items = Index(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{lineno}: expected '<path> <label>', got {line!r}")
        img, label = parts[0], int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{lineno}: label {label} is outside 0..{num_classes - 1}")
        if Path(img).is_absolute() or ".." in Path(img).parts:
            raise DataError(f"{path}:{lineno}: path {img!r} must be relative to the repository and stay inside it")
        items.append((img, label))
        items.lines.append(lineno)
    if not items:
        raise DataError(f"{path}: the index lists no images")
    return items
