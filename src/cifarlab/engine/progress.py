"""A progress bar per epoch on a terminal; nothing per step anywhere else.

On a terminal (stderr is a TTY) the bar shows steps, images per second and the running
loss, refreshed at most every `interval` seconds: reading the loss means a device sync,
so it happens a few times a second, not every step. Elsewhere (CI, `dvc queue logs`, a
file) there is no bar and no per-step work at all: the train stage prints one plain line
per epoch instead. `CIFARLAB_PROGRESS=0` or `1` overrides the TTY check.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Optional, TextIO

import torch
from tqdm import tqdm


def wanted(stream: TextIO = sys.stderr) -> bool:
    """Whether to draw bars: on a terminal, unless CIFARLAB_PROGRESS says otherwise."""
    forced = os.environ.get("CIFARLAB_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return stream.isatty()


class EpochBar:
    """`on_step(step, images, loss)` for `train_one_epoch`: a tqdm bar over one epoch's steps."""

    def __init__(self, epoch: int, epochs: int, steps: int, *, stream: TextIO = sys.stderr, interval: float = 0.25):
        # the terminal's size once per epoch: one reporting 0 x 0 (a fresh pseudo-terminal, some
        # CI consoles) gets shutil's fallback, since tqdm draws nothing at all with 0 rows
        size = shutil.get_terminal_size((100, 20))
        self.bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            file=stream,
            leave=False,
            ncols=size.columns,
            nrows=size.lines,
            mininterval=interval,
        )
        self.interval = interval
        self.start = self.last = time.perf_counter()
        self.images = 0
        self.done = 0
        self.loss_sum = 0.0
        self.loss_images = 0

    def __call__(self, step: int, images: int, loss: torch.Tensor) -> None:
        self.images += images
        now = time.perf_counter()
        if now - self.last < self.interval and step + 1 < self.bar.total:
            return
        self.loss_sum += float(loss) * images  # the one sync, a few times a second
        self.loss_images += images
        last = step + 1 >= self.bar.total
        self.bar.update(step + 1 - self.done)
        self.done = step + 1
        # the last step always shows, so even an epoch shorter than `interval` draws its numbers
        self.bar.set_postfix_str(
            f"{self.images / max(now - self.start, 1e-9):.0f} img/s, loss {self.loss_sum / self.loss_images:.4f}",
            refresh=last,
        )
        self.last = now

    def close(self) -> None:
        self.bar.close()


def epoch_bar(epoch: int, epochs: int, steps: int, show: Optional[bool] = None) -> Optional[EpochBar]:
    """A bar for this epoch when drawing bars is wanted, else None (no per-step callback)."""
    return EpochBar(epoch, epochs, steps) if (wanted() if show is None else show) else None
