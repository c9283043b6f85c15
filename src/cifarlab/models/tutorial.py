"""The tutorial's own models (chapter 2), kept layer for layer so its examples still apply.

* `net`: the classic LeNet-style `Net` of the PyTorch CIFAR-10 tutorial, written as a module
  with named attributes (conv1, pool1, conv2, pool2, fc1, fc2, fc3), so parameter-name prefixes
  such as the finetuning example's `fc3` (a 10x learning rate for the last layer) or
  `model.freeze: [conv1, conv2]` work.
* `net_sequential`: the same network as one `nn.Sequential` (layers named 0, 1, 2, ...), the
  tutorial's second way of writing it.
* `net_ordereddict`: the same network as an `nn.Sequential` of an `OrderedDict` of named
  layers, the third way: the names come back (conv1 ... fc3), so the same prefixes work.
* `alexnet`: the tutorial's AlexNet made for 32x32 inputs: its 11x11 stride-4 first conv
  becomes 3x3 stride 2 and its classifier takes the 2x2x256 map.
* `resnet34`: the tutorial's ResNet-34 exactly (`pre`, `layer1`..`layer4` of
  `ResidualBlock`s with `left` and `right`, `fc`; 46,998,090 parameters), with an adaptive
  final pooling as the only change. The CIFAR-stem ResNet-34 that used to be here is
  `cifarlab.resnet34` (models/cifar.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.models.course import activation as make_activation


class Net(nn.Module):
    """conv(3->6, 5x5) pool conv(6->16, 5x5) pool fc(400->120) fc(120->84) fc(84->classes).

    `activation`: the torch.nn activation after each conv and hidden fc (ReLU as in the
    tutorial; any shape-preserving one by name: GELU, SiLU, PReLU, Tanh...), held as
    `act1`..`act4` so the layer names stay the tutorial's.
    """

    def __init__(self, num_classes: int = 10, activation: str = "ReLU"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act1, self.act2, self.act3, self.act4 = (make_activation(activation) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act3(self.fc1(x))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


def _lenet_layers(num_classes: int, activation: str = "ReLU") -> list[tuple[str, nn.Module]]:
    """Net's layers in order, named as in `Net` (activations get their own names)."""
    return [
        ("conv1", nn.Conv2d(3, 6, 5)),
        ("relu1", make_activation(activation)),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("relu2", make_activation(activation)),
        ("pool2", nn.MaxPool2d(2, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * 5 * 5, 120)),
        ("relu3", make_activation(activation)),
        ("fc2", nn.Linear(120, 84)),
        ("relu4", make_activation(activation)),
        ("fc3", nn.Linear(84, num_classes)),
    ]


def net_sequential(num_classes: int = 10, activation: str = "ReLU") -> nn.Sequential:
    """Net as a plain nn.Sequential: parameters are named by position (0.weight, 3.weight...)."""
    return nn.Sequential(*(layer for _, layer in _lenet_layers(num_classes, activation)))


def net_ordereddict(num_classes: int = 10, activation: str = "ReLU") -> nn.Sequential:
    """Net as nn.Sequential(OrderedDict(...)): positional, but with Net's layer names."""
    return nn.Sequential(OrderedDict(_lenet_layers(num_classes, activation)))


class AlexNet(nn.Module):
    """AlexNet for 32x32 inputs: five convs (64, 192, 384, 256, 256) and a 4096-4096 classifier.

    32 -> 16 (stride-2 conv) -> 8 -> 4 -> 2 after the three max-pools, so the classifier sees
    256 x 2 x 2 features.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(64, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 2 * 2, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ResidualBlock(nn.Module):
    """The tutorial's residual block: `left` (conv-bn-relu-conv-bn, 3x3) plus `right`.

    `right` is the shortcut: None for the identity, or the 1x1 conv-bn projection that
    `_make_layer` gives the first block of a stage. The sum goes through a ReLU.
    """

    def __init__(self, inchannel: int, outchannel: int, stride: int = 1, shortcut: Optional[nn.Module] = None):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(inchannel, outchannel, 3, stride, 1, bias=False),
            nn.BatchNorm2d(outchannel),
            nn.ReLU(inplace=True),
            nn.Conv2d(outchannel, outchannel, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outchannel),
        )
        self.right = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.right is None else self.right(x)
        return F.relu(self.left(x) + identity)


class ResNet34(nn.Module):
    """The tutorial's ResNet-34 (chapter 2.1), layer for layer and name for name.

    `pre`: 7x7 stride-2 conv (3->64, no bias), batch norm, ReLU, 3x3 stride-2 max-pool;
    `layer1`..`layer4`: `_make_layer` stages of 3, 4, 6 and 3 `ResidualBlock`s at
    64->128, 128->256 (stride 2), 256->512 (stride 2) and 512->512 (stride 2), the first
    block of each with a 1x1 conv-bn shortcut (`right`); `fc`: 512 -> classes.
    46,998,090 parameters at 10 classes, so a state dict saved from the tutorial's
    definition loads here with every tensor.

    The one change a 32x32 input forces: the tutorial pools the last map with
    `avg_pool2d(x, 7)`, made for 224x224 inputs (a 7x7 map). At 32x32 the stem leaves 8x8
    and the three stride-2 stages 1x1, where a 7x7 window does not fit, so the final pooling
    is adaptive (`AdaptiveAvgPool2d(1)`): the same average over whatever map is left, with
    no parameters, so the names and shapes are unchanged.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = self._make_layer(64, 128, 3)
        self.layer2 = self._make_layer(128, 256, 4, stride=2)
        self.layer3 = self._make_layer(256, 512, 6, stride=2)
        self.layer4 = self._make_layer(512, 512, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _make_layer(inchannel: int, outchannel: int, block_num: int, stride: int = 1) -> nn.Sequential:
        """One stage: a block with a 1x1 conv-bn shortcut, then block_num - 1 identity blocks."""
        shortcut = nn.Sequential(
            nn.Conv2d(inchannel, outchannel, 1, stride, bias=False),
            nn.BatchNorm2d(outchannel),
        )
        blocks = [ResidualBlock(inchannel, outchannel, stride, shortcut)]
        blocks += [ResidualBlock(outchannel, outchannel) for _ in range(1, block_num)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.pre(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS = {
    "net": Net,
    "net_sequential": net_sequential,
    "net_ordereddict": net_ordereddict,
    "alexnet": AlexNet,
    "resnet34": ResNet34,
}
