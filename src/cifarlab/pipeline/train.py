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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.init as tinit

from cifarlab.artifact import save_model
from cifarlab.atomic import atomic_dir, write_json, write_text
from cifarlab.augment.transforms import check_transforms, is_multicrop
from cifarlab.data.dataset import load_tensors
from cifarlab.data.index import read_index
from cifarlab.data.layout import read_meta, read_stats
from cifarlab.engine.checkpoint import CheckpointDir, fingerprint, tensor_digest, train_lock
from cifarlab.engine.device import setup_runtime
from cifarlab.engine.diagnostics import LayerDiagnostics, fixed_batch, layers_csv, rng_kept
from cifarlab.engine.distributed import process_group, relaunch_under_torchrun
from cifarlab.engine.ema import WeightAverage, make_average
from cifarlab.engine.loop import Dist, _prepare, evaluate, train_one_epoch
from cifarlab.engine.memory import check_training_memory
from cifarlab.engine.progress import epoch_bar
from cifarlab.engine.sources import make_source
from cifarlab.engine.tensorboard import TrainLogger, chain
from cifarlab.engine.whitening import whiten_model
from cifarlab.errors import CifarlabError, ParamsError
from cifarlab.models.registry import check_model, create_model
from cifarlab.models.summary import summarize
from cifarlab.models.whiten import set_bias_epoch
from cifarlab.optim.losses import REFUSED as REFUSED_LOSSES
from cifarlab.optim.losses import build_loss, check_loss, supported_losses, user_losses
from cifarlab.optim.optimizers import build_optimizer, check_optimizer, needs_closure, optimizer_classes
from cifarlab.optim.schedulers import build_scheduler, check_scheduler, scheduler_classes
from cifarlab.params import Params
from cifarlab.register import code_folders


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
    check_argument_sections(params)
    check_model(params.model)
    check_loss(params.loss)
    check_optimizer(params.optimizer)
    check_scheduler(params.scheduler, params.optimizer, epochs=params.train.epochs, steps_per_epoch=steps_per_epoch)
    check_transforms(params.augment.train, "augment.train")
    check_transforms(params.augment.eval, "augment.eval")
    wp = params.model.whiten
    if wp.enabled and wp.bias_epochs is not None and params.train.nproc > 1:
        raise ParamsError(
            "model.whiten.bias_epochs",
            "freezing the bias mid-run needs train.nproc 1 (DDP "
            "needs the same trainable parameters every step); set it to null to train it throughout",
            wp.bias_epochs,
        )


def check_argument_sections(params: Params) -> None:
    """Every `<section>.<Name>: {...}` must name a real component: a misspelt name would
    silently drop its arguments (`optimizer.SDG: {momentum: 0.9}` training SGD without momentum)."""
    init_names = {n for n in dir(tinit) if n.endswith("_") and not n.startswith("_")}
    init_names |= {n.rstrip("_") for n in init_names}
    sections = [
        ("optimizer", params.optimizer, set(optimizer_classes())),
        ("loss", params.loss, set(supported_losses()) | set(REFUSED_LOSSES) | set(user_losses())),
        ("scheduler", params.scheduler, set(scheduler_classes())),
    ]
    sections += [
        (f"model.init.{layer}", getattr(params.model.init, layer), init_names)
        for layer in ("conv", "linear", "batchnorm")
    ]
    for key, section, valid in sections:
        for name in section.model_extra or {}:
            if name not in valid:
                raise ParamsError(
                    f"{key}.{name}", "is not a known name, so its arguments would be ignored (a typo?)", choices=valid
                )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def probe_shapes(model, name: str, runtime, sources) -> None:
    """One forward pass per source before training: a size mismatch is a clear error, not a crash mid-epoch."""
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
                raise ParamsError(
                    key,
                    f"produces inputs of shape {tuple(x.shape[1:])}, which model {name} "
                    f"cannot take ({str(exc).splitlines()[0]})",
                ) from None
    finally:
        model.train(was_training)


def training_params(params: Params) -> dict:
    """The params that decide the result (not threads, workers or the device's name)."""
    d = params.model_dump(mode="json")
    keep = {k: d[k] for k in ("seed", "model", "augment", "loss", "optimizer", "scheduler")}
    keep["train"] = {k: d["train"][k] for k in ("epochs", "batch_size", "amp", "compile", "clip", "ema")}
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


@dataclass
class Setup:
    """Everything `fit` builds before the first epoch."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # the model as trained: DDP- or compile-wrapped, or the model itself
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    closure: bool
    runtime: Any
    train_src: Any
    valid_src: Any
    ncrops: int
    classes: list[str]
    stats: dict
    summary: str
    fingerprint: str
    device: str  # where it trains, for people: timing.json and the model card
    average: WeightAverage | None = None  # train.ema: the averaged weights validation and the files use
    whiten_bias: torch.nn.Parameter | None = None  # model.whiten: the bias trained for bias_epochs

    def eval_model(self) -> torch.nn.Module:
        """The model to validate and save: the weight average once it exists, else the model."""
        return self.average.eval_model() if self.average is not None else self.model


@dataclass
class Progress:
    """What a checkpoint carries across an interruption."""

    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": -1, "state": None})
    start_epoch: int = 0
    tensorboard: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)  # per-layer diagnostics rows (train.diagnostics)


def fit(params: Params, paths: Paths, dist: Dist = Dist(), log=print) -> dict:
    """Build, resume, run the epochs, write the outputs (rank 0 writes; other ranks only train)."""
    # one train stage at a time writes this project's checkpoints and outputs; taken first, so a
    # read-only or full checkpoints/ folder stops the stage before any work
    lock = train_lock(paths.checkpoints) if dist.main else None
    try:
        return _fit(params, paths, dist, log)
    finally:
        if lock is not None:
            lock.close()


def _fit(params: Params, paths: Paths, dist: Dist, log) -> dict:
    s = build(params, paths, dist, log)
    ckpt = CheckpointDir(paths.checkpoints, s.fingerprint)
    progress = resume(ckpt, s, log, set_aside=dist.main)
    writer = None
    if dist.main:
        writer = TrainLogger(paths.tensorboard, restore=progress.tensorboard, histograms=params.train.histograms)
        if progress.start_epoch == 0:
            writer.start(s.model, params, s.summary)
        if progress.history:  # resumed: the live files show where training stands at once
            write_live(paths, progress, complete=False, device=s.device)
    diag = None
    if writer is not None and params.train.diagnostics:  # writer: rank 0's (dist.main)
        with rng_kept(s.runtime.device):
            batch = fixed_batch(s.valid_src)
        diag = LayerDiagnostics(s.model, s.loss_fn, batch, rows=progress.layers)
        if progress.start_epoch == 0:  # step 0: the initialization's own scale, before any update
            writer.layers(diag.measure(0), 0)
            progress.layers = diag.rows
    run_epochs(params, s, progress, ckpt=ckpt, writer=writer, paths=paths, dist=dist, log=log, diag=diag)
    result = {"history": progress.history, "best": progress.best}
    if writer is not None:  # rank 0 (dist.main)
        hp_metrics = write_outputs(params, paths, s, progress)
        writer.finish(params, hp_metrics)
        ckpt.finish()
        result["metrics"] = hp_metrics
    return result


def model_on_device(params: Params, runtime, dist: Dist, *, data: tuple, num_classes: int, log) -> torch.nn.Module:
    """The model, checked to fit in memory before epoch 1, on its device."""
    tp = params.train
    train_x, train_y, valid_x = data
    model = create_model(params.model, num_classes=num_classes, log=log if dist.main else (lambda *_: None))
    if params.optimizer.name == "LBFGS" and runtime.channels_last:
        # LBFGS flattens gradients with view(), which channels-last weights do not allow
        model = model.to(memory_format=torch.contiguous_format)
        runtime.channels_last = False
        log("train: LBFGS needs contiguous weights; channels_last is off for this run")
    # a run too big for the memory stops here, not in epoch 1; on a GPU the fast path also
    # holds the padded (and mirrored) training images and the kept validation batches in float
    on_device = 4 * train_x.nbytes + 5 * valid_x.nbytes if runtime.device.type != "cpu" else 0
    check_training_memory(
        model,
        min(tp.batch_size, -(-len(train_y) // dist.world)),
        params.optimizer.name,
        runtime.device,
        amp_dtype=runtime.amp_dtype,
        extra_bytes=on_device,
        processes=dist.world if runtime.device.type == "cpu" else 1,
    )
    model.to(runtime.device)
    return model


def sources(params: Params, paths: Paths, dist: Dist, *, data: tuple, common: dict[str, Any]) -> tuple:
    """The training source (shuffled, augmented) and the validation one (its batches kept)."""
    train_x, train_y, valid_x, valid_y = data
    tp = params.train
    train_src = make_source(
        params.augment.train,
        "augment.train",
        images=train_x,
        labels=train_y,
        index=paths.train_index,
        batch_size=tp.batch_size,
        shuffle=True,
        dist=dist,
        **common,
    )
    valid_src = make_source(
        params.augment.eval,
        "augment.eval",
        images=valid_x,
        labels=valid_y,
        index=paths.valid_index,
        batch_size=max(tp.batch_size, 256),
        shuffle=False,
        keep=True,
        **common,
    )
    return train_src, valid_src


def wrap_for_training(model: torch.nn.Module, runtime, dist: Dist, *, compile: bool) -> torch.nn.Module:
    """What the steps call: the model itself, in DDP across ranks, compiled on request."""
    train_model = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if compile:
        train_model = cast(torch.nn.Module, torch.compile(train_model))  # a Module compiled is an OptimizedModule
    return train_model


def build(params: Params, paths: Paths, dist: Dist, log) -> Setup:
    """Check every component, decode the images, build the model and everything that trains it."""
    tp = params.train
    stats = read_stats(paths.stats)
    classes = read_meta(paths.meta)["classes"]
    n_train = len(read_index(paths.train_index, len(classes)))
    check_all(params, steps_per_epoch=-(-n_train // (tp.batch_size * dist.world)))
    runtime = setup_runtime(tp.device, tp.amp, params.runtime.threads, params.model.channels_last, dist.world)
    seed_everything(params.seed)

    t0 = time.perf_counter()
    train_x, train_y = load_tensors(paths.train_index, paths.root, len(classes))
    valid_x, valid_y = load_tensors(paths.valid_index, paths.root, len(classes))
    log(
        f"train: {len(train_y)} training and {len(valid_y)} validation images decoded in "
        f"{time.perf_counter() - t0:.2f} s; device {runtime.device}"
        + (f", mixed precision {runtime.amp_dtype}" if runtime.amp_dtype else "")
    )

    model = model_on_device(params, runtime, dist, data=(train_x, train_y, valid_x), num_classes=len(classes), log=log)
    common: dict[str, Any] = dict(
        backend=params.augment.backend,
        stats=stats,
        runtime=runtime,
        seed=params.seed,
        num_workers=params.runtime.num_workers,
        log=log,
    )
    train_src, valid_src = sources(params, paths, dist, data=(train_x, train_y, valid_x, valid_y), common=common)
    whiten_bias = (
        whiten_model(params, model, train_x, train_y, common, log=log) if params.model.whiten.enabled else None
    )
    ncrops = is_multicrop(params.augment.eval)
    probe_shapes(
        model, params.model.name, runtime, [("augment.train", train_src, 1), ("augment.eval", valid_src, ncrops)]
    )
    train_model = wrap_for_training(model, runtime, dist, compile=tp.compile)
    optimizer = build_optimizer(params.optimizer, model)
    fp = fingerprint(
        training_params(params),
        tensor_digest(train_x, train_y, valid_x, valid_y) + json.dumps(stats, sort_keys=True) + str(dist.world),
        code_folders(),
    )
    return Setup(
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        loss_fn=build_loss(params.loss, num_classes=len(classes)).to(runtime.device),
        scheduler=build_scheduler(params.scheduler, optimizer, epochs=tp.epochs, steps_per_epoch=len(train_src)),
        scaler=runtime.scaler(),
        closure=needs_closure(optimizer),
        runtime=runtime,
        train_src=train_src,
        valid_src=valid_src,
        ncrops=ncrops,
        classes=classes,
        stats=stats,
        summary=summarize(model) if dist.main else "",
        fingerprint=fp,
        device=describe_device(runtime, dist.world),
        whiten_bias=whiten_bias,
        average=make_average(model, tp.ema, len(train_src)),
    )


def resume(ckpt: CheckpointDir, s: Setup, log, set_aside: bool = True) -> Progress:
    """The state of the last finished epoch of an interrupted run with the same fingerprint, if any:
    the newest sound checkpoint (a damaged one is named in a warning and set aside)."""
    found = ckpt.load_sound(lambda line: print(line, file=sys.stderr, flush=True), set_aside=set_aside)
    if found is None:
        return Progress()
    state, state_path = found
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    s.scaler.load_state_dict(state["scaler"])
    if s.average is not None:
        s.average.load_state_dict(state["ema"])
    progress = Progress(
        history=state["history"],
        best=state["best"],
        start_epoch=state["epoch"] + 1,
        tensorboard=state.get("tensorboard", {}),
        layers=state.get("layers", []),
    )
    log(f"train: resuming from the checkpoint of epoch {progress.start_epoch} ({state_path})")
    return progress


def train_epoch(params: Params, s: Setup, *, epoch: int, writer, dist: Dist) -> dict:
    """One epoch of steps, with the progress bar, the per-step curves and the weight average."""
    tp = params.train
    bar = epoch_bar(epoch, tp.epochs, len(s.train_src)) if dist.main else None
    steps = (
        writer.steps(s.optimizer, every=tp.log_every_steps, epoch=epoch, steps_per_epoch=len(s.train_src))
        if dist.main
        else None
    )
    try:
        tr = train_one_epoch(
            s.train_model,
            s.loss_fn,
            s.optimizer,
            s.train_src,
            epoch=epoch,
            runtime=s.runtime,
            scheduler=s.scheduler,
            scaler=s.scaler,
            needs_closure=s.closure,
            on_step=chain(bar, steps, s.average and s.average.on_step(epoch)),
            clip=tp.clip,
        )
    finally:
        if bar is not None:
            bar.close()
    return tr


def checkpoint_state(s: Setup, progress: Progress, *, epoch: int, writer) -> dict:
    """Everything a resumed run needs to continue as if never stopped (engine/checkpoint.KEYS)."""
    return {
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict(),
        "epoch": epoch,
        "history": progress.history,
        "best": progress.best,
        "rng": {"torch": torch.get_rng_state()},
        "fingerprint": s.fingerprint,
        "tensorboard": writer.snapshot(),
        "layers": progress.layers,
        **({"ema": s.average.state_dict()} if s.average is not None else {}),
    }


def run_epochs(
    params: Params,
    s: Setup,
    progress: Progress,
    *,
    ckpt: CheckpointDir,
    writer,
    paths: Paths,
    dist: Dist,
    log,
    diag: LayerDiagnostics | None = None,
) -> None:
    """Train and validate each remaining epoch; after each, checkpoint and rewrite the live outputs."""
    tp = params.train
    clock = time.perf_counter()
    done_before = progress.history[-1]["elapsed_seconds"] if progress.history else 0.0
    for epoch in range(progress.start_epoch, tp.epochs):
        seed_everything(params.seed * 1_000_003 + epoch)  # dropout and per-sample transforms, resumable
        set_bias_epoch(s.whiten_bias, epoch, params.model.whiten.bias_epochs)
        tr = train_epoch(params, s, epoch=epoch, writer=writer, dist=dist)
        totals = dist.reduce(
            torch.tensor(
                [tr["loss"] * tr["images"], tr["acc"] * tr["images"], tr["images"]],
                dtype=torch.float64,
                device=s.runtime.device,
            )
        ).tolist()
        tr_loss, tr_acc = totals[0] / totals[2], totals[1] / totals[2]
        va = evaluate(s.eval_model(), s.loss_fn, s.valid_src, s.runtime, ncrops=s.ncrops)
        lrs = [g["lr"] for g in s.optimizer.param_groups]
        s.scheduler.step_epoch(
            {"valid_loss": va["loss"], "valid_acc": va["acc"], "train_loss": tr_loss, "train_acc": tr_acc}
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": tr_loss,
            "train_acc": tr_acc,
            "valid_loss": va["loss"],
            "valid_acc": va["acc"],
            **{f"lr_{i}": lr for i, lr in enumerate(lrs)},
            **{k: tr[k] for k in ("grad_norm", "grad_norm_max", "clipped") if k in tr},
            "epoch_seconds": tr["seconds"],
            "images_per_second": totals[2] / tr["seconds"],
            # since the first training step, validation included (what "time to accuracy" counts)
            "elapsed_seconds": done_before + time.perf_counter() - clock,
        }
        progress.history.append(row)
        if va["acc"] > progress.best["acc"]:
            progress.best = {
                "acc": va["acc"],
                "epoch": epoch + 1,
                "state": {k: v.detach().cpu().clone() for k, v in s.eval_model().state_dict().items()},
            }
        if diag is not None:
            writer.layers(diag.measure(epoch + 1), epoch + 1)
            progress.layers = diag.rows
        if dist.main:
            writer.epoch(s.model, row, lrs)
            ckpt.save(checkpoint_state(s, progress, epoch=epoch, writer=writer))
            write_live(paths, progress, complete=False, device=s.device)
        # logged once the checkpoint is on disk: "epoch N/" means epoch N survives a kill
        log(
            f"epoch {epoch + 1}/{tp.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | valid loss "
            f"{va['loss']:.4f} acc {va['acc']:.4f} | lr {lrs[0]:.3g} | {tr['seconds']:.1f} s, "
            f"{row['images_per_second']:.0f} img/s"
        )


def describe_device(runtime, world: int = 1) -> str:
    """Where training ran, for people (the model card): 'cuda:0 (NVIDIA H200), bf16 autocast'."""
    dev = runtime.device
    text = str(dev)
    if dev.type == "cuda":
        text += f" ({torch.cuda.get_device_name(dev)})"
    elif dev.type == "cpu":
        threads = torch.get_num_threads()
        text += f" ({threads} thread{'s' if threads != 1 else ''})"
    if world > 1:
        text += f", {world} processes"
    if runtime.amp_dtype is not None:
        text += f", {str(runtime.amp_dtype).removeprefix('torch.')} autocast"
    return text


def headline(progress: Progress, complete: bool) -> dict:
    """reports/train/metrics.json: the few numbers `dvc exp show` compares, named by where they come from.

    Rewritten after every epoch (`complete: false`) and once more at the end (`complete: true`),
    so a reader can tell a run in progress, or a killed one, from a finished one.
    """
    last = progress.history[-1]
    return {
        "epoch": last["epoch"],
        "complete": complete,
        "train": {"loss": round(last["train_loss"], 6)},
        "valid": {"best_acc": round(progress.best["acc"], 6), "best_epoch": progress.best["epoch"]},
    }


def write_live(paths: Paths, progress: Progress, complete: bool, device: str = "") -> None:
    """history.csv, metrics.json and timing.json as they stand: what `dvc exp show` and DVC's
    VS Code extension read while the stage runs. Each file is replaced atomically."""
    history = progress.history
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    paths.reports.mkdir(parents=True, exist_ok=True)
    write_text(paths.reports / "history.csv", buf.getvalue())
    write_json(paths.reports / "metrics.json", headline(progress, complete))
    # always written (a header alone when train.diagnostics is off): dvc.yaml declares it
    write_text(paths.reports / "layers.csv", layers_csv(progress.layers))
    # timings vary run to run: kept apart so identical runs give identical metrics
    write_json(
        paths.reports / "timing.json",
        {
            "train_seconds": round(sum(r["epoch_seconds"] for r in history), 3),
            "images_per_second": round(float(np.mean([r["images_per_second"] for r in history])), 1),
            **({"device": device} if device else {}),
        },
    )


def write_outputs(params: Params, paths: Paths, s: Setup, progress: Progress) -> dict:
    """The finished run: both model files, the final live files and the summary; returns the metrics."""
    history, best = progress.history, progress.best
    # the curves and per-layer diagnostics travel with the model (visualize draws them from it,
    # one dependency fewer in `dvc exp show`), without the clock times: identical runs must
    # write identical model files
    curves = [
        {k: v for k, v in row.items() if not k.endswith("seconds") and k != "images_per_second"} for row in history
    ]
    # through JSON: pickle shares repeated objects by identity, and rows restored from a checkpoint
    # share differently from rows made in this process, so the same numbers would pickle to
    # other bytes after a resume; decoded afresh, the structure depends on the values alone
    info: dict[str, Any] = dict(
        name=params.model.name,
        kwargs=params.model.kwargs_for(),
        classes=s.classes,
        normalize=s.stats,
        eval_transforms=params.augment.eval,
        channels_last=params.model.channels_last,
        history=json.loads(json.dumps(curves)),
        layers=json.loads(json.dumps(progress.layers)),
    )
    with atomic_dir(paths.models) as tmp:
        save_model(tmp / "last.pt", s.eval_model(), epoch=len(history), valid_acc=history[-1]["valid_acc"], **info)
        if best["state"] is not None:
            s.model.load_state_dict(best["state"])
        save_model(tmp / "model.pt", s.model, epoch=best["epoch"], valid_acc=best["acc"], **info)
    write_live(paths, progress, complete=True, device=s.device)
    write_text(paths.reports / "summary.txt", s.summary + "\n")
    return {
        "best_valid_acc": best["acc"],
        "best_epoch": best["epoch"],
        "final_train_loss": history[-1]["train_loss"],
        "final_valid_acc": history[-1]["valid_acc"],
        "epochs": len(history),
    }


def raise_if_missing(*files: Path) -> None:
    for f in files:
        if not Path(f).exists():
            raise CifarlabError(f"{f}: missing; run `dvc repro` to build the data stages first")
