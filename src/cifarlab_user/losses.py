"""A loss of your own: the focal loss (`loss.name: FocalLoss`, arguments at `loss.FocalLoss`).

Lin, Goyal, Girshick, He and Dollar, "Focal Loss for Dense Object Detection" (ICCV 2017):
FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), where p_t is the probability the model gives
the true class. gamma = 0 without alpha is cross-entropy; gamma > 0 shrinks the loss of
examples already classified well (p_t near 1), so training spends itself on the hard ones.
This is the softmax (multi-class) form, written on F.cross_entropy(reduction="none"), which
is -log(p_t); torchvision.ops.sigmoid_focal_loss is the sigmoid (one-vs-rest) form.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.register import register_loss


@register_loss("FocalLoss")
class FocalLoss(nn.Module):
    """(logits [N, C], target [N]) -> the mean (or sum) of alpha_t (1 - p_t)^gamma (-log p_t).

    gamma: the focusing parameter (>= 0; the paper's best is 2). alpha: one weight per class
    (alpha_t is the true class's weight), or none for 1 everywhere. num_classes is set by the data.
    """

    def __init__(
        self,
        num_classes: int = 10,
        gamma: float = 2.0,
        alpha: Optional[list[float]] = None,
        reduction: Literal["mean", "sum"] = "mean",
    ):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if alpha is not None and (len(alpha) != num_classes or any(not a >= 0 for a in alpha)):
            raise ValueError(f"alpha must list {num_classes} weights >= 0, one per class, got {alpha!r}")
        self.gamma, self.reduction = float(gamma), reduction
        self.register_buffer("alpha", None if alpha is None else torch.tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target, reduction="none")  # -log p_t
        p_t = torch.exp(-ce)
        # clamped: (1 - p_t) ** gamma has no finite gradient at p_t = 1 for 0 < gamma < 1
        loss = (1 - p_t).clamp_min(1e-12) ** self.gamma * ce
        alpha = self.alpha
        if isinstance(alpha, torch.Tensor):  # a buffer: pyright sees Module attributes as Tensor | Module
            loss = alpha[target] * loss
        return loss.mean() if self.reduction == "mean" else loss.sum()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha is not None}, reduction={self.reduction}"
