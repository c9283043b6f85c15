"""model.whiten: the first conv initialized as a patch-whitening filter bank from the training images.

airbench94 (Keller Jordan, 2024; issue 22) starts its net with a frozen 2x2 conv whose 24
filters are the eigenvectors of the 2x2 patch covariance of the training images, each scaled
by 1/sqrt(eigenvalue + eps), with both signs (v and -v, so a following ReLU/GELU keeps both
halves of each direction). The layer's output is then decorrelated, unit-variance patches:
the next layers start from inputs whose every direction is equally loud, which is a large
part of why airbench needs so few epochs.

Here it works for any model whose first Conv2d (in module order, `model.named_modules()`)
reads the 3 image channels, with groups 1 and dilation 1: a k x k conv gets the top
out_channels / 2 eigenvectors (by eigenvalue) of the k x k x 3 patch covariance, both signs
(an odd count drops the last negative one); at most 2 x 3 x k x k filters. The covariance is
centered, and a conv with a bias gets bias = -W @ mean, so the output has zero mean and
covariance ~identity over the images it was estimated on. The weight is frozen
(requires_grad False); the bias is trained for `bias_epochs` epochs, then frozen too
(`set_bias_epoch`, called at each epoch's start, so a resumed run does the same).

The patches are read from the images *as the net sees them* (the caller passes them after
the evaluation transforms, i.e. normalized). The result is ordinary weights: a saved model
loads and runs anywhere without this module.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import ParamsError

KEY = "model.whiten"


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first nn.Conv2d in module order, with its name, checked for whitening."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ParamsError(KEY, "the model has no Conv2d layer to initialize by whitening")
    name, m = found
    kh, kw = m.kernel_size
    limit = 2 * m.in_channels * kh * kw
    problems = []
    if m.in_channels != 3:
        problems.append(f"it reads {m.in_channels} channels, not the image's 3")
    if m.groups != 1 or m.dilation != (1, 1):
        problems.append("it is grouped or dilated")
    if m.out_channels > limit:
        problems.append(
            f"it has {m.out_channels} filters and a {kh}x{kw} patch whitening gives at most "
            f"{limit} (2 x 3 x {kh} x {kw}: each eigenvector with both signs)"
        )
    if problems:
        raise ParamsError(KEY, f"the model's first conv '{name}' cannot be whitened: {'; '.join(problems)}")
    return name, m


def patches(images: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Every kh x kw patch (stride 1, no padding) of float images [N, 3, H, W] as rows [P, 3*kh*kw],
    laid out as the conv's weight is (channel, row, column)."""
    cols = F.unfold(images.double(), kernel)  # [N, 3*kh*kw, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def whitening(
    images: torch.Tensor, out_channels: int, kernel: tuple[int, int], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [out_channels, 3, kh, kw], bias [out_channels]) whitening these images' patches."""
    p = patches(images, kernel)
    mean = p.mean(0)
    cov = torch.cov(p.T)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    order = values.argsort(descending=True)
    values, vectors = values[order].clamp(min=0), vectors[:, order]
    half = -(-out_channels // 2)
    scaled = vectors[:, :half].T / torch.sqrt(values[:half, None] + eps)  # [half, d]
    weight = torch.cat([scaled, -scaled])[:out_channels]
    bias = -(weight @ mean)
    return weight.reshape(out_channels, images.shape[1], *kernel).float(), bias.float()


@torch.no_grad()
def apply_whitening(model: nn.Module, images: torch.Tensor, eps: float) -> tuple[str, Optional[nn.Parameter]]:
    """Set the first conv to whiten `images` (float, as the net sees them) and freeze its weight.

    Returns the conv's name and its bias (None without one), which trains until `set_bias_epoch`
    freezes it.
    """
    name, conv = first_conv(model)
    kh, kw = conv.kernel_size  # Conv2d: always two
    weight, bias = whitening(images, conv.out_channels, (kh, kw), eps)
    conv.weight.copy_(weight.to(conv.weight.device))
    conv.weight.requires_grad_(False)
    if conv.bias is None:
        return name, None
    conv_bias = cast(nn.Parameter, conv.bias)  # Conv2d's bias is a Parameter; torch types it Tensor
    conv_bias.copy_(bias.to(conv_bias.device))
    return name, conv_bias if conv_bias.requires_grad else None  # frozen by model.freeze: stays so


def set_bias_epoch(bias: Optional[nn.Parameter], epoch: int, bias_epochs: Optional[int]) -> None:
    """The whitened conv's bias trains during epochs 0..bias_epochs-1 (every epoch with None)."""
    if bias is not None:
        bias.requires_grad_(bias_epochs is None or epoch < bias_epochs)
