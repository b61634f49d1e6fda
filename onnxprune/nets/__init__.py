"""Reference CNNs (CIFAR-style ResNet-20/56, VGG-16/19-BN, MobileNetV2) and their training /
ONNX export (`onnxprune.nets.train`, torch): what `onnxprune demo` trains. The repository's
`models/` keeps the command line (`python -m models.train`)."""

from onnxprune.nets.cifar import (ARCHS, CifarResNet, CifarVGG, MobileNetV2, build, mobilenetv2, resnet20, resnet56,
                                  vgg16_bn, vgg19_bn)

__all__ = ["ARCHS", "CifarResNet", "CifarVGG", "MobileNetV2", "build", "mobilenetv2", "resnet20", "resnet56",
           "vgg16_bn", "vgg19_bn"]
