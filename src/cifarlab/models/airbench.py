"""`cifarlab.airbench`: the net shape of Keller Jordan's airbench94 (2024), the CIFAR-10 speed record.

Why this shape (issue 22): airbench94 reaches 94% test accuracy in under ten epochs, and
most of its speed is the net:

* a 2x2 first conv with bias and no padding (32x32 -> 31x31), `whiten_width` channels,
  then GELU: meant to be initialized from the training images' patch whitening and frozen
  (`model.whiten`, cifarlab.models.whiten), and trained like any conv when it is not;
* one conv group per entry of `widths`: conv3x3, 2x2 max-pool, batch norm, GELU, conv3x3,
  batch norm, GELU (31 -> 15 -> 7 -> 3 with the default three groups);
* a global max-pool and a linear head without bias whose logits are multiplied by a fixed
  `logit_scale` (1/9 in airbench94), which keeps the head's effective learning rate in step
  with the convs'.

Batch norms use airbench's settings by default: a running-statistics momentum of 0.4 (in
torch's convention; airbench writes 0.6 for the kept fraction), eps 1e-12 and a scale
(`weight`) fixed at 1, so only the shift trains (`norm_weight: false`). Convolutions after the
first start from torch's default init with their first in_channels filters made identities
(`torch.nn.init.dirac_`, airbench's "dirac" init), so each group starts close to passing
its input through. The convs have no bias (the batch norms' shift replaces it).
"""

from __future__ import annotations

import torch
from torch import nn


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ConvGroup(nn.Sequential):
    """conv3x3, max-pool 2, batch norm, GELU, conv3x3, batch norm, GELU."""

    def __init__(self, cin: int, cout: int, *, bn_momentum: float, norm_weight: bool):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            _norm(cout, bn_momentum, norm_weight),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm(cout, bn_momentum, norm_weight),
            nn.GELU(),
        )


def _norm(channels: int, momentum: float, trainable_weight: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(trainable_weight)
    return bn


class Airbench(nn.Module):
    """airbench94's net; see the module docstring.

    Args:
        num_classes: size of the output layer (set by the data).
        widths: channels of each conv group (airbench94: 64, 256, 256); one group per entry,
            each halving the resolution, so at most 4 groups on 32x32 images.
        whiten_width: channels of the 2x2 first conv (airbench94: 24 = 2 x 3 x 2 x 2, the
            patch whitening's eigenvectors with both signs).
        logit_scale: fixed multiplier of the logits (airbench94: 1/9).
        bn_momentum: the batch norms' running-statistics momentum, torch's convention.
        norm_weight: train the batch norms' scale (airbench94: false, fixed at 1).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (64, 256, 256),
        whiten_width: int = 24,
        logit_scale: float = 1 / 9,
        *,
        bn_momentum: float = 0.4,
        norm_weight: bool = False,
    ):
        super().__init__()
        widths = list(widths) if isinstance(widths, (list, tuple)) else widths
        if not isinstance(widths, list) or not 1 <= len(widths) <= 4:
            raise ValueError(f"widths must be a list of 1 to 4 channel counts, got {widths!r}")
        for w in widths:
            _positive_int("each of widths", w)
        _positive_int("whiten_width", whiten_width)
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
        if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
        self.logit_scale = float(logit_scale)
        self.whiten = nn.Conv2d(3, whiten_width, 2, padding=0, bias=True)
        self.act = nn.GELU()
        cins = [whiten_width, *widths[:-1]]
        self.groups = nn.Sequential(
            *[
                ConvGroup(cin, cout, bn_momentum=float(bn_momentum), norm_weight=norm_weight)
                for cin, cout in zip(cins, widths)
            ]
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)
        self._dirac()

    @torch.no_grad()
    def _dirac(self) -> None:
        """The first in_channels filters of every 3x3 conv become identities (airbench's init)."""
        for m in self.groups.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                w = m.weight
                nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


MODELS = {"airbench": Airbench}
