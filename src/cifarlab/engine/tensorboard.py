"""The train stage's TensorBoard run (tutorial chapter 4): curves, learning rate, histograms.

Loss and accuracy go in one chart each with train and valid side by side (add_scalars),
the learning rate per parameter group, and a histogram of every parameter and its gradient
per epoch. The run directory is this stage's alone; visualize writes its own beside it.
Event files are snapshotted into the checkpoint each epoch, so a resumed run keeps the
epochs it logged before it was interrupted (DVC empties the output before a rerun).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from torch.utils.tensorboard import SummaryWriter

#: Buckets per histogram. SummaryWriter's default ("tensorflow": about 1,500 exponentially
#: spaced buckets) costs 30 ms an epoch for the tutorial's small Net, 1% of a run at batch 16;
#: 64 even buckets cost 7 ms and show the same picture: TensorBoard draws about 30 (TF's own
#: summary API defaults to 30 buckets).
HISTOGRAM_BINS = 64


class TrainLogger:
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

    def start(self, model, params, summary: str) -> None:
        text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
        self.writer.add_text("params", "```\n" + text + "\n```", 0)
        self.writer.add_text("model/summary", "```\n" + summary + "\n```", 0)

    def epoch(self, model, row: dict, lrs: list[float]) -> None:
        e = row["epoch"]
        w = self.writer
        w.add_scalars("loss", {"train": row["train_loss"], "valid": row["valid_loss"]}, e)
        w.add_scalars("accuracy", {"train": row["train_acc"], "valid": row["valid_acc"]}, e)
        for i, lr in enumerate(lrs):
            w.add_scalar(f"learning_rate/group_{i}", lr, e)
        w.add_scalar("speed/images_per_second", row["images_per_second"], e)
        for key in ("grad_norm", "grad_norm_max", "clipped"):  # with train.clip: does it bite?
            if key in row:
                w.add_scalar(f"gradients/{key}", row[key], e)
        if self.histograms:
            for name, p in model.named_parameters():
                w.add_histogram(f"weights/{name}", p.detach().float().cpu(), e, bins=HISTOGRAM_BINS)
                if p.grad is not None:
                    w.add_histogram(f"gradients/{name}", p.grad.detach().float().cpu(), e,
                                    bins=HISTOGRAM_BINS)
        w.flush()

    def snapshot(self) -> dict[str, bytes]:
        self.writer.flush()
        for sub in self.writer.all_writers.values():
            sub.flush()
        return {p.relative_to(self.logdir).as_posix(): p.read_bytes()
                for p in self.logdir.rglob("*") if p.is_file()}

    def finish(self, params, metrics: dict) -> None:
        flat = {}
        for section in ("model", "optimizer", "scheduler", "loss", "train"):
            for k, v in params.model_dump(mode="json")[section].items():
                if isinstance(v, (int, float, str, bool)):
                    flat[f"{section}.{k}"] = v
        flat["seed"] = params.seed
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                                run_name=".")
        self.writer.close()
