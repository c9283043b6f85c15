"""Training speed on whatever device this machine has: images/s and time to a target accuracy.

    python bench/speed.py                          # default params, 10,000 images, target 75%
    python bench/speed.py --full --target 0.85     # 60,000 images, split.mode standard
    python bench/speed.py --preset fast --target 0.25
    python bench/speed.py --set train.compile=true --set train.batch_size=512
    python bench/speed.py --full --preset standard --target 0.85   # issue 22's standard-protocol preset
    python bench/speed.py --full --preset airbench --target 0.93   # airbench94's recipe, for a GPU day

Made for a GPU machine (`train.device: auto` picks CUDA, then MPS, then the CPU; on CUDA the
images stay on the GPU, bf16 autocast, channels-last), and runs anywhere. Builds the real
archive from ../shared/cifar10 into a temporary project, runs the data stages, then our train
stage once. Prints the device, the training images/s per epoch (median, and the first epoch
apart, which carries warm-up and any torch.compile time), the seconds from the first step
to the target validation accuracy (validation included, as the tutorial counts), the
final validation accuracy, and the evaluate stage's test accuracy (with the params'
evaluate.tta; on the official test batch with `--full`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from scale import ALL  # noqa: E402
from train import train_run  # noqa: E402

from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project, preset  # noqa: E402


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset", default=None, help="a presets/<name>.args file to start from (fast, tutorial, standard, airbench)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override, as with `dvc exp run -S` (repeatable)",
    )
    ap.add_argument("--target", type=float, default=0.75, help="validation accuracy to time (default 0.75)")
    ap.add_argument("--full", action="store_true", help="60,000 images with split.mode standard")
    args = ap.parse_args()
    values = preset(args.preset) if args.preset else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        values[key] = yaml.safe_load(value)
    if args.full:
        values.update({"data.batches": ALL, "split.mode": "standard"})
    print(f"device: {device_line()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        archive = tmp / "cifar-10-python.tar.gz"
        build_real_archive(archive, full=args.full)
        data_values = {k: v for k, v in values.items() if k.startswith(("data.", "split."))}
        proj = make_project(tmp / "proj", archive, data_values or None)
        proj.dvc("repro", "stats")
        res = train_run(proj, "speed", {k: v for k, v in values.items() if k not in data_values}, evaluate=True)
    hist = res["history"]
    ips = [float(h["images_per_second"]) for h in hist]
    reached = [float(h["elapsed_seconds"]) for h in hist if float(h["valid_acc"]) >= args.target]
    steady = statistics.median(ips[1:]) if len(ips) > 1 else ips[0]
    print(
        f"training: {steady:,.0f} images/s (median of epochs 2-{len(ips)}; epoch 1: {ips[0]:,.0f} images/s); "
        f"{len(hist)} epochs in {res['train_seconds']:.1f} s, stage wall {res['wall']:.1f} s",
        flush=True,
    )
    print(
        f"time to {args.target:.0%} validation accuracy: "
        + (f"{reached[0]:.1f} s" if reached else "not reached")
        + f"; final validation accuracy {res['final_valid_acc']:.2%}; test accuracy {res['test_acc']:.2%}",
        flush=True,
    )


if __name__ == "__main__":
    main()
