"""Resumable training: one checkpoint dict per run, keyed by a fingerprint, outside DVC's outputs.

DVC deletes a stage's outputs before it runs, and a `persist: true` output would take the
stage out of the run cache (switching back to an earlier learning rate would retrain
instead of restoring in a second). So checkpoints live in `checkpoints/<fingerprint>/`,
git-ignored: a rerun with the same params, data and code finds its own checkpoint and
continues; anything else starts fresh. A finished run deletes its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from cifarlab.atomic import atomic_path

KEEP_UNFINISHED = 3


def fingerprint(params: dict, data_digest: str, code_root: Path) -> str:
    """A hash of what determines a training run: its params, its data and the code."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(data_digest.encode())
    for path in sorted(code_root.rglob("*.py")):
        h.update(path.relative_to(code_root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict:
    """Our own checkpoints hold only tensors and plain containers: weights_only loads them."""
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointDir:
    def __init__(self, root: Path, fp: str):
        self.root = Path(root)
        self.dir = self.root / fp
        self.path = self.dir / "checkpoint.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save(state, self.path)

    def load(self) -> dict:
        return load(self.path)

    def finish(self) -> None:
        """Delete this run's checkpoint and all but the newest few unfinished ones."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.root.is_dir():
            return
        others = sorted((d for d in self.root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
        for d in others[KEEP_UNFINISHED:]:
            shutil.rmtree(d, ignore_errors=True)
