"""Two revisions of cifarlab side by side: the same default pipeline, the same bytes, the same speed?

    python bench/revisions.py 1365807 HEAD            # the layout move of issue 13
    python bench/revisions.py OLD NEW --rounds 2 --epochs 30

Each revision's tree (`git worktree add --detach`) becomes its own temp project over the
real 10,000-image archive from ../shared/cifar10. Every stage's command from that revision's
dvc.yaml runs directly, the revisions interleaved stage by stage (and train `--rounds` times
each, alternating), so both see the same machine load. It prints each stage's seconds, the
new/old ratio of the train stage, and whether evaluate's metrics.json and train's
metrics.json are identical: a pure refactoring must give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project  # noqa: E402


def timed(cmd: str, proj) -> float:
    start = time.perf_counter()
    res = subprocess.run(["bash", "-c", cmd], cwd=proj.path, env=proj.env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{proj.path}: {cmd} failed:\n{res.stdout}\n{res.stderr}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=1, help="train runs per revision, alternating")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cifarlab-rev-"))
    archive = tmp / "cifar-10-python.tar.gz"
    build_real_archive(archive, full=False)
    projects, trees = {}, []
    try:
        for label, rev in (("old", args.old), ("new", args.new)):
            tree = tmp / f"{label}-tree"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=ROOT, check=True)
            trees.append(tree)
            params = {"train.epochs": args.epochs} if args.epochs else None
            projects[label] = make_project(tmp / label, archive, params, source=tree)
        stages = {k: yaml.safe_load((p.path / "dvc.yaml").read_text())["stages"] for k, p in projects.items()}
        seconds: dict[str, dict[str, list[float]]] = {k: {} for k in projects}
        for name in stages["new"]:
            rounds = args.rounds if name == "train" else 1
            for r in range(rounds):
                for label in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    s = timed(stages[label][name]["cmd"], projects[label])
                    seconds[label].setdefault(name, []).append(s)
                    print(f"{name:>10} {label}: {s:7.2f} s", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        for name in stages["new"]:
            o, n = statistics.mean(seconds["old"][name]), statistics.mean(seconds["new"][name])
            print(f"{name:>10}: old {o:7.2f} s  new {n:7.2f} s  new/old {n / o:.3f}")
        for rel in ("reports/eval/metrics.json", "reports/train/metrics.json"):
            a, b = (json.loads((p.path / rel).read_text()) for p in projects.values())
            print(
                f"{rel}: {'identical' if a == b else 'DIFFERENT'}"
                + (f" (test accuracy {b['accuracy']})" if "accuracy" in b else "")
            )
    finally:
        for tree in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
