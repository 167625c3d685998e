"""Stages, droppable residual blocks and sub-network execution for timm models.

A sub-network keeps a *prefix* of every stage's blocks (ST, arXiv:2210.04153 §3; ST++ arXiv:2305.02507 §3):
blocks are dropped from the end of a stage, the first block of a stage is never dropped, and only blocks with
an identity shortcut can go. A sub-network is run by changing what each stage container iterates over for the
duration of one pass (no hooks, no weight copies), so state-dict keys stay identical to timm's and the
skipped blocks neither run nor touch their BatchNorm statistics.
"""
from __future__ import annotations

import copy
import itertools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils.model import unwrap_model

__all__ = [
    'Stage', 'find_stages', 'register_adapter', 'supported_families', 'full_depths', 'depth_ranges',
    'check_depths', 'subnetwork', 'run_subnetworks', 'MultiDepthForward', 'compile_blocks', 'valid_depths',
    'export_subnetwork', 'recalibrate_bn',
]

Depths = Tuple[int, ...]


@dataclass(frozen=True)
class Stage:
    """One stage: `container` holds the stage's blocks at positions `start .. start + len(blocks) - 1`.

    `min_depth` is the fewest blocks a sub-network may keep: the first block, plus every block up to the
    last one without an identity shortcut.
    """
    name: str
    container: nn.Module
    start: int
    num_blocks: int
    min_depth: int

    @property
    def droppable(self) -> int:
        return self.num_blocks - self.min_depth


def _stage(name: str, container: nn.Module, residual: Sequence[bool], start: int = 0) -> Stage:
    """Build a Stage from per-block 'has identity shortcut' flags (the first block is never dropped)."""
    min_depth = 1
    for i, res in enumerate(residual):
        if i > 0 and not res:
            min_depth = i + 1
    return Stage(name, container, start, len(residual), min_depth)


# ---------------------------------------------------------------------------------------------- adapters
# One small adapter per family: model -> list of Stage. Looked up by class (most derived first).

_ADAPTERS: Dict[type, Tuple[str, Callable[[nn.Module], List[Stage]]]] = {}


def register_adapter(cls: type, family: str) -> Callable:
    """Decorator registering `fn(model) -> List[Stage]` as the block-discovery adapter for `cls`."""
    def deco(fn: Callable[[nn.Module], List[Stage]]) -> Callable[[nn.Module], List[Stage]]:
        _ADAPTERS[cls] = (family, fn)
        return fn
    return deco


def supported_families() -> List[str]:
    return sorted({family for family, _ in _ADAPTERS.values()})


def _resnet_block_is_residual(block: nn.Module) -> bool:
    """A BasicBlock / Bottleneck has an identity shortcut when it has no downsample and no stride."""
    strides = [max(m.stride) for m in block.modules() if isinstance(m, nn.Conv2d)]
    return getattr(block, 'downsample', None) is None and max(strides, default=1) == 1


def _register_timm_adapters() -> None:
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    @register_adapter(ResNet, 'ResNet/WideResNet')
    def _resnet(model: nn.Module) -> List[Stage]:
        names = [f'layer{i}' for i in range(1, 5) if hasattr(model, f'layer{i}')]
        return [_stage(n, getattr(model, n), [_resnet_block_is_residual(b) for b in getattr(model, n)])
                for n in names]

    def _efficientnet(model: nn.Module) -> List[Stage]:
        return [_stage(f'blocks.{i}', s, [bool(getattr(b, 'has_skip', False)) for b in s])
                for i, s in enumerate(model.blocks)]

    register_adapter(EfficientNet, 'EfficientNet')(_efficientnet)
    register_adapter(MobileNetV3, 'MobileNetV3')(_efficientnet)

    @register_adapter(ConvNeXt, 'ConvNeXt')
    def _convnext(model: nn.Module) -> List[Stage]:
        return [_stage(f'stages.{i}.blocks', s.blocks, [True] * len(s.blocks)) for i, s in enumerate(model.stages)]

    @register_adapter(VisionTransformer, 'ViT')
    def _vit(model: nn.Module) -> List[Stage]:
        return [_stage('blocks', model.blocks, [True] * len(model.blocks))]


_register_timm_adapters()


def find_stages(model: nn.Module, require_droppable: bool = True) -> List[Stage]:
    """Return the stages of a timm model with, per stage, how many trailing blocks can be dropped.

    Raises TypeError for an unsupported family, or (with `require_droppable`, what training needs) a model with
    no droppable residual block.
    """
    model = unwrap_model(model)
    for cls in type(model).__mro__:
        if cls in _ADAPTERS:
            family, fn = _ADAPTERS[cls]
            stages = fn(model)
            if require_droppable and not any(s.droppable for s in stages):
                raise TypeError(
                    f'{type(model).__name__} ({family}) has no droppable residual block (identity shortcut, not '
                    f'the first block of its stage): Stimulative Training needs at least one.')
            return stages
    raise TypeError(
        f'{type(model).__name__} is not a supported residual network. Supported families: '
        f'{", ".join(supported_families())}. Register an adapter with timm_stim.depth.register_adapter.')


def full_depths(model_or_stages: Union[nn.Module, Sequence[Stage]]) -> Depths:
    stages = _as_stages(model_or_stages)
    return tuple(s.num_blocks for s in stages)


def depth_ranges(model_or_stages: Union[nn.Module, Sequence[Stage]]) -> List[Tuple[int, int]]:
    """Per stage, the (fewest, most) blocks a sub-network may keep."""
    return [(s.min_depth, s.num_blocks) for s in _as_stages(model_or_stages)]


def _as_stages(model_or_stages: Union[nn.Module, Sequence[Stage]]) -> List[Stage]:
    if isinstance(model_or_stages, nn.Module):
        return find_stages(model_or_stages, require_droppable=False)
    return list(model_or_stages)


def check_depths(stages: Sequence[Stage], depths: Sequence[int]) -> Depths:
    """Validate a per-stage kept-depth tuple against `stages`; returns it as a tuple of ints."""
    if any(isinstance(d, bool) or int(d) != d for d in depths):
        raise ValueError(f'depths {tuple(depths)} must be integers (blocks kept per stage).')
    depths = tuple(int(d) for d in depths)
    if len(depths) != len(stages):
        raise ValueError(f'depths {depths} has {len(depths)} entries; the model has {len(stages)} stages '
                         f'({[s.name for s in stages]}).')
    for s, d in zip(stages, depths):
        if not s.min_depth <= d <= s.num_blocks:
            raise ValueError(f'stage {s.name} can keep {s.min_depth}..{s.num_blocks} blocks, not {d} '
                             f'(depths={depths}).')
    return depths


@contextmanager
def subnetwork(
        model: nn.Module,
        depths: Optional[Sequence[int]],
        stages: Optional[Sequence[Stage]] = None,
) -> Iterator[nn.Module]:
    """Run `model` as the sub-network keeping `depths[i]` leading blocks of stage i, inside the block.

    The full network is restored on exit, also when the body raises. `depths=None` keeps everything.
    `stages` (from `find_stages(model)`) saves the discovery when running many sub-networks of one model.
    """
    if depths is None:
        yield model
        return
    stages = find_stages(model, require_droppable=False) if stages is None else stages
    depths = check_depths(stages, depths)
    saved = []
    try:
        for s, d in zip(stages, depths):
            if d < s.num_blocks:
                mods = s.container._modules
                saved.append((mods, list(mods.items())))
                for name in list(mods)[s.start + d:s.start + s.num_blocks]:
                    del mods[name]
        yield model
    finally:
        for mods, items in saved:
            mods.clear()
            mods.update(items)


def run_subnetworks(
        model: nn.Module,
        x: torch.Tensor,
        plan: Sequence[Tuple[Sequence[int], Optional[int]]] = (),
) -> List[torch.Tensor]:
    """Full network on `x`, then one pass per (depths, size) in `plan` on `smaller_input(x, size)`.

    Returns [z_main, z_sub_1, ..., z_sub_K]. Every sub-network sees the original batch resized once.
    """
    from .losses import smaller_input
    outputs = [model(x)]
    stages = find_stages(model) if plan else None  # once per step, not once per sub-network
    for depths, size in plan:
        xs = smaller_input(x, size)
        with subnetwork(model, depths, stages):
            try:
                outputs.append(model(xs))
            except (RuntimeError, AssertionError) as e:  # timm's size checks raise AssertionError
                if xs.shape[-1] == x.shape[-1]:
                    raise
                raise ValueError(
                    f'sub-network input {tuple(xs.shape[-2:])} is smaller than {type(model).__name__} accepts '
                    f'({e}); raise the minimum input scale or disable smaller inputs.') from e
    return outputs


class MultiDepthForward(nn.Module):
    """Module running the full network and K sub-networks in one forward, for DDP.

    DDP sees one forward and one backward per step, every parameter used by the full pass, so it works with
    `find_unused_parameters=False`. The child is named `module` so that timm's `unwrap_model` strips it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor, plan: Optional[Sequence[Tuple[Sequence[int], Optional[int]]]] = None
                ) -> Union[torch.Tensor, List[torch.Tensor]]:
        if plan is None:
            return self.module(x)
        return run_subnetworks(self.module, x, plan)


def compile_blocks(model: nn.Module, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> int:
    """`torch.compile` every residual block in place (`nn.Module.compile`: state-dict keys unchanged).

    One graph per block and input shape serves every sub-network (a whole-model compile would recompile for each
    new depth tuple). A model without droppable blocks is compiled whole. Returns the number of compiled modules.
    """
    import torch._dynamo
    compile_kwargs.setdefault('dynamic', False)  # symbolic shapes of resized inputs trip inductor (torch 2.14)
    try:
        stages = find_stages(model)
    except TypeError:
        model.compile(backend=backend, mode=mode, **compile_kwargs)
        return 1
    blocks = [b for s in stages for b in list(s.container.children())[s.start:s.start + s.num_blocks]]
    # blocks of one class share a code object, and each input size is a graph: allow many graphs
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 64)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 64 * len(blocks))
    for block in blocks:
        block.compile(backend=backend, mode=mode, **compile_kwargs)
    return len(blocks)


def valid_depths(model: nn.Module) -> List[Depths]:
    """Every per-stage kept-depth configuration of `model`, full network last."""
    ranges = [range(lo, hi + 1) for lo, hi in depth_ranges(model)]
    return [tuple(c) for c in itertools.product(*ranges)]


def export_subnetwork(model: nn.Module, depths: Sequence[int]) -> nn.Module:
    """A deep copy of `model` with the dropped blocks removed: a plain timm module, scriptable / exportable."""
    model = unwrap_model(model)
    check_depths(find_stages(model), depths)
    sub = copy.deepcopy(model)
    for s, d in zip(find_stages(sub), depths):
        mods = s.container._modules
        for name in list(mods)[s.start + d:s.start + s.num_blocks]:
            del mods[name]
    return sub


@torch.no_grad()
def recalibrate_bn(
        model: Union[nn.Module, Sequence[nn.Module]],
        batches: Iterable,
        num_images: int = 2000,
        depths: Optional[Sequence[int]] = None,
) -> int:
    """Re-estimate BatchNorm running statistics with the (sub-)network on `num_images` images.

    ST (arXiv:2210.04153) re-estimates BN after every epoch because sub-network passes disturb the running
    statistics. Statistics are reset, then set to the exact (equal-weight) average of the per-batch statistics
    (momentum=None); the last batch is trimmed so that exactly `num_images` images are seen when available.
    `model` may be a list (e.g. the trained model and its EMA): every model sees the same batches. Batches are
    tensors or (input, target) tuples. Returns the number of images used.
    """
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}.')
    models = [model] if isinstance(model, nn.Module) else list(model)
    with ExitStack() as stack:
        # only the BN layers a (sub-)network runs: a skipped block keeps the full network's statistics
        models = [m for m in models if stack.enter_context(_bn_reset(stack.enter_context(subnetwork(m, depths))))]
        if not models:
            return 0
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[:num_images - seen]
            for m in models:
                m(x.to(next(m.parameters()).device))
            seen += x.shape[0]
            if seen >= num_images:
                break
    return seen


@contextmanager
def _bn_reset(model: nn.Module) -> Iterator[bool]:
    """Reset `model`'s BN running statistics, accumulate a plain average (momentum None) in train mode inside."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, momenta = model.training, [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        yield bool(bns)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
