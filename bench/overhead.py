"""What looking inside the net costs the train stage (issue 20): diagnostics on against off.

    python bench/overhead.py                  # default params and presets/tutorial.args, 3 rounds
    python bench/overhead.py --rounds 1 --only tutorial

"On" is the shipped default: per-layer activation std and gradient norm on a fixed batch at
step 0 and after every epoch (`train.diagnostics`), and the train loss and lr every 50 steps
in TensorBoard (`train.log_every_steps`). "Off" sets `train.diagnostics=false` and
`train.log_every_steps=0`. Both run our train stage's command on the real 10,000-image archive
(8,000 training images), the two interleaved round by round in alternating order so both see
the same machine; the figure is the whole command's wall time, start-up included. It also
checks that the two runs' per-epoch history (loss, accuracy) is identical: the diagnostics
must not change training. Then the evaluate and visualize stages run on the default model,
timed on their own (separate stages, reported apart), under `evaluate.tta: none` and the
default `flip_translate`, interleaved twice: what test-time augmentation costs them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from train import train_run  # noqa: E402

from cifar_factory import build_real_archive  # noqa: E402
from dvc_project import make_project, preset, set_params, stage_cmd  # noqa: E402

OFF = {"train.diagnostics": False, "train.log_every_steps": 0}
CONFIGS = {"default": {}, "tutorial": None}  # None: presets/tutorial.args, read at run time
TRAINING_COLUMNS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr_0", "grad_norm")


def same_training(a: list[dict], b: list[dict]) -> bool:
    """The per-epoch numbers that training produces (not the timings) match to the last digit."""
    keys = [k for k in TRAINING_COLUMNS if k in a[0]]
    return [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def measure(proj, name: str, base: dict, rounds: int) -> dict:
    walls: dict[str, list[float]] = {"on": [], "off": []}
    histories = {}
    for r in range(rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            values = dict(base, **(OFF if mode == "off" else {}))
            res = train_run(proj, f"{name}-{mode}-{r}", values)
            walls[mode].append(res["wall"])
            histories[mode] = res["history"]
            print(f"{name:>9} {mode:>3} round {r}: {res['wall']:7.2f} s", flush=True)
    on, off = statistics.mean(walls["on"]), statistics.mean(walls["off"])
    return {
        "on": walls["on"],
        "off": walls["off"],
        "ratio": on / off,
        "same": same_training(histories["on"], histories["off"]),
    }


def time_evaluation_stages(proj, tta: str) -> dict[str, float]:
    """Seconds of the evaluate and visualize stages on the trained default model under
    `evaluate.tta` (both stages predict under it; visualize also for its train and validation
    confusions, 8,000 + 1,000 images)."""
    set_params(proj, {"evaluate.tta": tta})
    out = {}
    for stage in ("evaluate", "visualize"):  # visualize reads the evaluation's predictions
        start = time.perf_counter()
        proj.run(*stage_cmd(stage))
        out[stage] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="default,tutorial", help="comma-separated: default, tutorial")
    ap.add_argument("--no-visualize", action="store_true", help="skip timing the visualize stage")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cifarlab-overhead-"))
    archive = tmp / "cifar-10-python.tar.gz"
    build_real_archive(archive, full=False)
    proj = make_project(tmp / "proj", archive)
    proj.dvc("repro", "stats")
    results = {}
    for name in args.only.split(","):
        base = CONFIGS[name] if CONFIGS[name] is not None else preset(name)
        results[name] = measure(proj, name, base, args.rounds)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| params | diagnostics on | off | on/off | same history |\n| --- | ---: | ---: | ---: | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {statistics.mean(r['on']):.1f} s | {statistics.mean(r['off']):.1f} s | "
            f"{r['ratio']:.3f} | {'yes' if r['same'] else 'NO'} |"
        )
    if not args.no_visualize:
        proj.dvc("repro", "train")
        # test-time augmentation's cost, side by side: none (the baseline) and the default, interleaved
        for tta in ("flip_translate", "none", "none", "flip_translate"):  # ends on the default: reports/ as shipped
            t = time_evaluation_stages(proj, tta)
            print(f"evaluate.tta {tta}: evaluate stage {t['evaluate']:.1f} s, visualize stage {t['visualize']:.1f} s")
    print(f"(temp project left at {proj.path}; delete it when done)")


if __name__ == "__main__":
    main()
