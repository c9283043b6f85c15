"""The LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks";
course notes 19.5, "search the maximum learning rate"): `cifarlab lr-find`.

A fresh copy of the configured model (model, augment, loss, optimizer and its groups from
params.yaml; with model.whiten, its first conv whitened from the training images and frozen,
as the train stage does) trains for `steps` batches while the learning rate rises exponentially from
`start` to `end`; the loss is smoothed with a bias-corrected exponential moving average
and the run stops early once it diverges (smoothed loss above 4x its best, or not finite).

The suggestion rule, fixed before any measurement: **one tenth of the learning rate at
which the smoothed loss is lowest** (`lr_at_min / 10`). At the minimum the loss is about to
blow up, so a tenth of it is the largest lr that still trains steadily. That is a
*maximum* lr: with OneCycleLR (the default) and CyclicLR it is the peak, which is
`optimizer.lr`; with a non-cyclic schedule (none, StepLR, cosine...) `optimizer.lr` is where
the schedule starts, its largest value. The steepest descent of the smoothed loss is
reported beside it, for reference.

Nothing of the pipeline is touched: the results go to their own folder (reports/lr_find/
by default, not a dvc.yaml output): `lr_find.json` and the plot `lr_find.png`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cifarlab.atomic import atomic_path, write_json
from cifarlab.data.dataset import load_tensors
from cifarlab.data.index import read_index
from cifarlab.data.layout import read_meta, read_stats
from cifarlab.engine.device import setup_runtime
from cifarlab.engine.loop import _prepare
from cifarlab.engine.sources import make_source
from cifarlab.engine.whitening import whiten_model
from cifarlab.errors import ParamsError
from cifarlab.models import create_model
from cifarlab.optim.losses import build_loss
from cifarlab.optim.optimizers import build_optimizer, needs_closure

RULE = "one tenth of the lr at the lowest smoothed loss"
SMOOTHING = 0.98
DIVERGED = 4.0


@dataclass
class Sweep:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]


def check_range(start: float, end: float, steps: int) -> None:
    if not (math.isfinite(start) and math.isfinite(end) and 0 < start < end):
        raise ParamsError("lr-find --start/--end", "need 0 < start < end, both finite", f"{start}..{end}")
    if steps < 10:
        raise ParamsError("lr-find --steps", "needs at least 10 steps to draw a curve", steps)


def _batches(source):
    epoch = 0
    while True:
        yield from source.batches(epoch)
        epoch += 1


def sweep(
    params,
    *,
    index: Path,
    stats: Path,
    meta: Path,
    root: Path = Path("."),
    start: float = 1e-6,
    end: float = 10.0,
    steps: int = 300,
    log=print,
) -> Sweep:
    """Train a fresh model with an exponentially rising lr; the lrs, raw and smoothed losses."""
    check_range(start, end, steps)
    classes = read_meta(meta)["classes"]
    tp = params.train
    runtime = setup_runtime(tp.device, tp.amp, params.runtime.threads, params.model.channels_last)
    torch.manual_seed(params.seed)
    images, labels = load_tensors(index, root, len(classes))
    common = {"stats": read_stats(stats), "runtime": runtime, "seed": params.seed, "log": log}
    source = make_source(
        params.augment.train,
        "augment.train",
        backend=params.augment.backend,
        images=images,
        labels=labels,
        index=index,
        batch_size=tp.batch_size,
        shuffle=True,
        **common,
    )
    model = create_model(params.model, num_classes=len(classes), log=lambda *_: None).to(runtime.device)
    if params.model.whiten.enabled:  # sweep the net the train stage trains: first conv whitened, frozen
        whiten_model(params, model, images, labels, common, log=log)
    model.train()
    optimizer = build_optimizer(params.optimizer, model)
    if needs_closure(optimizer):
        raise ParamsError(
            "optimizer.name",
            f"the LR range test steps once per batch; {params.optimizer.name} re-evaluates the loss inside its step",
            params.optimizer.name,
        )
    ratios = [g["lr"] / params.optimizer.lr for g in optimizer.param_groups]  # groups keep their lr_mult
    loss_fn = build_loss(params.loss, num_classes=len(classes)).to(runtime.device)
    scaler = runtime.scaler()
    out = Sweep([], [], [])
    avg, best = 0.0, math.inf
    for step, (x, y) in zip(range(steps), _batches(source)):
        lr = start * (end / start) ** (step / (steps - 1))
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        with runtime.autocast():
            loss = loss_fn(model(_prepare(x, runtime)), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        smooth = avg / (1 - SMOOTHING ** (step + 1))
        out.lrs.append(lr)
        out.losses.append(value)
        out.smoothed.append(smooth)
        best = min(best, smooth)
        if step > 10 and smooth > DIVERGED * best:
            break
    log(f"lr-find: {len(out.lrs)} steps from lr {start:g} to {out.lrs[-1] if out.lrs else start:g}")
    return out


def suggest(s: Sweep) -> dict:
    """The suggestion (RULE) and the steepest descent of the smoothed loss, for reference."""
    if len(s.lrs) < 5:
        raise ParamsError(
            "lr-find --start", f"the loss diverged after {len(s.lrs)} steps; start lower", s.lrs[0] if s.lrs else None
        )
    i_min = min(range(len(s.smoothed)), key=s.smoothed.__getitem__)
    logs = [math.log10(lr) for lr in s.lrs]
    slopes = [(s.smoothed[i + 1] - s.smoothed[i]) / (logs[i + 1] - logs[i]) for i in range(max(i_min, 1))]
    i_steep = min(range(len(slopes)), key=slopes.__getitem__)
    return {
        "suggested_lr": float(f"{s.lrs[i_min] / 10:.3g}"),
        "rule": RULE,
        "lr_at_min_loss": s.lrs[i_min],
        "min_smoothed_loss": s.smoothed[i_min],
        "lr_at_steepest_descent": s.lrs[i_steep],
    }


def plot(s: Sweep, result: dict, path: Path) -> None:
    import matplotlib  # lazy: only the plot needs matplotlib, after the sweep

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use(): pyplot takes the backend set when it is imported

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(s.lrs, s.losses, color="0.75", lw=0.8, label="loss per step")
    ax.plot(s.lrs, s.smoothed, color="C0", lw=2, label="smoothed loss")
    ax.axvline(result["lr_at_min_loss"], color="C3", ls=":", label=f"lowest: lr {result['lr_at_min_loss']:.3g}")
    ax.axvline(result["suggested_lr"], color="C2", ls="--", label=f"suggested max lr {result['suggested_lr']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    top = max(s.smoothed[: max(len(s.smoothed) // 10, 1)])
    ax.set_ylim(min(s.smoothed) * 0.9, top * 1.5)
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def lr_find(
    params,
    *,
    out: Path,
    index: Path,
    stats: Path,
    meta: Path,
    start: float = 1e-6,
    end: float = 10.0,
    steps: int = 300,
    log=print,
) -> dict:
    """Run the sweep, write out/lr_find.json and out/lr_find.png; the JSON's content."""
    read_index(index)  # a missing or broken index fails here, naming it
    s = sweep(params, index=index, stats=stats, meta=meta, start=start, end=end, steps=steps, log=log)
    result = suggest(s)
    result.update(
        model=params.model.name,
        optimizer=params.optimizer.name,
        batch_size=params.train.batch_size,
        steps=len(s.lrs),
        start=start,
        end=end,
        command=f"dvc exp run -S optimizer.lr={result['suggested_lr']:g}",
        curve={"lr": s.lrs, "loss": s.losses, "smoothed": s.smoothed},
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lr_find.json", result)
    plot(s, result, out / "lr_find.png")
    return result
