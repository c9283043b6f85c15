"""Issue 22's ablation: each record-setting technique's gain in accuracy and cost in time.

    python bench/ablation.py                                  # every row, 3 seeds (hours on 2 cores)
    python bench/ablation.py --only baseline,tta --seeds 1 --epochs 1   # a smoke test
    python bench/ablation.py --only baseline,all --set train.batch_size=256

On the real 10,000-image archive (built from ../shared/cifar10, JPEG-passed: every figure is
on that copy), split 8:1:1 as by default, in a temporary project: the data stages' commands
from dvc.yaml run once, then for every row and seed the train and evaluate stages' commands
run as dvc.yaml writes them, with that row's params in a params file of its own. A row that
differs from an earlier one only in `evaluate.*` (test-time augmentation) reuses that row's
trained model and reruns evaluate only. Prints a markdown table: each row's test accuracy
(mean, min-max over the seeds), its train stage's seconds of training (timing.json), the
accuracy difference against the baseline, and the load average before and after.

Rows are the default params from before issue 22 ("baseline": `PRE_22`, lr 0.1, padding 4
with zeros, no test-time augmentation), each technique alone on top of them, combinations,
all of them together ("all"), and today's params.yaml as it is ("defaults"); `--epochs` and
`--set` apply to every row (after the row's own values). Every row but "defaults" sets
`PRE_22` first, so the table measures against the same baseline whatever params.yaml says.
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
from dvc_project import make_project, set_params  # noqa: E402

ALT_FLIP = [{"RandomCrop": {"size": 32, "padding": 4}}, {"AlternatingHorizontalFlip": {}}, {"Normalize": {}}]
REFLECT_2 = [
    {"RandomCrop": {"size": 32, "padding": 2, "padding_mode": "reflect"}},
    {"RandomHorizontalFlip": {"p": 0.5}},
    {"Normalize": {}},
]
AIRBENCH_AUG = [
    {"RandomCrop": {"size": 32, "padding": 2, "padding_mode": "reflect"}},
    {"AlternatingHorizontalFlip": {}},
    {"Normalize": {}},
]
TUTORIAL_AUG = [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": {"p": 0.5}}, {"Normalize": {}}]
#: the defaults before issue 22 changed them: each row but "defaults" starts from these
PRE_22 = {"optimizer.lr": 0.1, "augment.train": TUTORIAL_AUG, "evaluate.tta": "none"}
LOOKAHEAD = {"decay": 0.774, "every": 5, "lookahead": True}  # airbench94's 0.95 per step, every 5 steps
ALL = {
    "model.name": "cifarlab.airbench",
    "model.whiten.enabled": True,
    "optimizer.groups": [{"kind": "norm_bias", "lr_mult": 8, "weight_decay": 0}],
    "optimizer.decouple_weight_decay": True,
    "optimizer.SGD.weight_decay": 5e-5,
    "loss.CrossEntropyLoss.label_smoothing": 0.2,
    "train.ema": LOOKAHEAD,
    "augment.train": AIRBENCH_AUG,
    "evaluate.tta": "flip_translate",
}

#: name -> (what it changes, dotted params over the defaults)
ROWS: dict[str, tuple[str, dict]] = {
    "baseline": ("the default params before issue 22", {}),
    "defaults": ("params.yaml as it is (issue 22: lr 0.47, padding 2 reflect, tta flip_translate)", {}),
    "airbench_net": ("model cifarlab.airbench (64-256-256)", {"model.name": "cifarlab.airbench"}),
    "whiten": ("model.whiten on the default net's stem", {"model.whiten.enabled": True}),
    "norm_bias_lr": (
        "batch-norm biases at 8x the lr, no decay",
        {"optimizer.groups": [{"kind": "norm_bias", "lr_mult": 8, "weight_decay": 0}]},
    ),
    "decoupled_wd": (
        "weight decay 5e-5 per step at the base lr (decoupled)",
        {"optimizer.decouple_weight_decay": True, "optimizer.SGD.weight_decay": 5e-5},
    ),
    "smoothing_0.2": ("label smoothing 0.2", {"loss.CrossEntropyLoss.label_smoothing": 0.2}),
    "ema": ("train.ema decay 0.9 every 5 steps", {"train.ema": {"decay": 0.9, "every": 5}}),
    "lookahead": ("train.ema 0.774 every 5 steps, lookahead", {"train.ema": LOOKAHEAD}),
    "alt_flip": ("AlternatingHorizontalFlip instead of the random flip", {"augment.train": ALT_FLIP}),
    "reflect_2": ("RandomCrop padding 2, reflect", {"augment.train": REFLECT_2}),
    "tta_flip": ("evaluate.tta flip", {"evaluate.tta": "flip"}),
    "tta": ("evaluate.tta flip_translate", {"evaluate.tta": "flip_translate"}),
    "lr_0.47": ("optimizer.lr 0.47 (lr-find's suggestion, issue 19)", {"optimizer.lr": 0.47}),
    "lr_0.47_tta": (
        "optimizer.lr 0.47 and evaluate.tta flip_translate",
        {"optimizer.lr": 0.47, "evaluate.tta": "flip_translate"},
    ),
    "lr_0.47_reflect_tta": (
        "lr 0.47, padding 2 reflect, tta flip_translate",
        {"optimizer.lr": 0.47, "augment.train": REFLECT_2, "evaluate.tta": "flip_translate"},
    ),
    "lr_0.47_airaug_tta": (
        "lr 0.47, padding 2 reflect, alternating flip, tta flip_translate",
        {"optimizer.lr": 0.47, "augment.train": AIRBENCH_AUG, "evaluate.tta": "flip_translate"},
    ),
    "lr_0.47_reflect_whiten_tta": (
        "lr 0.47, padding 2 reflect, model.whiten, tta flip_translate",
        {
            "optimizer.lr": 0.47,
            "augment.train": REFLECT_2,
            "model.whiten.enabled": True,
            "evaluate.tta": "flip_translate",
        },
    ),
    "all": ("every technique above together", ALL),
    "candidate": (
        "all, on airbench 32-128-128, 15 epochs",
        {**ALL, "model.cifarlab.airbench": {"widths": [32, 128, 128]}, "train.epochs": 15},
    ),
}


def stage_cmds(proj) -> dict[str, str]:
    return {name: st["cmd"] for name, st in yaml.safe_load((proj.path / "dvc.yaml").read_text())["stages"].items()}


def sh(cmd: str, proj) -> float:
    start = time.perf_counter()
    res = subprocess.run(["bash", "-c", cmd], cwd=proj.path, env=proj.env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - start


def run_row(proj, cmds: dict, values: dict, seed: int, trained: dict) -> dict:
    """Train (unless an identical training ran already) and evaluate one row at one seed."""
    params = proj.path.parent / f"params-{len(list(proj.path.parent.glob('params-*')))}.yaml"
    set_params(proj, {**values, "seed": seed}, out=params)
    key = json.dumps({k: v for k, v in values.items() if not k.startswith("evaluate.")}, sort_keys=True) + str(seed)
    if key not in trained:
        sh(f"{cmds['train']} --params {params}", proj)
        timing = json.loads((proj.path / "reports/train/timing.json").read_text())
        keep = proj.path.parent / "models" / str(len(trained))
        keep.mkdir(parents=True)
        shutil.copy2(proj.path / "models/model.pt", keep / "model.pt")
        trained[key] = {"model": keep / "model.pt", "train_seconds": timing["train_seconds"]}
    shutil.copy2(trained[key]["model"], proj.path / "models/model.pt")
    sh(f"{cmds['evaluate']} --params {params}", proj)
    acc = json.loads((proj.path / "reports/eval/metrics.json").read_text())["test"]["acc"]
    return {"acc": acc, "train_seconds": trained[key]["train_seconds"]}


def table(results: dict[str, list[dict]]) -> str:
    base = statistics.mean(r["acc"] for r in results["baseline"]) if "baseline" in results else None
    lines = [
        "| config | what | test acc, mean (min-max) | train s, mean | vs baseline |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        accs = [r["acc"] for r in runs]
        mean = statistics.mean(accs)
        delta = f"{100 * (mean - base):+.2f} pt" if base is not None and name != "baseline" else ""
        lines.append(
            f"| {name} | {ROWS[name][0]} | {100 * mean:.2f}% ({100 * min(accs):.2f}-{100 * max(accs):.2f}) "
            f"| {statistics.mean(r['train_seconds'] for r in runs):.1f} | {delta} |"
        )
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per row: 0..N-1 (default 3)")
    ap.add_argument(
        "--only", type=lambda v: v.split(","), default=list(ROWS), help=f"comma-separated rows, of: {', '.join(ROWS)}"
    )
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs for every row")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override for every row, YAML value (repeatable)",
    )
    args = ap.parse_args()
    unknown = [n for n in args.only if n not in ROWS]
    if unknown:
        ap.error(f"--only: unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}")
    common = {"train.epochs": args.epochs} if args.epochs else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        common[key] = yaml.safe_load(value)
    return args, common


def main() -> None:
    args, common = parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cifarlab-ablation-") as d:
        tmp = Path(d)
        proj = make_project(tmp / "proj", build_real_archive(tmp / "cifar-10-python.tar.gz"))
        cmds = stage_cmds(proj)
        for stage in ("unpack", "split", "index", "stats"):
            sh(cmds[stage], proj)
        results: dict[str, list[dict]] = {}
        trained: dict = {}
        for name in args.only:
            base = {} if name == "defaults" else PRE_22
            for seed in range(args.seeds):
                r = run_row(proj, cmds, {**base, **ROWS[name][1], **common}, seed, trained)
                results.setdefault(name, []).append(r)
                print(
                    f"{name} seed {seed}: test acc {r['acc']:.4f}, {r['train_seconds']:.1f} s of training",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"Real CIFAR-10 test batch (JPEG-passed shared copy), 8,000 train / 1,000 valid / 1,000 test; "
        f"seeds 0-{args.seeds - 1}" + (f"; for every row: {common}" if common else "") + "\n"
    )
    print(table(results))
    after = os.getloadavg()
    print(
        f"\nload average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    )


if __name__ == "__main__":
    main()
