"""The model chapter's variants from the course notes (002) and the beginner notes (003).

* `modulelist_net`: the course's `nn.ModuleList` example, a stack of linear layers that
  `forward` iterates over (the course stacks 20 Linear(10, 10); here the first takes the
  flattened 3x32x32 image and the last gives the classes).
* `moduledict_net`: the course's `nn.ModuleDict` example: a layer (`conv` or `pool`) and an
  activation (`relu` or `prelu`) chosen by key, then a linear head.
* `beginner_net`: the beginner notes' CIFAR net: conv 3->32->32->64 (5x5, padding 2), each
  followed by a 2x2 max-pool, then fc 1024->64->classes, without activations as written there.

`activation(name)` gives the tutorial's nets (tutorial.py) their activation by name: any
shape-preserving, element-wise activation of `torch.nn` that needs no argument.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.modules import activation as act

#: torch.nn activations that cannot stand in for ReLU, and why.
REFUSED_ACTIVATIONS = {
    "GLU": "it halves a dimension (a gate over two halves), so the next layer's shape breaks",
    "Softmax": "it normalizes across a dimension (a distribution, not an element-wise activation)",
    "Softmin": "it normalizes across a dimension",
    "LogSoftmax": "it normalizes across a dimension",
    "Softmax2d": "it normalizes across channels",
    "AdaptiveLogSoftmaxWithLoss": "it is a loss with its own output layer",
    "MultiheadAttention": "it is an attention layer, not an activation",
    "Threshold": "it needs arguments (threshold, value); use Hardtanh, ReLU or another",
}


def activation_names() -> list[str]:
    """The activation names accepted: torch.nn.modules.activation's classes minus the refused."""
    return sorted(n for n in act.__all__ if isinstance(getattr(act, n), type) and n not in REFUSED_ACTIVATIONS)


def activation(name: str) -> nn.Module:
    """A fresh instance of the torch.nn activation `name` (ReLU, GELU, SiLU, PReLU, Tanh...)."""
    if name in REFUSED_ACTIVATIONS:
        raise ValueError(f"activation {name} cannot be used: {REFUSED_ACTIVATIONS[name]}")
    if name not in activation_names():
        raise ValueError(f"unknown activation {name!r}; choices: {', '.join(activation_names())}")
    return getattr(nn, name)()


class ModuleListNet(nn.Module):
    """`depth` linear layers in an nn.ModuleList, applied in a loop; `activation` between them."""

    def __init__(self, num_classes: int = 10, depth: int = 4, width: int = 256, activation: str = "ReLU"):
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        sizes = [3 * 32 * 32] + [width] * (depth - 1) + [num_classes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.acts = nn.ModuleList(globals()["activation"](activation) for _ in range(depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x


class ModuleDictNet(nn.Module):
    """A layer and an activation picked by key from nn.ModuleDicts, then a linear head."""

    LAYERS = ("conv", "pool")
    ACTIVATIONS = ("relu", "prelu")

    def __init__(self, num_classes: int = 10, choice: str = "conv", act: str = "relu"):
        super().__init__()
        if choice not in self.LAYERS:
            raise ValueError(f"choice must be one of {', '.join(self.LAYERS)}, got {choice!r}")
        if act not in self.ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(self.ACTIVATIONS)}, got {act!r}")
        self.choice, self.act = choice, act
        self.choices = nn.ModuleDict({"conv": nn.Conv2d(3, 10, 3), "pool": nn.MaxPool2d(3)})
        self.activations = nn.ModuleDict({"relu": nn.ReLU(), "prelu": nn.PReLU()})
        features = 10 * 30 * 30 if choice == "conv" else 3 * 10 * 10
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activations[self.act](self.choices[self.choice](x))
        return self.head(torch.flatten(x, 1))


def beginner_net(num_classes: int = 10) -> nn.Sequential:
    """The beginner notes' net: three conv(5x5, pad 2)-maxpool(2) blocks, fc 1024-64-classes."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.Linear(64, num_classes),
    )


MODELS = {"modulelist_net": ModuleListNet, "moduledict_net": ModuleDictNet, "beginner_net": beginner_net}
