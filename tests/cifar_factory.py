"""Tiny CIFAR-10 archives in the official python layout, built by the tests themselves.

`make_archive` writes cifar-10-batches-py/{batches.meta, <batches>, readme.html} into a
tar.gz, each batch a protocol-2 pickle of {"data": uint8 (N, 3072), "labels": [...]} like
the official files. Keyword arguments corrupt it in the ways the bad-input tests need.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ROOT = "cifar-10-batches-py"
#: ../shared/cifar10/build_archive.py: the real CIFAR-10 images packed in the official layout
REAL_BUILDER = Path(__file__).resolve().parent.parent.parent / "shared" / "cifar10" / "build_archive.py"


def make_batch(per_class: int, seed: int = 0, bytes_keys: bool = False, learnable: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    if learnable:  # each class a colour of its own, plus noise: a model can learn it in an epoch or two
        palette = np.random.default_rng(1234).integers(30, 226, size=(10, 3))
        noise = rng.integers(-30, 31, size=(len(labels), 3, 1024))
        data = np.clip(palette[labels][:, :, None] + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    return {
        k("batch_label"): "test",
        k("labels"): labels.tolist(),
        k("data"): data,
        k("filenames"): [f"img_{i}.png" for i in range(len(labels))],
    }


def _add(tar: tarfile.TarFile, name: str, payload: bytes, **info_kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    for key, value in info_kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)


def make_archive(
    path: Path,
    batches=("test_batch",),
    per_class: int = 3,
    *,
    bytes_keys: bool = False,
    overrides: dict | None = None,
    extra_members=(),
    omit_meta: bool = False,
    learnable: bool = False,
) -> Path:
    """Write a valid tiny archive; `overrides` maps a batch name to raw pickle bytes to put instead."""
    path = Path(path)
    overrides = overrides or {}
    with tarfile.open(path, "w:gz") as tar:
        if not omit_meta:
            meta = {"label_names": CLASSES, "num_cases_per_batch": 10 * per_class, "num_vis": 3072}
            _add(tar, f"{ROOT}/batches.meta", pickle.dumps(meta, protocol=2))
        for i, name in enumerate(batches):
            payload = overrides.get(name) or pickle.dumps(
                make_batch(per_class, seed=i, bytes_keys=bytes_keys, learnable=learnable), protocol=2
            )
            _add(tar, f"{ROOT}/{name}", payload)
        for name, kw in extra_members:
            _add(tar, name, kw.pop("payload", b"x"), **kw)
        _add(tar, f"{ROOT}/readme.html", b"<html></html>")
    return path


def batch_arrays(path: Path, name: str = "test_batch") -> tuple[np.ndarray, np.ndarray]:
    """Read a batch back with the plain pickle module (trusted: the tests wrote it)."""
    with tarfile.open(path) as tar:
        obj = pickle.loads(tar.extractfile(f"{ROOT}/{name}").read(), encoding="latin1")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj["data"].reshape(-1, 3, 32, 32), np.asarray(obj["labels"])


def png_bomb(path: Path, side: int = 100_000) -> None:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 97)) + chunk(b"IEND", b"")
    )


def build_real_archive(dest: Path, full: bool = False) -> Path:
    """The real archive at `dest`: the 10,000 test images, or all 60,000 with `full`."""
    if not REAL_BUILDER.is_file():
        raise FileNotFoundError(f"{REAL_BUILDER} not found (run beside the project's shared/ folder)")
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(REAL_BUILDER), *([] if full else ["--test-only"]), str(dest)],
        check=True,
        capture_output=True,
    )
    return Path(dest)


def real_archive_for_test(dest: Path, full: bool = False) -> Path:
    """build_real_archive in a test: without ../shared it fails under CI and skips elsewhere."""
    import pytest

    try:
        return build_real_archive(dest, full)
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: CI must have ../shared beside the clone")
        pytest.skip(f"real-data test: {exc}")
