"""train.ema: an exponential moving average of the weights, and airbench94's lookahead.

`torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn(decay)` and
`use_buffers=True` keeps a copy of the model whose parameters *and* buffers (the batch
norms' running statistics) are the moving average avg = decay * avg + (1 - decay) * model,
updated every `every` optimizer steps from epoch `start_epoch` on (the first update copies).
Validation, the best-epoch choice and both saved model files use the averaged copy once it
exists, so what evaluate tests is what was validated. With `lookahead: true` the average is
also copied back into the trained model after each update (hlb-cifar10 and airbench94's
"lookahead": the fast weights restart from the slow ones every `every` steps).

Cost: one more copy of the weights in memory and a lerp over them every `every` steps
(negligible beside the steps themselves). The checkpoint holds the average beside the
model, and updates are counted by global step, so a resumed run averages exactly as an
uninterrupted one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The averaged copy of `model` and when to update it (an EmaParams: train.ema)."""

    def __init__(self, model: nn.Module, ema, steps_per_epoch: int):
        self.model, self.ema, self.steps_per_epoch = model, ema, steps_per_epoch
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema.decay), use_buffers=True)

    def on_step(self, epoch: int):
        """An `on_step(step, images, loss)` callback for this epoch's train_one_epoch (None before start_epoch)."""
        if epoch < self.ema.start_epoch:
            return None
        base = epoch * self.steps_per_epoch

        def step(i: int, images: int, loss) -> None:
            if (base + i + 1) % self.ema.every == 0:
                self.update()

        return step

    @torch.no_grad()
    def update(self) -> None:
        self.avg.update_parameters(self.model)
        if self.ema.lookahead:
            fast = [*self.model.parameters(), *self.model.buffers()]
            slow = [*self.avg.module.parameters(), *self.avg.module.buffers()]
            for f, s in zip(fast, slow, strict=True):
                f.copy_(s)

    @property
    def started(self) -> bool:
        return int(self.avg.n_averaged.item()) > 0

    def eval_model(self) -> nn.Module:
        """The model to validate and save: the average once it exists, else the trained model."""
        return self.avg.module if self.started else self.model

    def state_dict(self) -> dict:
        return self.avg.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.avg.load_state_dict(state)


def make_average(model: nn.Module, ema, steps_per_epoch: int) -> Optional[WeightAverage]:
    """A WeightAverage when train.ema is on (a decay given), else None."""
    return WeightAverage(model, ema, steps_per_epoch) if ema.on else None
