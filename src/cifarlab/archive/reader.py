"""Reading the CIFAR-10 python archive safely.

The archive comes from the internet and a CIFAR batch is a pickle, so nothing in it is
trusted: tar members are checked (no absolute paths, no `..`, no links or devices) and
read into memory, never extracted; pickles go through an unpickler that admits only the
numpy array reconstruction globals; arrays are checked for shape, dtype and label range.
The md5 is computed while the archive streams through, so checking it costs no extra read.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from cifarlab.errors import DataError

ROOT = "cifar-10-batches-py"
META = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
SKIP_MD5_HINT = "set data.md5 to the archive's md5, or to null to skip the check"
# A batch member is read into memory whole, before the md5 can be known: bound it, so a
# gzip bomb (gigabytes of zeros in a few megabytes) is refused from its tar header alone.
# The official batches are 31,035,704 bytes (test_batch 31,035,526), batches.meta 158.
MAX_MEMBER_BYTES = 64 * 2**20

# (module, name) pairs a CIFAR batch pickle may name: numpy's array reconstruction only.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell bytes; latin-1 only, below
}


def _latin1_encode(text, encoding="latin1", errors="strict"):
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise DataError(f"a CIFAR batch pickle asked for the {encoding!r} codec; only latin-1 is admitted")
    return text.encode("latin1", errors)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and plain containers, and nothing else."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"{self._source}: the pickle names the global {module}.{name}; a CIFAR batch "
                "may only reconstruct numpy arrays, so it was not loaded (it could run code)"
            )
        mod = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
        return {
            "_reconstruct": mod._reconstruct,
            "scalar": mod.scalar,
            "ndarray": np.ndarray,
            "dtype": np.dtype,
            "encode": _latin1_encode,
        }[name]


def safe_unpickle(payload: bytes, source: str):
    """Load a CIFAR pickle with string keys, refusing any global but numpy's."""
    try:
        return _RestrictedUnpickler(io.BytesIO(payload), source).load()
    except DataError:
        raise
    except Exception as exc:  # a malformed pickle raises a zoo of types
        raise DataError(f"{source}: not a readable CIFAR batch pickle ({type(exc).__name__}: {exc})") from None


class _HashingReader(io.RawIOBase):
    """Passes reads through and feeds every byte to md5, so verifying costs no second read."""

    def __init__(self, raw):
        self._raw = raw
        self.md5 = hashlib.md5()

    def readable(self):
        return True

    def readinto(self, buf):
        n = self._raw.readinto(buf)
        if n:
            self.md5.update(memoryview(buf)[:n])
        return n

    def drain(self):
        while chunk := self._raw.read(1 << 20):
            self.md5.update(chunk)


@dataclass
class Batch:
    name: str
    data: np.ndarray  # uint8 [N, 3, 32, 32]
    labels: np.ndarray  # int64 [N]


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise DataError(f"{archive}: refusing tar member {member.name!r}: its path leaves the archive root")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or special file"
        raise DataError(f"{archive}: refusing tar member {member.name!r}: a {kind} is not allowed")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    f = tar.extractfile(member)
    if f is None:  # a folder under a batch's name (links and devices are refused before)
        raise DataError(f"{archive}: tar member {member.name!r} is not a file")
    return f.read()


def _check_payload_member(member: tarfile.TarInfo, archive: Path, seen: set[str]) -> None:
    """A member that will be read into memory: once only, and no larger than a CIFAR batch can be."""
    if member.name in seen:
        raise DataError(
            f"{archive}: tar member {member.name!r} appears twice; refusing an archive whose contents are ambiguous"
        )
    seen.add(member.name)
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(
            f"{archive}: tar member {member.name!r} is {member.size:,} bytes; a CIFAR-10 batch "
            f"is about 31 MB, so it was not read (limit {MAX_MEMBER_BYTES:,} bytes)"
        )


def _str_keys(obj):
    """Keys as str: py2 pickles give str under latin1, pickles written by Python 3 may hold bytes."""
    if not isinstance(obj, dict):
        return obj
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_from_pickle(obj, name: str, archive: Path) -> Batch:
    src = f"{archive}:{name}"
    obj = _str_keys(obj)
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise DataError(f"{src}: expected a dict with 'data' and 'labels'")
    data, labels = obj["data"], obj["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{src}: 'data' must be a uint8 array of shape (N, 3072), got {dtype} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{src}: 'labels' is not a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{src}: {data.shape[0]} images but {labels.size} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(f"{src}: label {labels[bad[0]]} at position {bad[0]} is outside 0..{NUM_CLASSES - 1}")
    return Batch(name, data.reshape(-1, *IMAGE_SHAPE), labels)


def _class_names(obj, archive: Path) -> list[str]:
    obj = _str_keys(obj)
    names = obj.get("label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{archive}:{META}: expected 'label_names', a list of {NUM_CLASSES} class names")
    out = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    for n in out:
        if not n or "/" in n or "\\" in n or n in (".", ".."):
            raise DataError(f"{archive}:{META}: class name {n!r} cannot be a folder name")
    return out


def iter_batches(
    archive: str | Path, batches: list[str], md5: Optional[str] = None
) -> Iterator[tuple[list[str], Batch]]:
    """Yield (class names, batch) for each requested batch as the archive streams by.

    One pass, and memory bounded by one batch (plus any batch that precedes batches.meta
    in the archive, held until the class names are known). The md5 and the presence of
    every requested batch are checked when the stream ends, so a consumer must treat what
    it wrote as provisional until the generator is exhausted (unpack writes to a temporary
    tree and swaps it in only then).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(
            f"{archive}: the archive is missing. Get it with `cifarlab get-archive` (downloads "
            f"the official one), `cifarlab get-archive --from PATH` (a local copy) or `dvc pull`"
        )
    if archive.stat().st_size == 0:
        raise DataError(f"{archive}: the archive is empty (0 bytes); fetch it again")
    wanted = {f"{ROOT}/{b}": b for b in batches}
    waiting: list[tuple[str, bytes]] = []
    classes: Optional[list[str]] = None
    present: list[str] = []
    done: set[str] = set()
    seen: set[str] = set()

    def parse(name: str, payload: bytes) -> Batch:
        done.add(name)
        return _batch_from_pickle(safe_unpickle(payload, f"{archive}:{name}"), name, archive)

    with open(archive, "rb", buffering=0) as raw:
        reader = _HashingReader(raw)
        try:
            with gzip.GzipFile(fileobj=io.BufferedReader(reader, 1 << 20), mode="rb") as gz:
                with tarfile.open(fileobj=gz, mode="r|") as tar:
                    for member in tar:
                        _check_member(member, archive)
                        if member.isfile() and member.name.startswith(ROOT + "/"):
                            present.append(member.name[len(ROOT) + 1 :])
                        if member.name in wanted or member.name == f"{ROOT}/{META}":
                            _check_payload_member(member, archive, seen)
                        if member.name in wanted:
                            # held only by `waiting`, so that no frame keeps it while its batch is used
                            waiting.append((wanted[member.name], _read_member(tar, member, archive)))
                            if classes is not None:
                                yield classes, parse(*waiting.pop(0))
                        elif member.name == f"{ROOT}/{META}":
                            classes = _class_names(
                                safe_unpickle(_read_member(tar, member, archive), f"{archive}:{META}"), archive
                            )
                            while waiting:
                                yield classes, parse(*waiting.pop(0))
                # tarfile stops at the end-of-archive marker; gzip must still see its trailer
                gz.read()
        except DataError:
            raise
        except (gzip.BadGzipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            reason = (
                "not a gzip file"
                if isinstance(exc, gzip.BadGzipFile)
                else ("truncated" if isinstance(exc, EOFError) else f"corrupt ({exc})")
            )
            raise DataError(f"{archive}: the archive is {reason}; fetch it again") from None
        reader.drain()
    if md5 is not None and reader.md5.hexdigest() != md5.lower():
        raise DataError(
            f"{archive}: md5 mismatch: expected {md5.lower()}, got {reader.md5.hexdigest()}; {SKIP_MD5_HINT}"
        )
    if classes is None:
        raise DataError(f"{archive}: no {ROOT}/{META} in the archive; is it the CIFAR-10 python version?")
    missing = [b for b in batches if b not in done]
    if missing:
        raise DataError(
            f"{archive}: batch {missing[0]!r} (data.batches) is not in the archive; "
            f"it holds: {', '.join(sorted(present)) or 'no files under ' + ROOT}"
        )


def read_archive(
    archive: str | Path, batches: list[str], md5: Optional[str] = None
) -> tuple[list[str], Iterator[Batch]]:
    """The whole stream at once: (class names, the requested batches in `batches` order)."""
    got = {}
    classes: list[str] = []
    for batch_classes, batch in iter_batches(archive, batches, md5):
        classes = batch_classes
        got[batch.name] = batch
    return classes, iter([got[b] for b in batches])


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
