"""`cifarlab tensorboard-gather`: several DVC experiments' TensorBoard runs in one folder.

TensorBoard compares runs that sit side by side under one logdir, but each DVC experiment
keeps its runs in its own commit (reports/tensorboard/{train,visualize}), and only one of
them is in the workspace at a time. This copies each chosen experiment's runs, through
DVC itself (the files come from DVC's cache or remote, without checking anything out), to
OUT/<experiment>/train and OUT/<experiment>/visualize, so that

    tensorboard --logdir OUT

shows them together: curves overlaid, one hparams table row per experiment.

Experiments are what `dvc exp show` lists (the workspace, the baseline commit and its
experiments), or the ones named: experiment names, branches, tags, commits, `workspace`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cifarlab.atomic import atomic_dir
from cifarlab.errors import CifarlabError

RUNS = {"train": "reports/tensorboard/train", "visualize": "reports/tensorboard/visualize"}
SKIP_STATES = ("Queued", "Failed", "Running")


@dataclass(frozen=True)
class Entry:
    name: str  # the folder name under OUT
    rev: Optional[str]  # a git revision DVC understands; None for the workspace


def listed(repo: str = ".") -> list[Entry]:
    """The workspace, baseline(s) and experiments that `dvc exp show` lists, finished ones only."""
    from dvc.api import exp_show  # lazy: dvc is a heavy import, needed only to read the experiments

    try:
        rows = exp_show(repo=repo)
    except Exception as exc:  # DVC raises its own types; the message is what helps
        raise CifarlabError(f"dvc exp show failed in {repo}: {exc}") from None
    out = []
    for row in rows:
        if row.get("State") in SKIP_STATES:
            continue
        rev = row.get("rev")
        if rev == "workspace":
            out.append(Entry("workspace", None))
        elif row.get("Experiment"):
            out.append(Entry(row["Experiment"], rev))
        elif rev:
            out.append(Entry(rev, rev))
    return _unique(out)


def named(names: list[str]) -> list[Entry]:
    """Entries for names the user gave: `workspace`, or any revision DVC resolves (an exp name too)."""
    return _unique([Entry("workspace", None) if n == "workspace" else Entry(n, n) for n in names])


def _unique(entries: list[Entry]) -> list[Entry]:
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        safe = re.sub(r"[^A-Za-z0-9._@+-]+", "-", e.name).strip("-.") or "rev"
        seen[safe] = seen.get(safe, 0) + 1
        if seen[safe] > 1:
            safe = f"{safe}-{seen[safe]}"
        out.append(Entry(safe, e.rev))
    return out


def _open(entry: Entry, repo: str):
    """DVC's view of the repository at the entry's revision (resolving it now, not lazily)."""
    from dvc.api import DVCFileSystem  # lazy: dvc is a heavy import, needed only to read the experiments

    try:
        fs = DVCFileSystem(repo, rev=entry.rev)
        fs.isdir(RUNS["train"])
        return fs
    except Exception as exc:  # DVC and scmrepo raise many types; the message is what helps
        try:
            known = ", ".join(e.name for e in listed(repo))
        except CifarlabError:
            known = "see `dvc exp show`"
        raise CifarlabError(
            f"{entry.rev}: not a revision or experiment DVC knows in {repo} "
            f"({type(exc).__name__}: {exc}); listed: {known}"
        ) from None


def fetch(entry: Entry, out: Path, repo: str = ".", fs=None) -> list[str]:
    """Copy the entry's TensorBoard runs to out/<name>/<run>; return the runs it had."""
    fs = fs or _open(entry, repo)
    found = []
    with atomic_dir(out / entry.name) as tmp:
        for run, path in RUNS.items():
            if not fs.isdir(path):
                continue
            try:
                fs.get(path, str(tmp / run), recursive=True)
            except Exception as exc:
                raise CifarlabError(
                    f"{entry.name}: could not get {path} ({type(exc).__name__}: {exc}); "
                    "is it in the cache? try `dvc pull` or `dvc exp pull`"
                ) from None
            found.append(run)
        if not found:
            raise CifarlabError(
                f"{entry.name}: has no TensorBoard runs ({', '.join(RUNS.values())}); was the pipeline run there?"
            )
    return found


def gather(
    out: str | Path, names: Optional[list[str]] = None, repo: str = ".", log: Callable[[str], None] = print
) -> dict[str, list[str]]:
    """Gather the runs of `names` (or of everything `dvc exp show` lists) under `out`.

    Named revisions are all resolved before anything is copied, and one without runs is an
    error; when gathering everything, an entry without runs (a commit from before the first
    `dvc repro`) is reported and skipped.
    """
    out = Path(out)
    entries = named(names) if names else listed(repo)
    if not entries:
        raise CifarlabError(f"dvc exp show lists nothing to gather in {repo}")
    systems = {e: _open(e, repo) for e in entries} if names else {}
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {}
    for entry in entries:
        try:
            runs = fetch(entry, out, repo, systems.get(entry))
        except CifarlabError as exc:
            if names:
                raise
            log(f"skipped {exc}")
            continue
        done[entry.name] = runs
        log(f"{entry.name}: {', '.join(runs)} -> {out / entry.name}")
    if not done:
        raise CifarlabError("no experiment had TensorBoard runs to gather")
    log(f"tensorboard --logdir {out}")
    return done


def remove_stale(out: Path, keep: list[str]) -> None:
    """Delete experiment folders under `out` that are not in `keep` (for --clean)."""
    for child in Path(out).iterdir():
        if child.is_dir() and child.name not in keep and not child.name.startswith("."):
            shutil.rmtree(child)
