"""The tutorial's own models (chapter 2), kept layer for layer so its examples still apply.

* `net`: the classic LeNet-style `Net` of the PyTorch CIFAR-10 tutorial, written as a module
  with named attributes (conv1, pool1, conv2, pool2, fc1, fc2, fc3), so parameter-name prefixes
  such as the finetuning example's `fc3` (a 10x learning rate for the last layer) or
  `model.freeze: [conv1, conv2]` work.
* `net_sequential`: the same network as one `nn.Sequential` (layers named 0, 1, 2, ...), the
  tutorial's second way of writing it.
* `net_ordereddict`: the same network as an `nn.Sequential` of an `OrderedDict` of named
  layers, the third way: the names come back (conv1 ... fc3), so the same prefixes work.
* `alexnet` and `resnet34`: the tutorial's bigger models, made for 32x32 inputs: AlexNet's
  11x11 stride-4 first conv becomes 3x3 stride 2 and its classifier takes the 2x2x256 map;
  ResNet-34 keeps its [3, 4, 6, 3] basic blocks but starts with a 3x3 stride-1 conv and no
  max-pool, the usual CIFAR stem (the ImageNet stem would shrink 32x32 to 8x8 at once).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """conv(3->6, 5x5) pool conv(6->16, 5x5) pool fc(400->120) fc(120->84) fc(84->classes)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _lenet_layers(num_classes: int) -> list[tuple[str, nn.Module]]:
    """Net's layers in order, named as in `Net` (activations get their own names)."""
    return [
        ("conv1", nn.Conv2d(3, 6, 5)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * 5 * 5, 120)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)),
        ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, num_classes)),
    ]


def net_sequential(num_classes: int = 10) -> nn.Sequential:
    """Net as a plain nn.Sequential: parameters are named by position (0.weight, 3.weight...)."""
    return nn.Sequential(*(layer for _, layer in _lenet_layers(num_classes)))


def net_ordereddict(num_classes: int = 10) -> nn.Sequential:
    """Net as nn.Sequential(OrderedDict(...)): positional, but with Net's layer names."""
    return nn.Sequential(OrderedDict(_lenet_layers(num_classes)))


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


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet34(nn.Module):
    """ResNet-34 ([3, 4, 6, 3] basic blocks, 64-512 channels) with a 32x32 stem."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for i, (cout, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, cout, stride if j == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS = {
    "net": Net,
    "net_sequential": net_sequential,
    "net_ordereddict": net_ordereddict,
    "alexnet": AlexNet,
    "resnet34": ResNet34,
}
