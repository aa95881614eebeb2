"""PreActResNet-18 (He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual Networks").

The model takes images in pixel space [0, 1] and normalises them itself, per channel, so attacks,
budgets (eps = 8/255) and data never see normalised values. ``width`` scales every stage (64 is the
standard network; 8 or 16 makes a CPU-sized model with the same topology).

The stem (normalisation and the first convolution) always runs in fp32, also inside a bf16
autocast region: bf16 would round the normalised input to a spacing of about 0.25/255 in pixel
units, the size of a small PGD step, so a training attack under autocast would see a perturbation
with a relative error of tens of percent. The stem is about 1 % of the network's arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

# Per-channel statistics of the official training sets (pixel space [0, 1]).
CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Normalize(nn.Module):
    """x -> (x - mean) / std per channel. Buffers are not saved in the state_dict."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1-conv) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 for 32x32 inputs in [0, 1]: (B, 3, 32, 32) -> logits (B, num_classes).

    Example: ``build_model(dataset="cifar10", width=64)`` is the paper's network (11.2 M
    parameters, about 0.56 GMAC per image).
    """

    def __init__(self, num_classes: int, width: int, dataset: str):
        super().__init__()
        mean, std = CHANNEL_STATS[dataset]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            layers.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x):
        """Penultimate features (B, 8*width) of images x in [0, 1]."""
        with torch.autocast(x.device.type, enabled=False):      # the stem in fp32 (module docstring)
            out = self.conv1(self.normalize(x.to(self.conv1.weight.dtype)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def build_model(num_classes: int | None = None, width: int = 64, dataset: str | None = None) -> PreActResNet18:
    """The project's only architecture, with the normalisation statistics of ``dataset``.

    Give ``dataset`` (``cifar10`` or ``cifar100``), or ``num_classes`` alone (10 or 100) and the
    dataset follows from it; a count that matches neither, or that contradicts ``dataset``, is an
    error (a 100-class model never silently gets CIFAR-10's statistics).
    """
    if dataset is None:
        by_count = {n: d for d, n in NUM_CLASSES.items()}
        if num_classes not in by_count:
            raise ConfigError(f"build_model: give dataset= (one of {', '.join(NUM_CLASSES)}); "
                              f"{num_classes} classes match none of them")
        dataset = by_count[num_classes]
    if dataset not in CHANNEL_STATS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(CHANNEL_STATS)}")
    if num_classes is None:
        num_classes = NUM_CLASSES[dataset]
    if num_classes != NUM_CLASSES[dataset]:
        raise ConfigError(f"build_model: {dataset} has {NUM_CLASSES[dataset]} classes, not {num_classes}")
    return PreActResNet18(num_classes=num_classes, width=width, dataset=dataset)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
