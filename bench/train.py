"""Training benchmark on the real 10,000-image archive: the tutorial's script vs ours, side by side.

    python bench/train.py                 # all three targets (about 15 minutes on 2 cores)
    python bench/train.py --only tutorial,fast # a subset

1. The tutorial's recipe for 20 epochs: its own script (bench/tutorial_train.py: per-image
   PIL loading, batch 16) against our train stage with presets/tutorial.args, 3 seeds.
2. The default params: test accuracy over 3 seeds, and the whole `dvc repro` from the
   archive to metrics for one of them (`--default-seeds 0`: the timed `dvc repro` alone).
3. Time to 25% validation accuracy (from the first training step, validation included)
   with presets/fast.args, against the tutorial script's.
4. `--only lrfind`: `cifarlab lr-find` on the default params, then the default params and the
   suggested `optimizer.lr`, 3 seeds each, interleaved: does the suggestion land inside the
   default's own range of test accuracy?
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project, preset, set_params  # noqa: E402

SEEDS = [0, 1, 2]
TRAIN = ["stages/train.py", "--index", "data/index", "--stats", "data/stats/normalize.json", "--meta", "data/meta.json"]


def train_run(proj, tag: str, values: dict, evaluate: bool = False) -> dict:
    """Our train stage with these params in a separate params file; returns its history and metrics."""
    params = proj.path / f"params_{tag}.yaml"
    set_params(proj, values, out=params)
    out = proj.path / "runs" / tag
    start = time.perf_counter()
    proj.run(
        sys.executable,
        *TRAIN,
        "--params",
        str(params),
        "--models",
        str(out / "models"),
        "--reports",
        str(out / "reports"),
        "--tensorboard",
        str(out / "tb"),
        "--checkpoints",
        str(out / "ck"),
    )
    wall = time.perf_counter() - start
    with open(out / "reports/history.csv") as f:
        history = list(csv.DictReader(f))
    res = {
        "wall": wall,
        "history": history,
        "train_seconds": float(history[-1]["elapsed_seconds"]),
        "final_valid_acc": float(history[-1]["valid_acc"]),
    }
    reached = [float(h["elapsed_seconds"]) for h in history if float(h["valid_acc"]) >= 0.25]
    res["seconds_to_25"] = reached[0] if reached else None
    if evaluate:
        proj.run(
            sys.executable,
            "stages/evaluate.py",
            "--params",
            str(params),
            "--model",
            str(out / "models/model.pt"),
            "--index",
            "data/index/test.txt",
            "--out",
            str(out / "eval"),
        )
        res["test_acc"] = json.loads((out / "eval/metrics.json").read_text())["test"]["acc"]
    return res


def step_floor(steps: int = 2000) -> float:
    """Seconds per step of the tutorial's Net alone at batch 16: forward, backward, SGD step on a
    fixed in-memory batch (no data, no augmentation, no bookkeeping), channels-last fp32 with
    torch's threads on every core: what 20 epochs cost at the least with torch's kernels."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from cifarlab.models.tutorial import Net

    model = Net().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, dampening=0.1, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(200):
        step()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def tutorial_run(proj, seed: int, epochs: int = 20) -> dict:
    out = proj.run(
        sys.executable,
        str(ROOT / "bench/tutorial_train.py"),
        str(proj.path),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values):
    return f"{statistics.mean(values):.1%} (min {min(values):.1%}, max {max(values):.1%})"


def lr_find_rows(proj) -> None:
    """The LR range test's suggestion against the default lr, 3 seeds each, interleaved."""
    proj.cifarlab("lr-find", "--out", "runs/lr_find")
    found = json.loads((proj.path / "runs/lr_find/lr_find.json").read_text())
    lr = found["suggested_lr"]
    print(f"4. lr-find suggests optimizer.lr={lr:g} ({found['rule']})", flush=True)
    acc: dict[str, list[float]] = {"default": [], "suggested": []}
    for s in SEEDS:
        acc["default"].append(train_run(proj, f"lrdefault{s}", {"seed": s}, evaluate=True)["test_acc"])
        acc["suggested"].append(
            train_run(proj, f"lrfound{s}", {"seed": s, "optimizer.lr": lr}, evaluate=True)["test_acc"]
        )
        print(f"   seed {s}: default {acc['default'][-1]:.1%}, suggested {acc['suggested'][-1]:.1%}", flush=True)
    lo, hi = min(acc["default"]), max(acc["default"])
    inside = lo <= statistics.mean(acc["suggested"]) <= hi
    print(
        f"   default lr: test acc {spread(acc['default'])}; suggested lr {lr:g}: {spread(acc['suggested'])}; "
        f"suggested mean inside the default's range: {'yes' if inside else 'no'}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default={"tutorial", "default", "fast"},
        help="comma-separated subset of tutorial,default,fast,lrfind (lrfind: not in the default set)",
    )
    ap.add_argument(
        "--tutorial-seeds", type=int, default=1, help="runs of the tutorial's own script (about a minute each)"
    )
    ap.add_argument(
        "--default-seeds",
        type=int,
        default=len(SEEDS),
        choices=range(len(SEEDS) + 1),
        help="seeds of the default params' accuracy runs before the timed `dvc repro` (0: the repro alone)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        archive = tmp / "cifar-10-python.tar.gz"
        build_real_archive(archive)
        proj = make_project(tmp / "proj", archive)
        proj.dvc("repro", "stats")
        print(
            "torch threads: all cores; data: 8000 train / 1000 valid / 1000 test (real CIFAR-10 test batch)\n",
            flush=True,
        )
        base = None
        if args.only & {"tutorial", "fast"}:
            base = [tutorial_run(proj, s) for s in range(args.tutorial_seeds)]
            b = base[0]
            print(
                f"tutorial script (20 epochs, batch 16, per-image PIL): {b['seconds']:.1f} s, valid acc "
                f"{spread([r['final_valid_acc'] for r in base])}, time to 25%: "
                + ", ".join(f"{r['seconds_to_25']:.1f} s" if r["seconds_to_25"] else "never" for r in base),
                flush=True,
            )
        if "tutorial" in args.only:
            runs = [train_run(proj, f"tutorial{s}", dict(preset("tutorial"), seed=s)) for s in SEEDS]
            t = statistics.mean(r["train_seconds"] for r in runs)
            print(
                f"1. our train stage, tutorial recipe, 20 epochs: {t:.1f} s of training "
                f"(stage wall {statistics.mean(r['wall'] for r in runs):.1f} s with start-up), valid acc "
                f"{spread([r['final_valid_acc'] for r in runs])}; vs the tutorial script here "
                f"{base[0]['seconds'] / t:.1f}x faster; vs the issue's 58.7 s: {58.7 / t:.1f}x "
                f"[target: at least 3x, valid acc within 25.0%-41.8%]",
                flush=True,
            )
            floor = step_floor()
            print(
                f"   the Net's bare step at batch 16 (no data, no bookkeeping): {floor * 1e3:.2f} ms, so "
                f"10,000 steps (20 epochs) take at least {floor * 1e4:.1f} s here; a third of the issue's "
                f"58.7 s is {58.7 / 3:.1f} s",
                flush=True,
            )
        if "default" in args.only:
            seeds = SEEDS[: args.default_seeds]
            runs = [train_run(proj, f"default{s}", {"seed": s}, evaluate=True) for s in seeds]
            if runs:
                print(
                    f"2. default params: test acc {spread([r['test_acc'] for r in runs])} over seeds {seeds}; "
                    f"training {statistics.mean(r['train_seconds'] for r in runs):.0f} s per run [target: mean >= 82%, issue 22]",
                    flush=True,
                )
            subprocess.run(
                [
                    "rm",
                    "-rf",
                    "data/png",
                    "data/split",
                    "data/index",
                    "data/stats",
                    "data/meta.json",
                    "models",
                    "reports/train",
                    "reports/eval",
                    "reports/tensorboard",
                    "checkpoints",
                ],
                cwd=proj.path,
            )
            start = time.perf_counter()
            proj.dvc("repro", "--no-run-cache", "evaluate")
            full = time.perf_counter() - start
            acc = json.loads((proj.path / "reports/eval/metrics.json").read_text())["test"]["acc"]
            print(
                f"   whole `dvc repro` from the archive to metrics: {full:.0f} s (test acc {acc:.1%}) "
                f"[target: under 300 s]",
                flush=True,
            )
        if "lrfind" in args.only:
            lr_find_rows(proj)
        if "fast" in args.only:
            runs = [train_run(proj, f"fast{s}", dict(preset("fast"), seed=s)) for s in SEEDS]
            times = [r["seconds_to_25"] for r in runs]
            best_tut = (
                min(r["seconds_to_25"] for r in base if r["seconds_to_25"])
                if any(r["seconds_to_25"] for r in base)
                else None
            )
            shown = ", ".join(f"{x:.2f} s" if x else "never" for x in times)
            ratio = (
                f"{best_tut / max(times):.0f}x faster than the tutorial script here ({best_tut:.1f} s); "
                if best_tut and all(times)
                else ""
            )
            print(
                f"3. time to 25% valid acc with presets/fast.args: {shown}; {ratio}"
                f"vs the issue's 26 s: {26 / max(t for t in times if t):.0f}x [target: 10x, under 2.6 s]",
                flush=True,
            )


if __name__ == "__main__":
    main()
