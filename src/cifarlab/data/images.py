"""Opening the pipeline's own images, with the checks that make a bad file a clear error.

The pipeline's images are 32x32 RGB PNGs written by unpack; anything else named by an index
(missing, empty, not an image, another format, truncated, another size, grayscale or RGBA,
a decompression bomb) is an error that names the file and the index line, rather than a
crash deep in a DataLoader worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarlab.data.parallel import map_ranges
from cifarlab.errors import DataError

SIZE = (32, 32)


def load_rgb32(path: str | Path, where: str = "") -> np.ndarray:
    """Decode one image to uint8 [32, 32, 3]; `where` (like 'data/index/train.txt:12') goes in errors.

    Format, mode and size come from the file's header and are checked before any pixel is
    decoded, so a huge or hostile picture costs nothing (PIL's decompression-bomb guard
    refuses the largest outright).
    """
    at = f" (named at {where})" if where else ""
    try:
        with Image.open(path) as img:
            fmt, mode, size = img.format, img.mode, img.size
            if fmt != "PNG":
                raise DataError(f"{path}{at}: a {fmt} file; the pipeline's images are PNG")
            if mode != "RGB":
                raise DataError(f"{path}{at}: a {mode} image; the pipeline's images are RGB")
            if size != SIZE:
                raise DataError(f"{path}{at}: {size[0]}x{size[1]} pixels; the pipeline's images are 32x32")
            img.load()
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}{at}: image missing") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}{at}: far larger than 32x32, not opened ({exc})") from None
    except UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(8)
        what = (
            "an empty file"
            if not head
            else "a broken or truncated PNG"
            if head == b"\x89PNG\r\n\x1a\n"
            else "not an image"
        )
        raise DataError(f"{path}{at}: {what}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}{at}: a broken or truncated image ({exc})") from None


def load_index_images(items, root: str | Path = ".", workers: int = 0) -> np.ndarray:
    """Decode every image of an `Index` (read_index) into one uint8 [N, 3, 32, 32] array, in parallel."""
    root = Path(root)
    out = np.empty((len(items), 3, *SIZE), dtype=np.uint8)

    def task(start, stop):
        part = np.empty((stop - start, 3, *SIZE), dtype=np.uint8)
        for i in range(start, stop):
            part[i - start] = load_rgb32(root / items[i][0], items.where(i)).transpose(2, 0, 1)
        return start, part

    for start, part in map_ranges(task, len(items), workers):
        out[start : start + len(part)] = part
    return out
