"""`cifarlab.resnet8`: the default net, a small residual CNN sized for CIFAR-10 on a 2-core CPU.

Why this shape: the project must reach its accuracy target with the whole pipeline (training
included) in a few minutes on two CPU cores, so every multiply-add has to count. The design
follows the fast CIFAR-10 nets (Page's ResNet-9, Keller Jordan's airbench):

* a cheap conv-bn-relu stem at full resolution (3 input channels make it almost free);
* three stages, each a 3x3 conv that widens the channels, a 2x2 max-pool that halves the
  resolution right away (so the costly layers run on 16x16, 8x8 and 4x4 maps), batch norm and
  ReLU, and in the first and last stage one residual block of two conv-bn-relu layers;
* a global max-pool, a linear head without bias and a fixed logit scale (0.125 as in
  ResNet-9): the head's effective learning rate stays in step with the convs', which lets the
  whole net train with one high learning rate.

Eight convolutions (stem 1, stage 1: 3, stage 2: 1, stage 3: 3) and one linear layer. Every
stage does about the same number of multiply-adds (widths double as the area quarters), and
all the convs are plain 3x3 without bias, which oneDNN runs fastest in channels_last.
`width` is the first stage's channel count; the stem has width/2 and the later stages 2x and 4x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias: the batch norm's shift replaces it), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + f(x) with f two conv-bn-relu layers at constant width and resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class Stage(nn.Sequential):
    """Widen with a 3x3 conv, halve the resolution with a max-pool, then bn-relu (+ residual).

    Pooling right after the conv (before the batch norm) keeps the normalisation and the
    activation on the pooled, 4x smaller map.
    """

    def __init__(self, cin: int, cout: int, residual: bool):
        layers = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        if residual:
            layers.append(Residual(cout))
        super().__init__(*layers)


class ResNet8(nn.Module):
    """The fast default CIFAR-10 net; see the module docstring for the design.

    Args:
        num_classes: size of the output layer (set by the data, 10 for CIFAR-10).
        width: channels of the first stage (stem width/2, later stages 2x and 4x); the
            multiply-adds grow as width**2. 32 trains at about 1,000 images/s on 2 CPU cores.
        logit_scale: fixed multiplier of the logits (ResNet-9's 0.125); 1.0 turns it off.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, logit_scale: float = 0.125):
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 2:
            raise ValueError(f"width must be an integer >= 2, got {width!r}")
        if not isinstance(logit_scale, (int, float)) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
        self.width = width
        self.logit_scale = float(logit_scale)
        self.stem = conv_bn_relu(3, max(width // 2, 1))
        self.stage1 = Stage(max(width // 2, 1), width, residual=True)
        self.stage2 = Stage(width, 2 * width, residual=False)
        self.stage3 = Stage(2 * width, 4 * width, residual=True)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x) * self.logit_scale


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
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet34(nn.Module):
    """ResNet-34 ([3, 4, 6, 3] basic blocks, 64-512 channels) with the usual CIFAR stem.

    A 3x3 stride-1 conv and no max-pool, so the first stage runs at 32x32 (the ImageNet
    stem of the tutorial's `tutorial.resnet34` shrinks 32x32 to 8x8 at once): 21.3 M
    parameters, about 1.16 G multiply-adds per image. This was `tutorial.resnet34` before
    that name became the tutorial's own definition.
    """

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


MODELS = {"resnet8": ResNet8, "resnet34": ResNet34}
