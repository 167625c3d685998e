"""Model zoo: importing this package registers the CIFAR architectures and the `*_stim` models with timm."""
from .cifar_resnet import CifarResNet, BasicBlock, WideBasicBlock, CIFAR_ARCHS, CIFAR10_MEAN, CIFAR10_STD
from .stim_zoo import ResNetStim, MobileNetV3Stim, CifarResNetStim, STIM_BASES
from . import weights
