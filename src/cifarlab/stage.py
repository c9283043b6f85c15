"""What every stage script shares: one clear error line instead of a traceback, and timing.

A user error (bad params, a corrupt archive, a broken image) is a `CifarlabError` whose
message already names the file, key or value; the traceback would only bury it, so it is
printed alone and the process exits 1. So is a fault of the machine that a write meets: a
full disk or quota, a read-only filesystem, a folder it may not write, an I/O error (an
`OSError` of one of `MACHINE_FAULTS`), named with the output's path, what is free and what
to do. SIGTERM (kill, timeout, docker stop, job schedulers) is handled like Ctrl-C: the
temporary files go, the outputs are the previous ones or none, exit status 143. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import io
import os
import signal
import sys
import time

from cifarlab.atomic import free_space, public_path
from cifarlab.errors import CifarlabError, size_text

#: errno -> (what happened, what to do): faults of the machine rather than of cifarlab
MACHINE_FAULTS = {
    errno.ENOSPC: ("no space left on device", "free some space there (or move the project to a larger disk)"),
    getattr(errno, "EDQUOT", -1): ("disk quota exceeded", "free some space within your quota (or raise it)"),
    errno.EFBIG: ("file too large for this filesystem", "move the project to another filesystem"),
    errno.EROFS: (
        "read-only file system",
        "make it writable (remount it read-write, or work in a writable copy of the project)",
    ),
    errno.EACCES: ("permission denied", "give this user write access to it"),
    errno.EPERM: ("operation not permitted", "give this user write access to it"),
    errno.EIO: (
        "input/output error (a failing disk, or a network filesystem gone away)",
        "check the disk or the mount",
    ),
}
AGAIN = "rerun `dvc repro` to finish"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C's KeyboardInterrupt would be, so that every
    cleanup that runs on Ctrl-C (temporary files removed, a finished epoch's checkpoint kept) runs."""


def _default_sigterm_in_child() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(owner: int):
    if hasattr(os, "register_at_fork") and not getattr(_on_sigterm, "registered", False):
        # forked workers (the data stages' pools) die on SIGTERM at once, as multiprocessing's
        # Pool.terminate needs: a Python-level handler there can miss a signal that lands just
        # before the worker blocks on its task queue, and the pool then waits forever
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        _on_sigterm.registered = True

    def handler(signum, frame):
        if os.getpid() != owner:  # a child that kept this handler: die as SIGTERM asks
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    return handler


def machine_fault(exc: OSError) -> str | None:
    """The one line for an OSError of MACHINE_FAULTS, else None (a bug: keep the traceback)."""
    if exc.errno not in MACHINE_FAULTS:
        return None
    what, todo = MACHINE_FAULTS[exc.errno]
    path = public_path(exc.filename) if exc.filename else None
    where = f"{path}: " if path else ""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free, files, _ = free_space(path or ".")
        left = f"{size_text(free)} free" + (
            f", room for {files:,} more files" if files is not None and files < 1000 else ""
        )
        return (
            f"{where}cannot write: {what} ({left} on its filesystem, the partial output removed); {todo}, then {AGAIN}"
        )
    return f"{where}cannot write: {what}; {todo}, then {AGAIN}"


def stage(func=None, *, resume: str = ""):
    """Decorate a stage's main(args): parse args, run, turn user errors and machine faults into
    exit code 1, Ctrl-C into 130 and SIGTERM into 143. `resume`: what a rerun continues from."""
    if func is None:
        return functools.partial(stage, resume=resume)
    again = AGAIN + (f" ({resume})" if resume else "")

    @functools.wraps(func)
    def run(argv=None):
        # progress lines must reach `dvc repro`'s console (and a watching test) as they happen
        if isinstance(sys.stdout, io.TextIOWrapper):  # it is, unless something replaced it
            sys.stdout.reconfigure(line_buffering=True)
        start = time.perf_counter()
        name = func.__module__ if func.__module__ != "__main__" else sys.argv[0]
        previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
        try:
            func(argv)
        except CifarlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except OSError as exc:
            line = machine_fault(exc)
            if line is None:
                raise
            print(f"error: {line.replace(AGAIN, again)}", file=sys.stderr)
            sys.exit(1)
        except Terminated:
            print(f"terminated (SIGTERM); outputs are written atomically, so {again}", file=sys.stderr)
            sys.exit(143)
        except KeyboardInterrupt:
            print(f"interrupted; outputs are written atomically, so {again}", file=sys.stderr)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
        print(f"{name}: done in {time.perf_counter() - start:.2f} s", flush=True)

    return run


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return p
