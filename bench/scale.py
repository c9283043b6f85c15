"""Every stage at 10,000 and at 60,000 images: time against data size, peak memory, accuracy.

    python bench/scale.py                   # both sizes, default params (about 25 minutes on 2 cores)
    python bench/scale.py --sizes 10k       # one size
    python bench/scale.py --epochs 3        # shorter training (the ratios hold; the accuracy does not)

10k: the tutorial's setting (the test batch, split 8:1:1). 60k: all six batches with
`split.mode: standard` (the official test batch is the test split, the five training
batches are split train/valid 8:1), so the 60k test accuracy is the standard protocol's.
Each stage's command is read from dvc.yaml and run directly (no DVC overhead, which
bench/remote.py measures), in a fresh temporary project per size. Prints, per stage, seconds
and peak resident memory (the stage process and its children) at each size, the time ratio
next to the ratio of the images that stage handles (linear or better when the first is not
above the second), and the test accuracy the default params reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from data_stages import timed  # noqa: E402

from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project  # noqa: E402

ALL = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
SIZES = {
    "10k": {"full": False, "params": {}},
    "60k": {"full": True, "params": {"data.batches": ALL, "split.mode": "standard"}},
}
#: which images each stage's work grows with (a key of `counts`)
WORK = {
    "unpack": "all",
    "split": "all",
    "index": "all",
    "stats": "train",
    "train": "train+valid",
    "evaluate": "test",
    "visualize": "test",
}  # visualize decodes the test index


def counts(proj) -> dict[str, int]:
    lines = {n: len((proj.path / f"data/index/{n}.txt").read_text().splitlines()) for n in ("train", "valid", "test")}
    return {
        "all": sum(lines.values()),
        "train": lines["train"],
        "train+valid": lines["train"] + lines["valid"],
        "test": lines["test"],
    }


def run_size(label: str, tmp: Path, epochs: int | None) -> dict:
    spec = SIZES[label]
    archive = tmp / label / "cifar-10-python.tar.gz"
    build_real_archive(archive, full=spec["full"])
    params = dict(spec["params"])
    if epochs:
        params["train.epochs"] = epochs
    proj = make_project(tmp / label / "proj", archive, params or None)
    stages = yaml.safe_load((proj.path / "dvc.yaml").read_text())["stages"]
    print(f"\n== {label} ==", flush=True)
    out = {"seconds": {}, "peak_mb": {}}
    for name, stage in stages.items():
        out["seconds"][name], out["peak_mb"][name] = timed(["bash", "-c", stage["cmd"]], proj.path, proj.env)
        print(f"{name:>10}: {out['seconds'][name]:8.2f} s  {out['peak_mb'][name]:7.0f} MB", flush=True)
    out["images"] = counts(proj)
    out["test_acc"] = json.loads((proj.path / "reports/eval/metrics.json").read_text())["test"]["acc"]
    timing = json.loads((proj.path / "reports/train/timing.json").read_text())
    out["images_per_second"] = timing["images_per_second"]
    print(
        f"images {out['images']}; train {timing['images_per_second']:.0f} images/s; "
        f"test accuracy {out['test_acc']:.2%}",
        flush=True,
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10k,60k", help="comma-separated subset of 10k,60k")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: params.yaml's)")
    args = ap.parse_args()
    labels = args.sizes.split(",")
    unknown = set(labels) - set(SIZES)
    if unknown:
        ap.error(f"unknown size(s): {', '.join(sorted(unknown))}; choices: {', '.join(SIZES)}")
    with tempfile.TemporaryDirectory() as d:
        res = {label: run_size(label, Path(d), args.epochs) for label in labels}
    if len(res) == 2:
        a, b = res["10k"], res["60k"]
        print("\n| stage | 10k | 60k | time ratio | images ratio | peak MB 10k | peak MB 60k |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in a["seconds"]:
            work = WORK.get(name, "all")
            ratio = b["images"][work] / a["images"][work]
            print(
                f"| {name} | {a['seconds'][name]:.1f} s | {b['seconds'][name]:.1f} s | "
                f"{b['seconds'][name] / a['seconds'][name]:.2f}x | {ratio:.2f}x ({work}) | "
                f"{a['peak_mb'][name]:.0f} | {b['peak_mb'][name]:.0f} |"
            )
        print(
            f"\ntest accuracy: 10k (8:1:1 of the test batch) {a['test_acc']:.2%}; "
            f"60k (standard protocol: the official test batch) {b['test_acc']:.2%}"
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
