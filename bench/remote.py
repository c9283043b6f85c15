"""Benchmark of sharing through the default DVC remote: push, pull into a fresh clone, and after.

    python bench/remote.py               # 10,000 images, then 60,000 images (about 10 minutes on 2 cores)
    python bench/remote.py --only 10k    # one size

For each size, in a temp git repo copied from this project (its committed .dvc/config, so the
default remote is the `cifarlab-dvc-remote` folder beside the repo), with a quick training
config (tutorial.net, 1 epoch) so the pipeline has models and reports:
build the archive from ../shared/cifar10 and `dvc repro` everything (not timed), then time
`dvc push`, `git clone` + `dvc pull` into a fresh clone beside it, the `dvc repro` that follows
(unpack and split rebuild the uncached PNG trees; nothing else may run), a no-op `dvc repro`,
and `dvc status`. Prints a table of seconds and the 60k/10k ratios against the targets:
push and pull under 30 s and a no-op repro under 2 s on 10,000 images, no step more than
6x its 10,000-image time on 60,000.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import Project, make_project  # noqa: E402

ALL = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
QUICK = {"model.name": "tutorial.net", "train.epochs": 1, "train.batch_size": 128, "train.histograms": False}
STEPS = ["push", "pull", "repro after pull", "no-op repro", "status"]
TARGET_10K = {"push": 30.0, "pull": 30.0, "no-op repro": 2.0}
MAX_RATIO = 6.0


def timed(proj: Project, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = proj.dvc(*args)
    return time.perf_counter() - t, res.stdout


def folder_size(path: Path) -> tuple[int, float]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 1e6


def run_size(label: str, tmp: Path) -> dict:
    work = tmp / label
    work.mkdir()
    archive = work / "cifar-10-python.tar.gz"
    build_real_archive(archive, full=label == "60k")
    params = dict(QUICK, **({"data.batches": ALL} if label == "60k" else {}))
    proj = make_project(work / "proj", archive, params)
    t = time.perf_counter()
    proj.dvc("repro")
    build = time.perf_counter() - t
    proj.commit("built")
    print(f"\n== {label}: pipeline built in {build:.0f} s (not part of the table) ==", flush=True)

    res = {}
    res["push"], out = timed(proj, "push")
    remote = work / "cifarlab-dvc-remote"
    nfiles, mb = folder_size(remote)
    print(f"push: {out.strip().splitlines()[-1]}  (remote {remote}: {nfiles} files, {mb:.0f} MB)", flush=True)

    clone = Project(work / "clone")
    proj.run("git", "clone", "-q", str(proj.path), str(clone.path))
    res["pull"], out = timed(clone, "pull")
    print(f"pull: {out.strip().splitlines()[-1]}", flush=True)
    res["repro after pull"], out = timed(clone, "repro")
    ran = clone.ran(subprocess.CompletedProcess([], 0, out, ""))
    if not set(ran) <= {"unpack", "split"}:
        raise SystemExit(f"{label}: the repro after pull ran {ran}: it should rebuild only the PNG trees")
    if clone.run("git", "status", "--porcelain", "dvc.lock").stdout.strip():
        raise SystemExit(f"{label}: dvc.lock changed in the clone: the rebuilt PNG trees differ")
    print(f"repro after pull: ran {ran}, dvc.lock unchanged", flush=True)
    res["no-op repro"], out = timed(clone, "repro")
    if clone.ran(subprocess.CompletedProcess([], 0, out, "")):
        raise SystemExit(f"{label}: the no-op repro ran stages: {out}")
    res["status"], out = timed(clone, "status")
    print("  ".join(f"{k} {v:.2f}s" for k, v in res.items()), flush=True)
    res["images"] = sum(1 for _ in (clone.path / "data/png").rglob("*.png"))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["10k", "60k"], help="measure one size only")
    args = ap.parse_args()
    sizes = [args.only] if args.only else ["10k", "60k"]
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as d:
        results = {label: run_size(label, Path(d)) for label in sizes}

    print(
        "\n| step | "
        + " | ".join(f"{results[s]['images']:,} images (s)" for s in sizes)
        + (" | 60k/10k |" if len(sizes) == 2 else " |")
    )
    print("| --- | " + " | ".join("---:" for _ in sizes) + (" | ---: |" if len(sizes) == 2 else " |"))
    failed = []
    for step in STEPS:
        row = [f"{results[s][step]:.2f}" for s in sizes]
        if "10k" in results and step in TARGET_10K and results["10k"][step] >= TARGET_10K[step]:
            failed.append(f"10k {step} {results['10k'][step]:.2f}s >= {TARGET_10K[step]:.0f}s")
        if len(sizes) == 2:
            ratio = results["60k"][step] / results["10k"][step]
            row.append(f"{ratio:.2f}x")
            if ratio > MAX_RATIO:
                failed.append(f"60k/10k {step} {ratio:.2f}x > {MAX_RATIO:.0f}x")
        print(f"| {step} | " + " | ".join(row) + " |")
    print(
        "\ntargets: 10k push and pull < 30 s, no-op repro < 2 s; 60k at most 6x 10k per step: "
        + ("all met" if not failed else "MISSED: " + "; ".join(failed))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
