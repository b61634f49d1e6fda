"""Training scripts for the reference CNNs (which live in `onnxprune.nets`):

    python -m models.train --arch resnet20 --data fashion-mnist --epochs 10
"""

from onnxprune.nets.cifar import (ARCHS, CifarResNet, CifarVGG, MobileNetV2, build, mobilenetv2, resnet20, resnet56,
                                  vgg16_bn, vgg19_bn)

__all__ = ["ARCHS", "CifarResNet", "CifarVGG", "MobileNetV2", "build", "mobilenetv2", "resnet20",
           "resnet56", "vgg16_bn", "vgg19_bn"]
