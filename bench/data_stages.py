"""Benchmark of the four data stages: the tutorial's scripts vs ours, bare and under dvc repro.

    python bench/data_stages.py              # 10,000 images (the tutorial's test batch)
    python bench/data_stages.py --full       # also 60,000 images (all six batches)

Builds the archive(s) from ../shared/cifar10, then in one run and on the same machine:
the tutorial's scripts (bench/tutorial_data.py), our four stage scripts run directly,
`dvc repro` of them in a temp git repo, and a no-op `dvc repro`. Prints seconds, peak
memory per stage and the ratios the issue sets targets for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project  # noqa: E402

STAGES = [
    ("unpack", ["stages/unpack.py", "--out", "data/png", "--meta", "data/meta.json"]),
    ("split", ["stages/split.py", "--png", "data/png", "--meta", "data/meta.json", "--out", "data/split"]),
    ("index", ["stages/index.py", "--split", "data/split", "--meta", "data/meta.json", "--out", "data/index"]),
    ("stats", ["stages/stats.py", "--index", "data/index/train.txt", "--out", "data/stats/normalize.json"]),
]
ALL = "[data_batch_1,data_batch_2,data_batch_3,data_batch_4,data_batch_5,test_batch]"


def timed(cmd, cwd, env=None):
    """Run cmd, return (seconds, peak RSS in MB of the process and its children)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {p.stderr.read().decode()}")
    return dt, ru.ru_maxrss / 1024


def run_size(label, archive, batches, tmp):
    print(f"\n== {label}: {archive.name} ==", flush=True)
    res = {}
    if batches is None:
        work = tmp / f"tutorial-{label}"
        work.mkdir()
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench/tutorial_data.py"), str(archive), str(work)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        res["tutorial"] = {k: float(v) for k, v in (x.split("=") for x in out)}
        print(
            "tutorial scripts:  "
            + "  ".join(f"{k} {v:.2f}s" for k, v in res["tutorial"].items())
            + f"  total {sum(res['tutorial'].values()):.2f}s"
        )
    proj = make_project(tmp / f"proj-{label}", archive)
    if batches:
        params = proj.path / "params.yaml"
        params.write_text(params.read_text().replace("batches: [test_batch]", f"batches: {batches}"))
        proj.commit("all batches")
    ours, peaks = {}, {}
    for name, args in STAGES:
        ours[name], peaks[name] = timed([sys.executable, *args], proj.path, proj.env)
    res["ours"] = ours
    print(
        "our stage scripts: "
        + "  ".join(f"{k} {v:.2f}s ({peaks[k]:.0f} MB)" for k, v in ours.items())
        + f"  total {sum(ours.values()):.2f}s"
    )
    subprocess.run(["rm", "-rf", "data/png", "data/split", "data/index", "data/stats", "data/meta.json"], cwd=proj.path)
    res["repro"], _ = timed(
        ["dvc", "repro", "--no-run-cache", "unpack", "split", "index", "stats"], proj.path, proj.env
    )
    res["noop"], _ = timed(["dvc", "repro", "unpack", "split", "index", "stats"], proj.path, proj.env)
    res["status"], _ = timed(["dvc", "status"], proj.path, proj.env)
    print(
        f"dvc repro: {res['repro']:.2f}s ({res['repro'] / sum(ours.values()):.2f}x the scripts)   "
        f"no-op dvc repro: {res['noop']:.2f}s   dvc status: {res['status']:.2f}s"
    )
    res["peak_mb"] = peaks
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also measure 60,000 images")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        small = tmp / "cifar-10-python.tar.gz"
        build_real_archive(small)
        r10 = run_size("10k", small, None, tmp)
        tut, ours = sum(r10["tutorial"].values()), sum(r10["ours"].values())
        print(
            f"\nratio tutorial/ours (scripts): {tut / ours:.2f}x faster  [target: ours under {9.7 / 3:.1f}s "
            f"(a third of the tutorial's 9.7s measured in the issue); here tutorial {tut:.2f}s, ours {ours:.2f}s]"
        )
        if args.full:
            big = tmp / "full" / "cifar-10-python.tar.gz"
            build_real_archive(big, full=True)
            r60 = run_size("60k", big, ALL, tmp)
            o60 = sum(r60["ours"].values())
            print(
                f"\n60k/10k: scripts {o60 / ours:.2f}x, dvc repro {r60['repro'] / r10['repro']:.2f}x, "
                f"no-op {r60['noop'] / r10['noop']:.2f}x  [target: at most 6x]; peak MB 10k "
                f"{max(r10['peak_mb'].values()):.0f} vs 60k {max(r60['peak_mb'].values()):.0f}"
            )


if __name__ == "__main__":
    main()
