"""CIFAR ResNets and Wide ResNets in timm's style (timm has none).

* ResNet-8/14/20/32/44/56/110 (He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385 §4.2):
  3x3 stem conv (16 channels), no max-pool, three stages of 16/32/64 channels with n BasicBlocks each
  (depth 6n+2). Post-activation blocks; the first block of stages 2 and 3 downsamples with a 1x1 conv + BN
  projection shortcut ("option B"), every other block has an identity shortcut.
* WRN-16-4 and WRN-28-10 (Zagoruyko & Komodakis, "Wide Residual Networks", arXiv:1605.07146): 3x3 stem conv
  (16 channels), three stages of 16k/32k/64k channels with (depth-4)/6 pre-activation wide basic blocks each
  (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3), a 1x1 conv projection shortcut where the width or stride changes,
  and a final BN-ReLU before pooling.

Registered (non-`_stim`) names, chosen not to collide with timm's: `cifar_resnet8`, `cifar_resnet14`,
`cifar_resnet20`, `cifar_resnet32`, `cifar_resnet44`, `cifar_resnet56`, `cifar_resnet110`, `cifar_wrn16_4`,
`cifar_wrn28_10` (ResNet-8 and -14 are ResNet-20's (1,1,1) and (2,2,2) sub-networks, to train alone). They carry no
pretrained weights; the trained ones are the `*_stim` names in `stim_zoo.py`.

The three stages are `layer1..layer3`, plain `nn.Sequential` containers, so that `timm_stim.subnetwork` can
run a sub-network by removing trailing blocks for one pass. Block discovery: the first block of every stage
is kept, a block is droppable when it has an identity shortcut (`downsample is None`).
"""
# no `from __future__ import annotations`: FX (torchvision feature extraction) copies forward()'s annotations
# into its generated code, and TorchScript cannot resolve them as strings (`Unknown type name '_torch_Tensor_'`)

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..depth import Stage, _stage, register_adapter
from .weights import resolve_pretrained_cfg as resolve_weights, tagged_default_cfgs

__all__ = ['CifarResNet', 'BasicBlock', 'WideBasicBlock', 'CIFAR10_MEAN', 'CIFAR10_STD']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """Post-activation basic block (conv-BN-ReLU-conv-BN, add, ReLU) with an option-B projection shortcut."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            drop_rate: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            **dd,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(out_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.act2 = act_layer(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd), norm_layer(out_chs, **dd))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop(x)
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(self.drop_path(x) + shortcut)


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv-BN-ReLU-dropout-conv, add), arXiv:1605.07146."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            drop_rate: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            **dd,
    ):
        super().__init__()
        self.bn1 = norm_layer(in_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.act2 = act_layer(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        # the projection shortcut sees the pre-activated input, the identity shortcut the raw input
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.drop(self.act2(self.bn2(out)))
        out = self.conv2(out)
        return self.drop_path(out) + shortcut


_BLOCKS = {'basic': BasicBlock, 'wide': WideBasicBlock}


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, three stages (`layer1..layer3`), global pool, `fc`.

    `block='basic'` gives the post-activation CIFAR ResNets (arXiv:1512.03385), `block='wide'` the
    pre-activation Wide ResNets (arXiv:1605.07146), which add a final BN-ReLU (`norm`, `act`).
    """

    def __init__(
            self,
            layers: Sequence[int] = (3, 3, 3),
            block: str = 'basic',
            channels: Sequence[int] = (16, 32, 64),
            stem_width: int = 16,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            block_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            layers: blocks per stage.
            block: 'basic' (post-activation ResNet block) or 'wide' (pre-activation wide block).
            channels: output channels of the three stages.
            stem_width: output channels of the 3x3 stem conv.
            num_classes: classifier outputs (0 for none).
            in_chans: input channels.
            global_pool: timm pooling type ('avg', 'max', 'avgmax', 'catavgmax', '').
            drop_rate: dropout before the classifier.
            block_drop_rate: dropout between the two convs of every block (WRN's dropout).
            drop_path_rate: stochastic depth rate, linearly increasing over blocks.
            zero_init_last: zero-init the last BN of every post-activation block.
        """
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f'block={block!r}: expected one of {sorted(_BLOCKS)}.')
        if len(layers) != 3 or len(channels) != 3 or min(layers) < 1:
            raise ValueError(f'CifarResNet has three stages with at least one block each; got layers={layers}, '
                             f'channels={channels}.')
        dd = {'device': device, 'dtype': dtype}
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        block_cls = _BLOCKS[block]
        self.preact = block == 'wide'
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        # stem: a single 3x3 conv; post-activation nets add BN-ReLU, pre-activation ones leave it to block 1
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = nn.Identity() if self.preact else norm_layer(stem_width, **dd)
        self.act1 = nn.Identity() if self.preact else act_layer(inplace=True)
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=stem_width, reduction=1, module='conv1' if self.preact else 'act1')]

        total = sum(layers)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        in_chs, reduction, idx = stem_width, 1, 0
        for i, (n, out_chs) in enumerate(zip(layers, channels)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(n):
                blocks.append(block_cls(
                    in_chs, out_chs, stride=stride if j == 0 else 1, drop_rate=block_drop_rate,
                    drop_path=dpr[idx], act_layer=act_layer, norm_layer=norm_layer, **dd))
                in_chs, idx = out_chs, idx + 1
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'layer{i + 1}'))

        # pre-activation nets end with BN-ReLU; the last feature is taken after it
        self.norm = norm_layer(in_chs, **dd) if self.preact else nn.Identity()
        self.act = act_layer(inplace=True) if self.preact else nn.Identity()
        if self.preact:
            self.feature_info[-1]['module'] = 'act'

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1|bn1',
            blocks=[(r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        p = next(self.parameters())
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, device=p.device, dtype=p.dtype)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.layer1, x)
            x = checkpoint_seq(self.layer2, x)
            x = checkpoint_seq(self.layer3, x)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return self.act(self.norm(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem and the three stages (timm's intermediates API; indices as in feature_info).

        As timm's ResNet, the stage outputs are returned as they are; `norm=True` applies the final BN-ReLU of the
        pre-activation nets to the last one. The returned final map is normalised when the last stage ran.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f'output_fmt={output_fmt!r}: only NCHW is supported.')
        take_indices, max_index = feature_take_indices(4, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        names = ('layer1', 'layer2', 'layer3')[:max_index] if stop_early else ('layer1', 'layer2', 'layer3')
        feat_idx = 0
        for feat_idx, name in enumerate(names, 1):
            layer = getattr(self, name)
            x = checkpoint_seq(layer, x) if self.grad_checkpointing and not torch.jit.is_scripting() else layer(x)
            if feat_idx in take_indices:
                intermediates.append(self.act(self.norm(x)) if norm and feat_idx == 3 else x)
        if intermediates_only:
            return intermediates
        if feat_idx == 3:
            x = self.act(self.norm(x))
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Remove the stages (and final norm, head) that the intermediates at `indices` do not need (timm's API)."""
        take_indices, max_index = feature_take_indices(4, indices)
        for name in ('layer1', 'layer2', 'layer3')[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, as timm's ResNet: forward passes straight through
        prune_end = max_index < 3
        if prune_norm or prune_end:  # the final BN-ReLU (pre-activation nets) follows the last stage
            self.norm, self.act = nn.Identity(), nn.Identity()
        if prune_end:  # the features now end at the last kept tap; the head sized for the final ones goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


@register_adapter(CifarResNet, 'CifarResNet')
def _cifar_stages(model: CifarResNet) -> List[Stage]:
    """Stages layer1..layer3 (those not pruned away); a block is droppable when its shortcut is the identity."""
    layers = [(n, getattr(model, n)) for n in ('layer1', 'layer2', 'layer3')]
    return [_stage(n, layer, [b.downsample is None for b in layer]) for n, layer in layers if len(layer)]


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    if pretrained:  # a manifest tag (e.g. a released baseline): verified local file or Hub copy, as `file=`
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.pop('pretrained_cfg', None),
                                     pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None))
        kwargs['pretrained_cfg'] = resolve_weights(cfg)
    return build_model_with_cfg(
        CifarResNet, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        **kwargs,
    }


_RESNET_PAPER = dict(paper_ids='arXiv:1512.03385', paper_name='Deep Residual Learning for Image Recognition')
_WRN_PAPER = dict(paper_ids='arXiv:1605.07146', paper_name='Wide Residual Networks')

# architecture arguments of every CIFAR variant, shared with the `_stim` registrations
CIFAR_ARCHS: Dict[str, Dict[str, Any]] = {
    'cifar_resnet8': dict(layers=(1, 1, 1)),
    'cifar_resnet14': dict(layers=(2, 2, 2)),
    'cifar_resnet20': dict(layers=(3, 3, 3)),
    'cifar_resnet32': dict(layers=(5, 5, 5)),
    'cifar_resnet44': dict(layers=(7, 7, 7)),
    'cifar_resnet56': dict(layers=(9, 9, 9)),
    'cifar_resnet110': dict(layers=(18, 18, 18)),
    'cifar_wrn16_4': dict(layers=(2, 2, 2), block='wide', channels=(64, 128, 256)),
    'cifar_wrn28_10': dict(layers=(4, 4, 4), block='wide', channels=(160, 320, 640)),
}


def cifar_cfg(name: str, **kwargs) -> Dict[str, Any]:
    """Base pretrained cfg (no weights) of CIFAR architecture `name`; `kwargs` override any field."""
    return _cfg(**{**(_WRN_PAPER if 'wrn' in name else _RESNET_PAPER), **kwargs})


# released baselines are manifest tags of these names (see weights.py); without weights the cfgs carry none
default_cfgs = generate_default_cfgs(tagged_default_cfgs({name: cifar_cfg(name) for name in CIFAR_ARCHS}))


def _entry(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> CifarResNet:
    return _create_cifar_resnet(name, pretrained, **dict(CIFAR_ARCHS[name], **kwargs))


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 for CIFAR, arXiv:1512.03385 (ResNet-20's (1,1,1) sub-network, trained alone)."""
    return _entry('cifar_resnet8', pretrained, kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-14 for CIFAR, arXiv:1512.03385 (ResNet-20's (2,2,2) sub-network, trained alone)."""
    return _entry('cifar_resnet14', pretrained, kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M params), arXiv:1512.03385."""
    return _entry('cifar_resnet20', pretrained, kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR, arXiv:1512.03385."""
    return _entry('cifar_resnet32', pretrained, kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR, arXiv:1512.03385."""
    return _entry('cifar_resnet44', pretrained, kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR, arXiv:1512.03385."""
    return _entry('cifar_resnet56', pretrained, kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR, arXiv:1512.03385."""
    return _entry('cifar_resnet110', pretrained, kwargs)


@register_model
def cifar_wrn16_4(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Wide ResNet-16-4 for CIFAR (dropout via `block_drop_rate`), arXiv:1605.07146."""
    return _entry('cifar_wrn16_4', pretrained, kwargs)


@register_model
def cifar_wrn28_10(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Wide ResNet-28-10 for CIFAR (dropout via `block_drop_rate`), arXiv:1605.07146."""
    return _entry('cifar_wrn28_10', pretrained, kwargs)
