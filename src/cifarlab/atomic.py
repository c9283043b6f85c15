"""Atomic writes: a stage killed half-way leaves either the old output or the new, never half.

Files go to a temporary sibling and are renamed over the target (rename is atomic on POSIX
and on Windows within one volume); directories are built in a temporary sibling and swapped
in at the end, so an interrupted unpack never leaves a tree that looks complete.

A SIGKILL (or a power cut) skips every cleanup, so a temporary sibling can outlive its
writer: each one carries its writer's process id in its name
(`.<name>.<pid>-<random>.tmp`), and the next write of the same target removes the siblings
whose writer no longer runs. A sibling of a live writer (a concurrent run) is left alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # unknown: keeping a stray file is the safe side
    # a killed writer whose parent died too can linger as a zombie until someone reaps it:
    # it answers signal 0 but will never write again
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # with /proc: it exited meanwhile
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def sweep_stale_siblings(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of `path` whose writer is gone; returns what was removed.

    Only names this module makes are touched (`.<name>.<pid>-<anything>.tmp` or `.old`); on
    Windows, where `os.kill(pid, 0)` is no existence check, nothing is removed.
    """
    path = Path(path)
    if os.name != "posix" or not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[^/]*\.(tmp|old)$")
    removed = []
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if not m or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(path)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); an output gets the permissions any new file would
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file path; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a fresh temporary directory that replaces ``path`` as a whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700)
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
