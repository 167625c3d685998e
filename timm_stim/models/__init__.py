"""Model zoo: importing this package registers the CIFAR architectures and the `*_stim` models with timm."""
from . import weights
from .cifar_resnet import CIFAR10_MEAN, CIFAR10_STD, CIFAR_ARCHS, BasicBlock, CifarResNet, WideBasicBlock
from .stim_zoo import STIM_BASES, CifarResNetStim, MobileNetV3Stim, ResNetStim

__all__ = [
    'weights', 'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR_ARCHS', 'BasicBlock', 'CifarResNet', 'WideBasicBlock',
    'STIM_BASES', 'CifarResNetStim', 'MobileNetV3Stim', 'ResNetStim',
]
