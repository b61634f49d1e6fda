"""Reference PyTorch CNNs for pruning experiments, with a training / ONNX export script.

    python -m models.train --arch resnet20 --data fashion-mnist --epochs 10
"""

from models.cifar import (ARCHS, CifarResNet, CifarVGG, MobileNetV2, build, mobilenetv2,
                          resnet20, resnet56, vgg16_bn, vgg19_bn)

__all__ = ["ARCHS", "CifarResNet", "CifarVGG", "MobileNetV2", "build", "mobilenetv2", "resnet20",
           "resnet56", "vgg16_bn", "vgg19_bn"]
