"""A transform of your own: the course's salt-and-pepper noise (`- AddPepperNoise: {snr: 0.95, p: 0.5}`).

The course notes (002, 9.3 "User-Defined Transforms") write a transform as a class whose
`__init__` takes its settings and whose `__call__` takes one image and returns one, and
sketch `AddPepperNoise(snr, p)`: with probability `p`, a share `1 - snr` of the pixels
(snr, the signal-to-noise rate, is the share left as they were) turns white (salt) or
black (pepper), half each, all channels of a pixel together.

Registered with `needs="tensor"`: the list hands it an image tensor [C, H, W] (uint8
unless an earlier entry made floats; put it before Normalize), converting a PIL image first.
A transform cifarlab's batch path does not know runs on the per-sample path: train says so
in one log line.
"""

from __future__ import annotations

import torch

from cifarlab.register import register_transform


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)


@register_transform("AddPepperNoise", needs="tensor")
class AddPepperNoise:
    """Salt-and-pepper noise on a share `1 - snr` of the pixels, applied with probability `p`."""

    def __init__(self, snr: float, p: float = 0.9):
        self.snr = _fraction("snr", snr)
        self.p = _fraction("p", p)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand((), device=img.device) >= self.p:
            return img
        u = torch.rand(img.shape[-2:], device=img.device)  # one draw per pixel, shared by its channels
        noise = 1 - self.snr
        white = 1.0 if img.is_floating_point() else torch.iinfo(img.dtype).max
        out = img.clone()
        out[..., u < noise / 2] = white
        out[..., (u >= noise / 2) & (u < noise)] = 0
        return out

    def __repr__(self) -> str:
        return f"AddPepperNoise(snr={self.snr}, p={self.p})"
