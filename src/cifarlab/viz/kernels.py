"""Conv kernels and feature maps as image grids (tutorial 4.2 and 4.3), with torchvision's make_grid.

Two views of a conv layer's weight [out, in, k, k], as the tutorial draws them:

* `kernel_grid`: one tile per output channel. A first layer's kernels (in = 3) are RGB
  images in their own right; deeper kernels are shown as the mean over their inputs.
* `kernel_grid_per_channel`: grouped per output channel, one row each, with that channel's
  kernel over every input channel as a gray tile (`nrow = in`), each tile scaled on its own
  (`scale_each`), because a kernel's pattern is in its relative values, not its magnitude.

Feature maps are drawn the same way: one gray tile per channel, each scaled on its own.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torchvision.utils import make_grid


def conv_weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The layer's weight as a contiguous float CPU tensor [out, in, kh, kw]."""
    weight = cast(torch.Tensor, model.get_submodule(name).weight)  # a conv's: a Parameter
    return weight.detach().float().cpu().contiguous()


def kernel_grid(weight: torch.Tensor, nrow: int = 8, padding: int = 1) -> torch.Tensor:
    """All kernels of a conv layer as one [3, H, W] grid in 0..1, one tile per output channel."""
    tiles = weight if weight.shape[1] == 3 else weight.mean(1, keepdim=True)
    return make_grid(tiles, nrow=nrow, padding=padding, normalize=True, scale_each=True, pad_value=1.0)


def kernel_grid_per_channel(weight: torch.Tensor, max_channels: int = 16, padding: int = 1) -> torch.Tensor:
    """Kernels grouped per output channel: row o holds kernel (o, i) for every input i.

    At most `max_channels` output channels (rows) and input channels (columns): a 512x512
    layer would otherwise be a quarter of a million tiles.
    """
    w = weight[:max_channels, :max_channels]
    out, cin = w.shape[:2]
    tiles = w.reshape(out * cin, 1, *w.shape[2:])
    return make_grid(tiles, nrow=cin, padding=padding, normalize=True, scale_each=True, pad_value=1.0)


def feature_grid(maps: torch.Tensor, max_channels: int = 64, padding: int = 1) -> torch.Tensor:
    """One image's feature maps [C, H, W] as a gray grid, each map scaled to 0..1 on its own."""
    m = maps[:max_channels].float().unsqueeze(1)
    return make_grid(
        m, nrow=max(1, math.ceil(math.sqrt(len(m)))), padding=padding, normalize=True, scale_each=True, pad_value=1.0
    )
