"""A model of your own: the beginner notes' CIFAR net, as the notes write it (`model.name: user.my_nn`).

The beginner notes (003, the section that puts the CIFAR-10 net together) define a class
`my_nn` that holds one `nn.Sequential` as `self.model`: conv 3->32->32->64 (5x5, padding
2), each followed by a 2x2 max-pool, then flatten and fc 1024->64->10. cifarlab's
`tutorial.beginner_net` is the same stack as a bare `nn.Sequential`; this copy keeps the
notes' class, so its weights are named as theirs are (`model.0.weight`, ...) and a state
dict saved by the notes' script loads into it (`model.pretrained`). It also shows a keyword
argument of your own: `model.user.my_nn.relu: true` adds the ReLUs the notes leave out
(the layer numbers then shift, so the notes' weights load only without them).
"""

from __future__ import annotations

import torch
from torch import nn

from cifarlab.register import register_model


@register_model("my_nn")
class MyNN(nn.Module):
    """conv(3->32) pool conv(32->32) pool conv(32->64) pool flatten fc(1024->64) fc(64->classes)."""

    def __init__(self, num_classes: int = 10, relu: bool = False):
        super().__init__()
        if not isinstance(relu, bool):
            raise ValueError(f"relu must be true or false, got {relu!r}")

        def act() -> list[nn.Module]:
            return [nn.ReLU()] if relu else []

        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.MaxPool2d(2),
            *act(),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            *act(),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            *act(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            *act(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
