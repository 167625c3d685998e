"""`*_stim` models: timm residual networks (and the CIFAR ones) with ST++ weights and elastic depth.

`<arch>_stim` is built by `<arch>`'s own timm entrypoint, so it has exactly `<arch>`'s weights layout (timm's
`resnet50` state dict loads strictly into `resnet50_stim`), and then becomes the `ElasticDepthMixin` subclass
of its class (`set_depth`, `list_depths`, `depth_profile`, `export_depth`; no new parameters).

Pretrained tags come from the weights manifest (`weights.py`): every entry `<model>.<tag>` becomes a tag
with a full `hf_hub_id` (`timm-stim/<model>.<tag>`), and `pretrained=True` loads the sha256-checked local
file first, then the Hub copy. The untagged cfgs carry no weights, so `timm.list_pretrained('*_stim*')`
lists exactly the manifest's tags.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import FeatureDictNet, FeatureHookNet, FeatureListNet, generate_default_cfgs, model_entrypoint, \
    register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.mobilenetv3 import MobileNetV3, MobileNetV3Features
from timm.models.resnet import ResNet

from ..depth import _ADAPTERS, Stage, _resnet_block_is_residual, _stage, find_stages, register_adapter
from ..elastic import ElasticDepthMixin, ElasticFeaturesMixin
from .cifar_resnet import CIFAR_ARCHS, CifarResNet, cifar_cfg
from .. import depth_stats
from .weights import find_entry, resolve_pretrained_cfg as resolve_weights, tagged_default_cfgs

__all__ = [
    'ResNetStim', 'MobileNetV3Stim', 'CifarResNetStim', 'FeatureListNetStim', 'FeatureDictNetStim',
    'FeatureHookNetStim', 'MobileNetV3FeaturesStim', 'STIM_BASES',
]


class ResNetStim(ElasticDepthMixin, ResNet):
    """timm `ResNet` / WideResNet with elastic depth (same state dict as `ResNet`)."""


class MobileNetV3Stim(ElasticDepthMixin, MobileNetV3):
    """timm `MobileNetV3` with elastic depth (same state dict as `MobileNetV3`)."""


class CifarResNetStim(ElasticDepthMixin, CifarResNet):
    """`CifarResNet` with elastic depth (same state dict as `CifarResNet`)."""


# `features_only=True` wrappers keep elastic depth: they share the model's stage containers
class FeatureListNetStim(ElasticFeaturesMixin, FeatureListNet):
    """timm `FeatureListNet` of a `*_stim` ResNet / CIFAR ResNet, with elastic depth."""


class FeatureDictNetStim(ElasticFeaturesMixin, FeatureDictNet):
    """timm `FeatureDictNet` (`feature_cls='dict'`) of a `*_stim` ResNet / CIFAR ResNet, with elastic depth."""


class FeatureHookNetStim(ElasticFeaturesMixin, FeatureHookNet):
    """timm `FeatureHookNet` (`feature_cls='hook'`) of a `*_stim` model, with elastic depth."""


class MobileNetV3FeaturesStim(ElasticFeaturesMixin, MobileNetV3Features):
    """timm `MobileNetV3Features` (MobileNetV3 `features_only=True`) with elastic depth."""


@register_adapter(FeatureDictNet, 'ResNet/WideResNet')
def _feature_dict_stages(model: FeatureDictNet) -> List[Stage]:
    """ResNet-layout stages (`layer1`, ...) that a FeatureDictNet / FeatureListNet kept (others were truncated)."""
    names = [n for n in model.keys() if n.startswith('layer') and n[5:].isdigit() and len(model[n])]
    if not names:
        raise TypeError(f'{type(model).__name__} holds no ResNet-layout stage (layer1, ...): elastic depth on a '
                        f'features_only model needs the ResNet / CIFAR ResNet families or a later out_index.')
    return [_stage(n, model[n], [_resnet_block_is_residual(b) for b in model[n]]) for n in names]


@register_adapter(FeatureHookNet, 'ResNet/WideResNet')
def _feature_hook_stages(model: FeatureHookNet) -> List[Stage]:
    """The stages of the wrapped model (`body`), named from the wrapper."""
    return [dataclasses.replace(s, name=f'body.{s.name}') for s in find_stages(model['body'])]


register_adapter(MobileNetV3Features, 'MobileNetV3')(_ADAPTERS[MobileNetV3][1])  # same `blocks` stages

_STIM_CLASSES = {
    ResNet: ResNetStim, MobileNetV3: MobileNetV3Stim, CifarResNet: CifarResNetStim,
    FeatureListNet: FeatureListNetStim, FeatureDictNet: FeatureDictNetStim, FeatureHookNet: FeatureHookNetStim,
    MobileNetV3Features: MobileNetV3FeaturesStim,
}

_STPP = dict(
    paper_ids='arXiv:2305.02507',
    paper_name='Stimulative Training++: Go Beyond The Performance Limits of Residual Networks',
    license='apache-2.0',
    description='Architecture only: no timm-stim weights for this name yet.',
)


def _in1k_cfg(first_conv: str = 'conv1', classifier: str = 'fc', **kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv, 'classifier': classifier, **_STPP, **kwargs,
    }


_MNV3 = dict(first_conv='conv_stem', classifier='classifier')

# the base cfg (no weights) of every `_stim` name; its base architecture is the name without `_stim`
_BASE_CFGS: Dict[str, Dict[str, Any]] = {
    'resnet18_stim': _in1k_cfg(),
    'resnet34_stim': _in1k_cfg(),
    'resnet50_stim': _in1k_cfg(),
    'resnet101_stim': _in1k_cfg(),
    'wide_resnet50_2_stim': _in1k_cfg(),
    'wide_resnet101_2_stim': _in1k_cfg(),
    'mobilenetv3_large_100_stim': _in1k_cfg(**_MNV3),
    'mobilenetv3_small_100_stim': _in1k_cfg(**_MNV3),
    **{f'{name}_stim': cifar_cfg(name, **_STPP) for name in CIFAR_ARCHS},
}
STIM_BASES = {name: name[:-len('_stim')] for name in _BASE_CFGS}

# a name with manifest weights is registered with its tags only (the first is the default, as in timm), so that
# `list_pretrained` shows exactly the tags; a name without weights keeps its untagged, weightless cfg. Entries of
# the CIFAR base names are registered by cifar_resnet.py; any other unknown name is skipped with a warning.
default_cfgs = generate_default_cfgs(tagged_default_cfgs(_BASE_CFGS, others=CIFAR_ARCHS))


def _create_stim(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build `variant` with its base architecture's timm entrypoint and the `_stim` pretrained cfg."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None))
    if pretrained:
        cfg = resolve_weights(cfg)  # verified local file or Hub copy, as `file=` for timm's load_pretrained
    model = model_entrypoint(STIM_BASES[variant])(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    stim_cls = _STIM_CLASSES.get(type(model))
    if stim_cls is not None:  # also the features_only wrappers (fx / getter ones stay timm's, full network)
        model.__class__ = stim_cls
    if pretrained and stim_cls is not None and not kwargs.get('features_only'):
        entry = find_entry(cfg.architecture, cfg.tag)
        hub_id, file = getattr(cfg, 'hf_hub_id', None) or '', getattr(cfg, 'file', None) or ''
        if file and os.path.isdir(file):  # timm's `local-dir:` name: an exported folder
            depth_stats.load_beside(model, f'local-dir:{file}')
        elif entry is not None and entry.num_classes == getattr(model, 'num_classes', None) \
                and (not hub_id or hub_id == entry.hub_id):
            depth_stats.load_into(model, entry)  # per-depth BN statistics: elastic depth with no data
        elif hub_id:  # a Hub repository (`hf-hub:`)
            depth_stats.load_beside(model, hub_id)
    return model


@register_model
def resnet18_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """ResNet-18 (timm `resnet18` layout) with ST++ weights and elastic depth."""
    return _create_stim('resnet18_stim', pretrained, **kwargs)


@register_model
def resnet34_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """ResNet-34 (timm `resnet34` layout) with ST++ weights and elastic depth."""
    return _create_stim('resnet34_stim', pretrained, **kwargs)


@register_model
def resnet50_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """ResNet-50 (timm `resnet50` layout) with ST++ weights and elastic depth."""
    return _create_stim('resnet50_stim', pretrained, **kwargs)


@register_model
def resnet101_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """ResNet-101 (timm `resnet101` layout) with ST++ weights and elastic depth."""
    return _create_stim('resnet101_stim', pretrained, **kwargs)


@register_model
def wide_resnet50_2_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """Wide ResNet-50-2 (timm `wide_resnet50_2` layout) with ST++ weights and elastic depth."""
    return _create_stim('wide_resnet50_2_stim', pretrained, **kwargs)


@register_model
def wide_resnet101_2_stim(pretrained: bool = False, **kwargs) -> ResNetStim:
    """Wide ResNet-101-2 (timm `wide_resnet101_2` layout) with ST++ weights and elastic depth."""
    return _create_stim('wide_resnet101_2_stim', pretrained, **kwargs)


@register_model
def mobilenetv3_large_100_stim(pretrained: bool = False, **kwargs) -> MobileNetV3Stim:
    """MobileNetV3-Large 1.0 (timm `mobilenetv3_large_100` layout) with ST++ weights and elastic depth."""
    return _create_stim('mobilenetv3_large_100_stim', pretrained, **kwargs)


@register_model
def mobilenetv3_small_100_stim(pretrained: bool = False, **kwargs) -> MobileNetV3Stim:
    """MobileNetV3-Small 1.0 (timm `mobilenetv3_small_100` layout) with ST++ weights and elastic depth."""
    return _create_stim('mobilenetv3_small_100_stim', pretrained, **kwargs)


@register_model
def cifar_resnet8_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-8 (`cifar_resnet8` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet8_stim', pretrained, **kwargs)


@register_model
def cifar_resnet14_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-14 (`cifar_resnet14` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet14_stim', pretrained, **kwargs)


@register_model
def cifar_resnet20_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-20 (`cifar_resnet20` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet20_stim', pretrained, **kwargs)


@register_model
def cifar_resnet32_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-32 (`cifar_resnet32` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet32_stim', pretrained, **kwargs)


@register_model
def cifar_resnet44_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-44 (`cifar_resnet44` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet44_stim', pretrained, **kwargs)


@register_model
def cifar_resnet56_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-56 (`cifar_resnet56` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet56_stim', pretrained, **kwargs)


@register_model
def cifar_resnet110_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR ResNet-110 (`cifar_resnet110` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_resnet110_stim', pretrained, **kwargs)


@register_model
def cifar_wrn16_4_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR WRN-16-4 (`cifar_wrn16_4` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_wrn16_4_stim', pretrained, **kwargs)


@register_model
def cifar_wrn28_10_stim(pretrained: bool = False, **kwargs) -> CifarResNetStim:
    """CIFAR WRN-28-10 (`cifar_wrn28_10` layout) with ST++ weights and elastic depth."""
    return _create_stim('cifar_wrn28_10_stim', pretrained, **kwargs)
