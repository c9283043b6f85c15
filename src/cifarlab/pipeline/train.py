"""Stage train: assemble everything from params, train, validate, save, resume.

Everything that can be checked is checked before the first step (names and arguments of
every component, every image of both indexes), so a typo or a broken file costs seconds,
not an epoch. Only rank 0 writes files; other ranks train on their share of the data.
"""
from __future__ import annotations

import csv
import io
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.atomic import atomic_dir, write_json, write_text
from cifarlab.data.dataset import load_tensors
from cifarlab.data.index import read_index
from cifarlab.data.layout import read_meta
from cifarlab.data.layout import read_stats
from cifarlab.errors import CifarlabError, ParamsError
from cifarlab.params import Params
from cifarlab.engine.checkpoint import CheckpointDir, fingerprint, tensor_digest, train_lock
from cifarlab.engine.device import setup_runtime
from cifarlab.engine.distributed import process_group, relaunch_under_torchrun
from cifarlab.engine.loop import Dist, evaluate, train_one_epoch
from cifarlab.engine.sources import make_source

CODE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Paths:
    train_index: Path
    valid_index: Path
    stats: Path
    meta: Path
    models: Path  # folder: model.pt (best by validation accuracy), last.pt
    reports: Path  # folder: history.csv, metrics.json, summary.txt
    tensorboard: Path  # folder: this stage's own TensorBoard run
    checkpoints: Path = Path("checkpoints")
    root: Path = Path(".")


def check_all(params: Params, steps_per_epoch: int = 10) -> None:
    """Every component's name and arguments, against the libraries, before any work."""
    from cifarlab.augment.transforms import check_transforms
    from cifarlab.models.registry import check_model
    from cifarlab.optim.losses import check_loss
    from cifarlab.optim.optimizers import check_optimizer
    from cifarlab.optim.schedulers import check_scheduler

    check_argument_sections(params)
    check_model(params.model)
    check_loss(params.loss)
    check_optimizer(params.optimizer)
    check_scheduler(params.scheduler, params.optimizer, epochs=params.train.epochs, steps_per_epoch=steps_per_epoch)
    check_transforms(params.augment.train, "augment.train")
    check_transforms(params.augment.eval, "augment.eval")


def check_argument_sections(params: Params) -> None:
    """Every `<section>.<Name>: {...}` must name a real component: a misspelt name would
    silently drop its arguments (`optimizer.SDG: {momentum: 0.9}` training SGD without momentum)."""
    import torch.nn.init as tinit

    from cifarlab.optim.losses import REFUSED as REFUSED_LOSSES
    from cifarlab.optim.losses import supported_losses
    from cifarlab.optim.optimizers import optimizer_classes
    from cifarlab.optim.schedulers import scheduler_classes

    init_names = {n for n in dir(tinit) if n.endswith("_") and not n.startswith("_")}
    init_names |= {n.rstrip("_") for n in init_names}
    sections = [("optimizer", params.optimizer, set(optimizer_classes())),
                ("loss", params.loss, set(supported_losses()) | set(REFUSED_LOSSES)),
                ("scheduler", params.scheduler, set(scheduler_classes()))]
    sections += [(f"model.init.{layer}", getattr(params.model.init, layer), init_names)
                 for layer in ("conv", "linear", "batchnorm")]
    for key, section, valid in sections:
        for name in section.model_extra or {}:
            if name not in valid:
                raise ParamsError(f"{key}.{name}", "is not a known name, so its arguments would be ignored "
                                  "(a typo?)", choices=valid)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def probe_shapes(model, name: str, runtime, sources) -> None:
    """One forward pass per source before training: a size mismatch is a clear error, not a crash mid-epoch."""
    from cifarlab.engine.loop import _prepare

    was_training = model.training
    model.eval()
    try:
        for key, source, ncrops in sources:
            x, _ = next(iter(source.batches(0)))
            x = x[:2]
            if ncrops > 1:
                x = x.reshape(-1, *x.shape[-3:])
            try:
                model(_prepare(x, runtime))
            except RuntimeError as exc:
                raise ParamsError(key, f"produces inputs of shape {tuple(x.shape[1:])}, which model {name} "
                                  f"cannot take ({str(exc).splitlines()[0]})") from None
    finally:
        model.train(was_training)


def training_params(params: Params) -> dict:
    """The params that decide the result (not threads, workers or the device's name)."""
    d = params.model_dump(mode="json")
    keep = {k: d[k] for k in ("seed", "model", "augment", "loss", "optimizer", "scheduler")}
    keep["train"] = {k: d["train"][k] for k in ("epochs", "batch_size", "amp", "compile")}
    return keep


def run(params: Params, paths: Paths, *, script: str, argv: list[str], log=print) -> dict:
    """`fit` in a plain process, or as this process's rank of a torchrun job.

    With ``train.nproc > 1`` and no torchrun around yet, `script` (the stage script) is run
    again under torchrun with `argv`, and this process only waits for it.
    """
    if relaunch_under_torchrun(params.train.nproc, script, argv):
        return {}
    with process_group(params, log) as (params, dist, log):
        return fit(params, paths, dist, log=log)


def fit(params: Params, paths: Paths, dist: Dist = Dist(), log=print) -> dict:
    from cifarlab.models.registry import create_model
    from cifarlab.models.summary import summarize
    from cifarlab.optim.losses import build_loss
    from cifarlab.optim.optimizers import build_optimizer, needs_closure
    from cifarlab.optim.schedulers import build_scheduler

    tp = params.train
    # one train stage at a time writes this project's checkpoints and outputs; taken first, so a
    # read-only or full checkpoints/ folder stops the stage before any work
    lock = train_lock(paths.checkpoints) if dist.main else None
    stats = read_stats(paths.stats)
    classes = read_meta(paths.meta)["classes"]
    n_train = len(read_index(paths.train_index, len(classes)))
    check_all(params, steps_per_epoch=-(-n_train // (tp.batch_size * dist.world)))
    runtime = setup_runtime(tp.device, tp.amp, tp.threads, params.model.channels_last, dist.world)
    seed_everything(params.seed)

    t0 = time.perf_counter()
    train_x, train_y = load_tensors(paths.train_index, paths.root, len(classes))
    valid_x, valid_y = load_tensors(paths.valid_index, paths.root, len(classes))
    log(f"train: {len(train_y)} training and {len(valid_y)} validation images decoded in "
        f"{time.perf_counter() - t0:.2f} s; device {runtime.device}"
        + (f", mixed precision {runtime.amp_dtype}" if runtime.amp_dtype else ""))

    model = create_model(params.model, num_classes=len(classes), log=log if dist.main else (lambda *_: None))
    if params.optimizer.name == "LBFGS" and runtime.channels_last:
        # LBFGS flattens gradients with view(), which channels-last weights do not allow
        model = model.to(memory_format=torch.contiguous_format)
        runtime.channels_last = False
        log("train: LBFGS needs contiguous weights; channels_last is off for this run")
    from cifarlab.engine.memory import check_training_memory  # a run too big for the memory stops here, not in epoch 1

    # the fast path's padded (and mirrored) training images, and the kept validation batches in float
    on_device = 4 * train_x.nbytes + 5 * valid_x.nbytes if runtime.device.type != "cpu" else 0
    check_training_memory(model, min(tp.batch_size, -(-len(train_y) // dist.world)), params.optimizer.name,
                          runtime.device, amp_dtype=runtime.amp_dtype, extra_bytes=on_device,
                          processes=dist.world if runtime.device.type == "cpu" else 1)
    model.to(runtime.device)
    summary = summarize(model) if dist.main else ""
    batch_size = tp.batch_size
    train_src = make_source(params.augment.train, "augment.train", params.augment.backend, train_x, train_y,
                            paths.train_index, stats, runtime, batch_size, params.seed, True, tp.num_workers, dist, log)
    valid_src = make_source(params.augment.eval, "augment.eval", params.augment.backend, valid_x, valid_y,
                            paths.valid_index, stats, runtime, max(batch_size, 256), params.seed, False,
                            tp.num_workers, Dist(), log, keep=True)
    from cifarlab.augment.transforms import is_multicrop

    ncrops = is_multicrop(params.augment.eval)
    probe_shapes(model, params.model.name, runtime, [("augment.train", train_src, 1), ("augment.eval", valid_src, ncrops)])
    loss_fn = build_loss(params.loss, num_classes=len(classes)).to(runtime.device)
    train_model = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if tp.compile:
        train_model = torch.compile(train_model)
    optimizer = build_optimizer(params.optimizer, model)
    scheduler = build_scheduler(params.scheduler, optimizer, epochs=tp.epochs, steps_per_epoch=len(train_src))
    scaler = runtime.scaler()
    closure = needs_closure(optimizer)

    fp = fingerprint(training_params(params), tensor_digest(train_x, train_y, valid_x, valid_y)
                     + json.dumps(stats, sort_keys=True) + str(dist.world), CODE_ROOT)
    ckpt = CheckpointDir(paths.checkpoints, fp)
    history: list[dict] = []
    best = {"acc": -1.0, "epoch": -1, "state": None}
    start_epoch = 0
    tb_saved: dict[str, bytes] = {}
    found = ckpt.load_sound(lambda line: print(line, file=sys.stderr, flush=True), set_aside=dist.main)
    if found is not None:
        state, state_path = found
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        tb_saved = state.get("tensorboard", {})
        log(f"train: resuming from the checkpoint of epoch {start_epoch} ({state_path})")

    writer = None
    if dist.main:
        from cifarlab.engine.tensorboard import TrainLogger

        writer = TrainLogger(paths.tensorboard, restore=tb_saved, histograms=tp.histograms)
        if start_epoch == 0:
            writer.start(model, params, summary)

    clock = time.perf_counter()
    done_before = history[-1]["elapsed_seconds"] if history else 0.0
    for epoch in range(start_epoch, tp.epochs):
        seed_everything(params.seed * 1_000_003 + epoch)  # dropout and per-sample transforms, resumable
        tr = train_one_epoch(train_model, loss_fn, optimizer, scheduler, train_src, epoch, runtime, scaler, closure)
        totals = dist.reduce(torch.tensor([tr["loss"] * tr["images"], tr["acc"] * tr["images"], tr["images"]],
                                          dtype=torch.float64, device=runtime.device)).tolist()
        tr_loss, tr_acc = totals[0] / totals[2], totals[1] / totals[2]
        va = evaluate(model, loss_fn, valid_src, runtime, ncrops)
        lrs = [g["lr"] for g in optimizer.param_groups]
        scheduler.step_epoch({"valid_loss": va["loss"], "valid_acc": va["acc"], "train_loss": tr_loss,
                              "train_acc": tr_acc})
        row = {"epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc, "valid_loss": va["loss"],
               "valid_acc": va["acc"], **{f"lr_{i}": lr for i, lr in enumerate(lrs)},
               "epoch_seconds": tr["seconds"], "images_per_second": totals[2] / tr["seconds"],
               # since the first training step, validation included (what "time to accuracy" counts)
               "elapsed_seconds": done_before + time.perf_counter() - clock}
        history.append(row)
        if va["acc"] > best["acc"]:
            best = {"acc": va["acc"], "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if dist.main:
            writer.epoch(model, row, lrs)
            ckpt.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                       "history": history, "best": best, "rng": {"torch": torch.get_rng_state()},
                       "fingerprint": fp, "tensorboard": writer.snapshot()})
        # logged once the checkpoint is on disk: "epoch N/" means epoch N survives a kill
        log(f"epoch {epoch + 1}/{tp.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | valid loss "
            f"{va['loss']:.4f} acc {va['acc']:.4f} | lr {lrs[0]:.3g} | {tr['seconds']:.1f} s, "
            f"{row['images_per_second']:.0f} img/s")

    result = {"history": history, "best": best}
    if dist.main:
        hp_metrics = write_outputs(params, paths, model, best, history, classes, stats, summary)
        writer.finish(params, hp_metrics)
        ckpt.finish()
        result["metrics"] = hp_metrics
    if lock is not None:
        lock.close()
    return result


def write_outputs(params: Params, paths: Paths, model, best: dict, history: list[dict], classes, stats,
                  summary: str) -> dict:
    from cifarlab.artifact import save_model

    info = dict(name=params.model.name, kwargs=params.model.kwargs_for(), classes=classes, normalize=stats,
                eval_transforms=params.augment.eval, channels_last=params.model.channels_last)
    with atomic_dir(paths.models) as tmp:
        save_model(tmp / "last.pt", model, epoch=len(history), valid_acc=history[-1]["valid_acc"], **info)
        best_model = model
        if best["state"] is not None:
            best_model.load_state_dict(best["state"])
        save_model(tmp / "model.pt", best_model, epoch=best["epoch"], valid_acc=best["acc"], **info)
    last = history[-1]
    metrics = {"best_valid_acc": best["acc"], "best_epoch": best["epoch"], "final_valid_acc": last["valid_acc"],
               "final_valid_loss": last["valid_loss"], "final_train_acc": last["train_acc"],
               "final_train_loss": last["train_loss"], "epochs": len(history)}
    # timings vary run to run: kept apart so identical runs give identical metrics
    timing = {"train_seconds": round(sum(r["epoch_seconds"] for r in history), 3),
              "images_per_second": round(float(np.mean([r["images_per_second"] for r in history])), 1)}
    paths.reports.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    write_text(paths.reports / "history.csv", buf.getvalue())
    write_json(paths.reports / "metrics.json", metrics)
    write_json(paths.reports / "timing.json", timing)
    write_text(paths.reports / "summary.txt", summary + "\n")
    return metrics


def raise_if_missing(*files: Path) -> None:
    for f in files:
        if not Path(f).exists():
            raise CifarlabError(f"{f}: missing; run `dvc repro` to build the data stages first")
