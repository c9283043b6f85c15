"""Test-time augmentation (evaluate.tta, issue 22): the logits of several views of each image,
averaged. Its own module because two stages run it: evaluate (through engine.loop.evaluate)
and visualize (viz.predictions), and visualize should not depend on the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: evaluate.tta: test-time augmentation, the logits of several views of each image averaged.
#: `flip`: the image and its mirror, 1/2 each; `flip_translate`: airbench94's (Keller Jordan,
#: 2024; issue 22): the image and its mirror (1/2 together) and the same pair shifted one pixel
#: up-left and one pixel down-right with reflection at the borders (1/4 each pair). 2 or 6
#: forward passes per image, at evaluation only; `none` runs the model as it is.
TTA_MODES = ("none", "flip", "flip_translate")


class TTA(nn.Module):
    """`model` under test-time augmentation `mode` (one of TTA_MODES but none)."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if mode not in TTA_MODES[1:]:
            raise ValueError(f"mode must be one of {', '.join(TTA_MODES[1:])}, got {mode!r}")
        self.model, self.mode = model, mode

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.model(x).float() + self.model(x.flip(-1)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._mirrored(x)
        if self.mode == "flip":
            return out
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
        return 0.5 * out + 0.25 * (self._mirrored(up_left) + self._mirrored(down_right))


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """The model itself for `none`, else wrapped."""
    return model if mode == "none" else TTA(model, mode).eval()
