"""The train stage's TensorBoard run (tutorial chapter 4): curves, learning rate, histograms.

Loss and accuracy are scalars `loss/train`, `loss/valid`, `accuracy/...` of this one run,
drawn train beside valid in one chart each by a custom-scalars layout (add_scalars would
make every series a run of its own and clutter the run list), the learning rate per
parameter group, and a histogram of every parameter and its gradient
per epoch. The run directory is this stage's alone; visualize writes its own beside it.
Event files are snapshotted into the checkpoint each epoch, so a resumed run keeps the
epochs it logged before it was interrupted (DVC empties the output before a rerun).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import yaml
from torch.utils.tensorboard import SummaryWriter

#: Buckets per histogram. SummaryWriter's default ("tensorflow": about 1,500 exponentially
#: spaced buckets) costs 30 ms an epoch for the tutorial's small Net, 1% of a run at batch 16;
#: 64 even buckets cost 7 ms and show the same picture: TensorBoard draws about 30 (TF's own
#: summary API defaults to 30 buckets).
HISTOGRAM_BINS = 64

#: TensorBoard's Custom Scalars tab: train and valid in one chart, from one run
LAYOUT = {
    "training": {
        "loss": ["Multiline", ["loss/train", "loss/valid"]],
        "accuracy": ["Multiline", ["accuracy/train", "accuracy/valid"]],
    }
}


class StepLogger:
    """`on_step(step, images, loss)` for `train_one_epoch`: the train loss and every group's
    learning rate every `every` steps, at the global step (epoch * steps_per_epoch + step).

    Reading the loss is a device sync, so it happens on those steps only; the others cost one
    modulo. The learning rate is read after the step, as the scheduler has set it for the next.
    """

    def __init__(self, writer: SummaryWriter, optimizer, *, every: int, epoch: int, steps_per_epoch: int):
        self.writer, self.optimizer, self.every = writer, optimizer, every
        self.base = epoch * steps_per_epoch

    def __call__(self, step: int, images: int, loss) -> None:
        if (step + 1) % self.every:
            return
        at = self.base + step + 1
        self.writer.add_scalar("step/train_loss", float(loss), at)
        for i, group in enumerate(self.optimizer.param_groups):
            self.writer.add_scalar(f"step/learning_rate/group_{i}", group["lr"], at)


def chain(*callbacks):
    """One `on_step` callback from several (None ones left out); None when there are none."""
    live = [c for c in callbacks if c is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def on_step(step, images, loss):
        for c in live:
            c(step, images, loss)

    return on_step


def _names_its_run(method):
    """A full or read-only disk meets SummaryWriter's writes as an OSError naming no file: name the run."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if not exc.filename:
                exc.filename = str(self.logdir)
            raise

    return wrapper


class TrainLogger:
    @_names_its_run
    def __init__(self, logdir: Path, restore: dict[str, bytes] | None = None, histograms: bool = True):
        self.logdir = Path(logdir)
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.logdir.mkdir(parents=True)
        for rel, data in (restore or {}).items():
            path = self.logdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.writer = SummaryWriter(str(self.logdir))
        self.histograms = histograms

    def steps(self, optimizer, *, every: int, epoch: int, steps_per_epoch: int):
        """The per-step logger of one epoch, or None when `every` is 0."""
        if every <= 0:
            return None
        return StepLogger(self.writer, optimizer, every=every, epoch=epoch, steps_per_epoch=steps_per_epoch)

    @_names_its_run
    def start(self, model, params, summary: str) -> None:
        self.writer.add_custom_scalars(LAYOUT)
        text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
        self.writer.add_text("params", "```\n" + text + "\n```", 0)
        self.writer.add_text("model/summary", "```\n" + summary + "\n```", 0)

    @_names_its_run
    def epoch(self, model, row: dict, lrs: list[float]) -> None:
        e = row["epoch"]
        w = self.writer
        for split in ("train", "valid"):
            w.add_scalar(f"loss/{split}", row[f"{split}_loss"], e)
            w.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], e)
        for i, lr in enumerate(lrs):
            w.add_scalar(f"learning_rate/group_{i}", lr, e)
        w.add_scalar("speed/images_per_second", row["images_per_second"], e)
        for key in ("grad_norm", "grad_norm_max", "clipped"):  # with train.clip: does it bite?
            if key in row:
                w.add_scalar(f"gradients/{key}", row[key], e)
        if self.histograms:
            for name, p in model.named_parameters():
                w.add_histogram(f"weights/{name}", p.detach().float().cpu(), e, bins=HISTOGRAM_BINS)  # pyright: ignore[reportArgumentType]  # see below
                if p.grad is not None:
                    w.add_histogram(f"gradients/{name}", p.grad.detach().float().cpu(), e, bins=HISTOGRAM_BINS)  # pyright: ignore[reportArgumentType]  # an int works: bins goes to numpy.histogram
        w.flush()

    @_names_its_run
    def layers(self, rows: list[dict], epoch: int) -> None:
        """Per-layer diagnostics (engine/diagnostics.py) at `epoch` (0: before the first step)."""
        for r in rows:
            self.writer.add_scalar(f"layers/activation_std/{r['depth']:02d}_{r['layer']}", r["activation_std"], epoch)
            self.writer.add_scalar(f"layers/gradient_norm/{r['depth']:02d}_{r['layer']}", r["gradient_norm"], epoch)
        self.writer.flush()

    @_names_its_run
    def snapshot(self) -> dict[str, bytes]:
        self.writer.flush()
        for sub in (self.writer.all_writers or {}).values():  # None only before the first event file
            sub.flush()
        return {p.relative_to(self.logdir).as_posix(): p.read_bytes() for p in self.logdir.rglob("*") if p.is_file()}

    @_names_its_run
    def finish(self, params, metrics: dict) -> None:
        flat = {}
        for section in ("model", "optimizer", "scheduler", "loss", "train"):
            for k, v in params.model_dump(mode="json")[section].items():
                if isinstance(v, (int, float, str, bool)):
                    flat[f"{section}.{k}"] = v
        flat["seed"] = params.seed
        self.writer.add_hparams(
            flat, {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, run_name="."
        )
        self.writer.close()
