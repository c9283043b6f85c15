"""Getting the archive into place before `dvc repro`: download, local copy, or DVC.

`dvc repro` stops before any stage when a dependency is missing, so fetching the archive
is its own step. Online it downloads the official archive and checks its md5; offline it
copies a local file (or says where to put one). Either way the archive ends up tracked by
DVC (`dvc add`), so `dvc push` shares it and queued experiments see it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from cifarlab.archive.reader import SKIP_MD5_HINT, file_md5
from cifarlab.atomic import atomic_path
from cifarlab.errors import DataError


def _download(url: str, dest: Path, progress: bool = True) -> None:
    from tqdm import tqdm  # lazy: only a download shows a progress bar

    try:
        with urllib.request.urlopen(url, timeout=30) as resp, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}). Offline? Copy the archive to {dest}, or run "
            f"`cifarlab get-archive --from PATH`, or `dvc pull {dest}` from a DVC remote that has it"
        ) from None


def _check_md5(path: Path, md5: Optional[str]) -> str:
    actual = file_md5(path)
    if md5 is not None and actual != md5.lower():
        raise DataError(f"{path}: md5 mismatch: expected {md5.lower()}, got {actual}; {SKIP_MD5_HINT}")
    return actual


def set_params_md5(params_path: Path, md5: Optional[str]) -> None:
    """Rewrite only the `md5:` line of the data section, keeping the file's comments."""
    text = params_path.read_text(encoding="utf-8")
    value = md5 if md5 else "null"
    new, n = re.subn(
        r"(?m)^(data:\n(?:[ \t]+[^\n]*\n|\s*\n)*?[ \t]+md5:[ \t]*)[^\s#]*", lambda m: m.group(1) + value, text
    )
    if n != 1:
        raise DataError(f"{params_path}: found no data.md5 line to update; set it by hand to {value}")
    params_path.write_text(new, encoding="utf-8")


def dvc_executable() -> Optional[str]:
    """`dvc` on PATH, else the one installed beside this interpreter (a venv not activated)."""
    beside = Path(sys.executable).parent / ("dvc.exe" if os.name == "nt" else "dvc")
    return shutil.which("dvc") or (str(beside) if beside.is_file() else None)


def get_archive(
    dest: str | Path,
    url: str,
    md5: Optional[str],
    *,
    source: Optional[str | Path] = None,
    dvc_add: bool = True,
    log=print,
) -> str:
    """Put a verified archive at `dest` and track it with DVC; return its md5."""
    dest = Path(dest)
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise DataError(f"{source}: no such archive to copy")
        actual = _check_md5(source, md5)
        if not dest.exists() or dest.resolve() != source.resolve():
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)
        log(f"copied {source} to {dest} (md5 {actual})")
    elif dest.is_file() and dest.stat().st_size > 0:
        actual = _check_md5(dest, md5)
        log(f"{dest} is already here (md5 {actual})")
    else:
        log(f"downloading {url} to {dest}")
        _download(url, dest)
        try:
            actual = _check_md5(dest, md5)
        except DataError:
            dest.unlink(missing_ok=True)
            raise
    if dvc_add:
        dvc = dvc_executable()
        if dvc is None or not Path(".dvc").is_dir():
            log("not in a DVC repository (or dvc is not installed): skipped `dvc add`")
        else:
            res = subprocess.run([dvc, "add", "-q", str(dest)], capture_output=True, text=True)
            if res.returncode != 0:
                raise DataError(f"`dvc add {dest}` failed: {res.stderr.strip() or res.stdout.strip()}")
            log(f"tracked by DVC: {dest}.dvc (commit it; `dvc push` shares the archive)")
    return actual
