"""The reference CNNs live in `onnxprune.nets.cifar` (the tool's demo needs them); this name is
kept for the training scripts and saved state dicts that refer to `models.cifar`."""

from onnxprune.nets.cifar import (ARCHS, CifarResNet, CifarVGG, MobileNetV2, build, mobilenetv2, resnet20, resnet56,
                                  vgg16_bn, vgg19_bn)

__all__ = ["ARCHS", "CifarResNet", "CifarVGG", "MobileNetV2", "build", "mobilenetv2", "resnet20", "resnet56",
           "vgg16_bn", "vgg19_bn"]
