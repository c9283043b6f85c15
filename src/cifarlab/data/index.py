"""Tutorial 1.3: the reader of the txt indexes the index stage writes (`cifarlab.pipeline.index`).

The reader is the one place an index is parsed: every consumer gets
the same checks and the same errors, naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.errors import DataError


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
