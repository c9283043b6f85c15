"""What every stage script shares: one clear error line instead of a traceback, and timing.

A user error (bad params, a corrupt archive, a broken image) is a `CifarlabError` whose
message already names the file, key or value; the traceback would only bury it, so it is
printed alone and the process exits 1. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time

from cifarlab.errors import CifarlabError


def stage(func):
    """Decorate a stage's main(args): parse args, run, turn user errors into exit code 1."""

    @functools.wraps(func)
    def run(argv=None):
        # progress lines must reach `dvc repro`'s console (and a watching test) as they happen
        sys.stdout.reconfigure(line_buffering=True)
        start = time.perf_counter()
        name = func.__module__ if func.__module__ != "__main__" else sys.argv[0]
        try:
            func(argv)
        except CifarlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted; outputs are written atomically, so rerun `dvc repro` to finish", file=sys.stderr)
            sys.exit(130)
        print(f"{name}: done in {time.perf_counter() - start:.2f} s", flush=True)

    return run


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return p
