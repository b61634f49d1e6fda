"""Reference CNNs for 28x28 to 32x32 inputs (CIFAR / Fashion-MNIST sized), any channel count.

- ResNet-20 / ResNet-56 (He et al., 2016, CIFAR variant): 3 stages of 16 / 32 / 64 channels,
  BasicBlocks; where a block changes shape its shortcut is a 1x1 Conv + BatchNorm ("option B"),
  so that the residual Add joins two prunable producers in ONNX (option A's zero padding would
  leave a Pad/Slice structure with nothing to prune).
- VGG-16-BN / VGG-19-BN (CIFAR variant): 3x3 Conv-BN-ReLU stacks, 5 max pools with ceil_mode (so a
  28x28 input still ends at 1x1), global average pool, one Linear classifier.
- MobileNetV2 (Sandler et al., 2018) with the stem and the second stage at stride 1 for small
  inputs (32x32 -> 4x4 before the last 1x1 conv), ReLU6 (exported as Clip).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["ARCHS", "BasicBlock", "CifarResNet", "CifarVGG", "MobileNetV2", "build",
           "mobilenetv2", "resnet20", "resnet56", "vgg16_bn", "vgg19_bn"]


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU; option-B shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (N, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: stem 3x3 conv, stages of n blocks at 16/32/64 channels."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, planes in enumerate(widths):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layer1 = nn.Sequential(*layers[:n])
        self.layer2 = nn.Sequential(*layers[n:2 * n])
        self.layer3 = nn.Sequential(*layers[2 * n:])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)
        nn.init.kaiming_uniform_(self.fc.weight, a=5 ** 0.5)  # PyTorch's default Linear init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64)
        return self.fc(x)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27 M parameters, 41 M MACs at 32x32x3)."""
    return CifarResNet(20, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.86 M parameters, 127 M MACs at 32x32x3)."""
    return CifarResNet(56, in_channels, num_classes)


# ------------------------------------------------------------------------------------------- VGG

_VGG_CFGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small images: conv stack, global average pool, one Linear."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in _VGG_CFGS:
            raise ValueError(f"VGG depth must be one of {sorted(_VGG_CFGS)}, got {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 1, 1) for 28..32 px inputs
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512)
        return self.classifier(x)


def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> CifarVGG:
    """VGG-16-BN, CIFAR variant (14.7 M parameters, 313 M MACs at 32x32x3)."""
    return CifarVGG(16, in_channels, num_classes)


def vgg19_bn(in_channels: int = 3, num_classes: int = 10) -> CifarVGG:
    """VGG-19-BN, CIFAR variant (20.0 M parameters, 399 M MACs at 32x32x3)."""
    return CifarVGG(19, in_channels, num_classes)


# ----------------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (t) -> 3x3 depthwise (stride) -> 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 28..32 px inputs: stem and stage 2 at stride 1 (total stride 8)."""

    # (expansion t, channels c, repeats n, stride s); ImageNet has s=2 in the stem and stage 2.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, cin, 3, 1)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu6(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1280, H/8, W/8)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1280)
        return self.classifier(self.dropout(x))


def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 1.0x for small inputs (2.2 M parameters, 94 M MACs at 32x32x3)."""
    return MobileNetV2(in_channels, num_classes)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "mobilenetv2": mobilenetv2,
}


def build(arch: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Build `arch` (a key of `ARCHS`, '-' and '_' interchangeable) with fresh weights."""
    key = arch.lower().replace("-", "_")
    key = {"vgg16": "vgg16_bn", "vgg19": "vgg19_bn", "mobilenet_v2": "mobilenetv2"}.get(key, key)
    if key not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    return ARCHS[key](in_channels=in_channels, num_classes=num_classes)
