"""Resumable training: one checkpoint dict per run, keyed by a fingerprint, outside DVC's outputs.

DVC deletes a stage's outputs before it runs, and a `persist: true` output would take the
stage out of the run cache (switching back to an earlier learning rate would retrain
instead of restoring in a second). So checkpoints live in `checkpoints/<fingerprint>/`,
git-ignored: a rerun with the same params, data and code finds its own checkpoint and
continues; anything else starts fresh. A finished run deletes its checkpoint.

A checkpoint file is this module's own format: a header line with the sha256 of the torch
bytes that follow, so a truncated, empty or corrupt file (torch.load itself notices only some
damage: flipped bytes inside a tensor load silently) is never resumed from. Each save keeps the
one before as `previous.pt`. A damaged file is named in one warning line and set aside, renamed
into `checkpoints/damaged/` (never deleted), and training resumes from the newest sound one, or
starts over. One train stage at a time writes a project's checkpoints (`train_lock`): a second
one, such as the stage a SIGTERMed `dvc` left running, stops with a message naming the first.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cifarlab.atomic import atomic_path
from cifarlab.errors import CifarlabError

KEEP_UNFINISHED = 3
MAGIC = b"cifarlab-checkpoint/1 sha256="
#: what a checkpoint must hold to be resumed from
KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "history", "best")
DAMAGED = "damaged"  # checkpoints/damaged/: set-aside files, never pruned


def fingerprint(params: dict, data_digest: str, code_roots: Sequence[Path]) -> str:
    """A hash of what determines a training run: its params, its data and the code (each
    package folder's .py files, named relative to the folder's parent)."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(data_digest.encode())
    for root in code_roots:
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root.parent).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save(obj: dict, path: Path, keep_previous: Path | None = None) -> None:
    """Write atomically; with `keep_previous`, the file `path` held so far is moved there first."""
    buf = io.BytesIO()
    torch.save(obj, buf)  # in memory, then written by Python: a full disk is an OSError, not torch's RuntimeError
    data = buf.getbuffer()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a power cut after the rename must not leave a file of zeros
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)


class Damaged(Exception):
    """A checkpoint file that cannot be resumed from; the message says why."""


def load(path: Path) -> dict:
    """Check the file's digest, then load it. Our own checkpoints hold only tensors and plain
    containers: weights_only loads them. Raises Damaged with the reason."""
    data = Path(path).read_bytes()
    if not data:
        raise Damaged("an empty file")
    head, sep, body = data.partition(b"\n")
    if not head.startswith(MAGIC) or not sep:
        raise Damaged("no cifarlab checkpoint header")
    if hashlib.sha256(body).hexdigest().encode() != head[len(MAGIC) :]:
        raise Damaged(f"its content does not match its sha256 (truncated or corrupt; {len(data):,} bytes)")
    try:
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # the digest matched, so this is a file written by another version
        raise Damaged(
            f"torch cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise Damaged("not a training checkpoint (keys missing)")
    return state


def train_lock(root: Path):
    """Hold the project's training lock (an open file; closing it, or exiting, releases it).

    Raises CifarlabError naming the holder when another process holds it. Where fcntl is
    missing (Windows), returns None and locks nothing.
    """
    try:
        import fcntl  # lazy: POSIX only; on Windows training runs without the lock
    except ImportError:
        return None
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "a+b", buffering=0)  # noqa: SIM115 - held open: the lock lasts as long as the file; unbuffered: nothing left to flush at close
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().decode(errors="replace").strip() or "another process"
        f.close()
        raise CifarlabError(
            f"{root}: another train stage is running in this project ({holder}) and writes "
            "these checkpoints; a second one would damage them. Wait for it to finish, or stop it "
            "(kill it with SIGTERM, which keeps its last finished epoch), then rerun `dvc repro`. "
            "(A `dvc` process stopped on its own leaves its stage running.)"
        ) from None
    try:
        os.ftruncate(f.fileno(), 0)
        os.pwrite(f.fileno(), f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock is held all the same, only its note is missing
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            f.close()
            exc.filename = exc.filename or str(root / ".lock")
            raise
    return f


class CheckpointDir:
    def __init__(self, root: Path, fp: str):
        self.root = Path(root)
        self.fp = fp
        self.dir = self.root / fp
        self.path = self.dir / "checkpoint.pt"
        self.previous = self.dir / "previous.pt"

    def exists(self) -> bool:
        return self.path.is_file() or self.previous.is_file()

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save(state, self.path, keep_previous=self.previous)

    def load(self) -> dict:
        return load(self.path)

    def set_aside(self, path: Path) -> Path:
        """Move a damaged file to checkpoints/damaged/<fingerprint>-<name>[.n]; never deletes."""
        folder = self.root / DAMAGED
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.fp}-{path.name}"
        n = 1
        while target.exists():
            target = folder / f"{self.fp}-{path.name}.{n}"
            n += 1
        os.replace(path, target)
        return target

    def load_sound(self, warn: Callable[[str], None], set_aside: bool = True) -> tuple[dict, Path] | None:
        """The newest sound checkpoint of this run and its file, or None: start over.

        Each damaged one is set aside (by the one process that writes checkpoints: `set_aside`)
        with one `warning:` line naming it, why and where it went.
        """
        sound = []
        for path in (self.path, self.previous):
            if not path.is_file():
                continue
            try:
                sound.append((load(path), path))
            except (Damaged, OSError) as exc:
                if isinstance(exc, OSError) and not path.exists():
                    continue  # removed meanwhile
                if not set_aside:
                    continue
                target = self.set_aside(path)
                warn(
                    f"warning: {path}: damaged checkpoint ({exc}); set aside as {target}, "
                    "training goes on from the newest sound checkpoint or starts over"
                )
        if not sound:
            return None
        return max(sound, key=lambda s: s[0]["epoch"])

    def finish(self) -> None:
        """Delete this run's checkpoint and all but the newest few unfinished ones."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.root.is_dir():
            return
        others = sorted(
            (d for d in self.root.iterdir() if d.is_dir() and d.name != DAMAGED),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for d in others[KEEP_UNFINISHED:]:
            shutil.rmtree(d, ignore_errors=True)
