"""Atomic writes: a stage killed half-way leaves either the old output or the new, never half.

Files go to a temporary sibling and are renamed over the target (rename is atomic on POSIX
and on Windows within one volume); directories are built in a temporary sibling and swapped
in at the end, so an interrupted unpack never leaves a tree that looks complete.

A SIGKILL (or a power cut) skips every cleanup, so a temporary sibling can outlive its
writer: each one carries its writer's process id in its name
(`.<name>.<pid>-<random>.tmp`), and the next write of the same target removes the siblings
whose writer no longer runs. A sibling of a live writer (a concurrent run) is left alone.

When the machine refuses a write (a full disk, a read-only folder), the temporary sibling is
removed and the OSError goes on carrying the path of the output (never the temporary name,
which no longer exists), so the stage can say in one line which output could not be written.
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


_TEMP_PART = re.compile(r"^\.(.+)\.\d+-[^/]*\.(tmp|old)$")


def public_path(path: str | os.PathLike) -> str:
    """`path` with every temporary sibling's name (`.<name>.<pid>-<random>.tmp`) put back to the
    output's name: `data/.png.12-ab.tmp/cat/cat_1.png` -> `data/png/cat/cat_1.png`."""
    parts = Path(path).parts
    if not parts:
        return ""
    public = Path(*[(m.group(1) if (m := _TEMP_PART.match(part)) else part) for part in parts])
    with contextlib.suppress(ValueError, OSError):  # inside the working folder: relative, as stages name paths
        public = public.relative_to(Path.cwd()) if public.is_absolute() else public
    return str(public)


def _name_the_output(exc: BaseException, path: Path) -> None:
    """An OSError raised by write() or close() names no file: give it the output's path."""
    if isinstance(exc, OSError) and not exc.filename:
        exc.filename = str(path)


def free_space(path: str | os.PathLike) -> tuple[int, int | None, int]:
    """(bytes free, files free or None where the filesystem has no inode limit, block size) on the
    filesystem that holds `path` (its nearest existing folder), as an unprivileged writer sees them."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    if not hasattr(os, "statvfs"):  # Windows: no inode count, no block size
        return shutil.disk_usage(p).free, None, 4096
    st = os.statvfs(p)
    files = st.f_favail if st.f_files else None  # f_files == 0: no inode limit (btrfs, some tmpfs)
    return st.f_bavail * st.f_frsize, files, st.f_frsize or 4096


def on_disk(nbytes: int, block: int) -> int:
    """The space a file of `nbytes` takes: whole blocks (at least one for a non-empty file)."""
    return -(-nbytes // block) * block


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_the_output(exc, path)
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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_output(exc, path)
        raise
