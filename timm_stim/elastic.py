"""Elastic-depth inference: pick a sub-network of a trained model at inference time.

ST/ST++ train every sub-network that keeps a prefix of each stage's blocks (arXiv:2210.04153 §3,
arXiv:2305.02507 §3), so after training any of them can be used as a smaller, faster model. This module is
the inference side of the core's `subnetwork` / `valid_depths` / `export_subnetwork`:

* `set_depth(model, depths)`: persistent depth of a `*_stim` model (until `set_depth(model, None)`);
* `at_depth(model, depths)`: a context manager for any supported model (restores the previous depth);
* `list_depths(model)`: the valid per-stage kept-depth configurations;
* `depth_profile(model, input_size)`: FLOPs (`torch.utils.flop_counter`) and parameter count of each;
* `export_depth(model, depths)` / `save_exported(...)`: a plain timm module with the dropped blocks removed,
  saved as TorchScript (`script` / `trace`) or `torch.export` programs that load without timm_stim.

While a persistent depth is set, the model's modules, `state_dict()`, `.to()`, `train()` / `eval()` all still
see the full network: blocks are removed from the stage containers only for the duration of each forward
(the core's `subnetwork`), so timm's weights keep loading strictly and saving a model saves all of it.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils.model import unwrap_model

from .depth import check_depths, export_subnetwork, find_stages, full_depths, subnetwork, valid_depths

__all__ = [
    'ElasticDepthMixin', 'ElasticFeaturesMixin', 'set_depth', 'get_depth', 'at_depth', 'list_depths', 'depth_profile', 'export_depth',
    'save_exported', 'EXPORT_METHODS',
]

Depths = Tuple[int, ...]
EXPORT_METHODS = ('script', 'trace', 'export')


class ElasticDepthMixin:
    """Adds a persistent inference depth to a timm model class (`class ResNetStim(ElasticDepthMixin, ResNet)`).

    Adds no parameters or buffers: the state dict is the base class's. `stim_depths` is None (full network)
    or the per-stage kept depths used by every forward until reset.
    """
    stim_depths: Optional[Depths] = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.stim_depths is None:
            return super().forward_features(x)
        with subnetwork(self, self.stim_depths):
            return super().forward_features(x)

    def forward_intermediates(self, *args, **kwargs):
        with subnetwork(self, self.stim_depths):
            return super().forward_intermediates(*args, **kwargs)

    def set_depth(self, depths: Optional[Sequence[int]]) -> 'ElasticDepthMixin':
        return set_depth(self, depths)

    def list_depths(self) -> List[Depths]:
        return list_depths(self)

    def depth_profile(self, input_size: Optional[Sequence[int]] = None, depths=None) -> List[Dict[str, Any]]:
        return depth_profile(self, input_size, depths)

    def export_depth(self, depths: Optional[Sequence[int]] = None) -> nn.Module:
        return export_depth(self, depths)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script scripts what this returns: the plain timm module at the current depth
        if self.stim_depths is None:
            view = copy.copy(self)  # shallow: shares submodules and parameters with self
            view.__class__ = _base_class(self)
            return view
        return export_depth(self)


class ElasticFeaturesMixin(ElasticDepthMixin):
    """Persistent depth for timm's `features_only` wrappers of a `*_stim` model (`FeatureListNet`, ...).

    The wrappers share the model's stage containers, so the sub-network runs by the same block removal, around
    the wrapper's `forward` (which returns the feature maps).
    """

    def forward(self, x: torch.Tensor):
        with subnetwork(self, self.stim_depths):
            return super().forward(x)


def _base_class(model: nn.Module) -> type:
    return next(c for c in type(model).__mro__ if issubclass(c, nn.Module) and not issubclass(c, ElasticDepthMixin))


def _elastic(model: nn.Module) -> ElasticDepthMixin:
    m = unwrap_model(model)
    if not isinstance(m, ElasticDepthMixin):
        raise TypeError(
            f'{type(m).__name__} has no persistent depth: create the `*_stim` model (e.g. '
            f'timm.create_model("resnet50_stim"); same weights layout as the base model) or use '
            f'`with timm_stim.elastic.at_depth(model, depths):` for a temporary depth.')
    return m


def set_depth(model: nn.Module, depths: Optional[Sequence[int]]) -> nn.Module:
    """Run every later forward of a `*_stim` model as the sub-network keeping `depths[i]` blocks of stage i.

    `None` (or the full depths) restores the full network. Returns the model.
    """
    m = _elastic(model)
    if depths is not None:
        stages = find_stages(m)
        depths = check_depths(stages, depths)
        if depths == full_depths(stages):
            depths = None
    if depths is None:
        m.__dict__.pop('stim_depths', None)
    else:
        m.stim_depths = depths
    return model


def get_depth(model: nn.Module) -> Depths:
    """The depths a forward of `model` runs at (the full depths unless a persistent depth is set)."""
    m = unwrap_model(model)
    return getattr(m, 'stim_depths', None) or full_depths(m)


@contextmanager
def at_depth(model: nn.Module, depths: Optional[Sequence[int]]) -> Iterator[nn.Module]:
    """Run `model` (any supported timm model) at `depths` inside the block; the previous depth comes back after."""
    m = unwrap_model(model)
    if not isinstance(m, ElasticDepthMixin):
        with subnetwork(m, depths):
            yield model
        return
    previous = m.stim_depths
    set_depth(m, depths)
    try:
        yield model
    finally:
        set_depth(m, previous)


def list_depths(model: nn.Module) -> List[Depths]:
    """Every valid per-stage kept-depth configuration, full network last (the core's `valid_depths`)."""
    return valid_depths(unwrap_model(model))


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> Tuple[int, ...]:
    if input_size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        input_size = cfg.get('input_size')
        if input_size is None:
            raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size; pass input_size=(C, H, W).')
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3:
        raise ValueError(f'input_size={input_size}: expected (channels, height, width).')
    return input_size


@torch.no_grad()
def depth_profile(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        depths: Optional[Sequence[Sequence[int]]] = None,
) -> List[Dict[str, Any]]:
    """FLOPs (per image) and parameter count of each depth configuration (all valid ones by default).

    One full-network forward under `torch.utils.flop_counter.FlopCounterMode` gives every block's FLOPs. A
    dropped block has an identity shortcut, so it changes no other module's input shape: a sub-network's
    FLOPs are the full FLOPs minus those of its dropped blocks, and likewise for parameters (kept blocks,
    stem and head). Returns dicts with `depths`, `flops`, `params`, `flops_share`, `params_share`.
    """
    from torch.utils.flop_counter import FlopCounterMode
    m = unwrap_model(model)
    stages = find_stages(m)
    input_size = _input_size(m, input_size)
    p = next(m.parameters())
    x = torch.zeros((1,) + input_size, device=p.device, dtype=p.dtype)
    was_training = m.training
    m.eval()
    try:
        with at_depth(m, None), FlopCounterMode(display=False) as counter:
            m(x)
    finally:
        m.train(was_training)
    counts = counter.get_flop_counts()
    root = type(m).__name__
    total_flops = counter.get_total_flops()
    total_params = sum(q.numel() for q in m.parameters())
    block_flops, block_params = [], []
    for s in stages:
        names = list(s.container._modules)[s.start:s.start + s.num_blocks]
        prefix = f'{root}.{s.name}'
        block_flops.append([sum(counts.get(f'{prefix}.{n}', {}).values()) for n in names])
        block_params.append([sum(q.numel() for q in s.container._modules[n].parameters()) for n in names])
    configs = list_depths(m) if depths is None else [check_depths(stages, d) for d in depths]
    profile = []
    for cfg in configs:
        flops = total_flops - sum(sum(f[d:]) for f, d in zip(block_flops, cfg))
        params = total_params - sum(sum(q[d:]) for q, d in zip(block_params, cfg))
        profile.append(dict(depths=cfg, flops=int(flops), params=int(params),
                            flops_share=flops / total_flops, params_share=params / total_params))
    return profile


def export_depth(model: nn.Module, depths: Optional[Sequence[int]] = None) -> nn.Module:
    """A plain timm module (deep copy, base class) of the sub-network at `depths` (default: current depth).

    The dropped blocks are removed (core `export_subnetwork`), so the state dict holds only the kept blocks
    and the module runs, scripts, traces and exports without timm_stim.
    """
    m = unwrap_model(model)
    sub = export_subnetwork(m, get_depth(m) if depths is None else depths)
    if isinstance(sub, ElasticDepthMixin):
        sub.__dict__.pop('stim_depths', None)
        sub.__class__ = _base_class(sub)
    return sub.eval()


def save_exported(
        model: nn.Module,
        path: Union[str, Path],
        depths: Optional[Sequence[int]] = None,
        method: str = 'script',
        input_size: Optional[Sequence[int]] = None,
) -> Path:
    """Save the sub-network at `depths` so that it loads without timm or timm_stim.

    `method='script'` / `'trace'`: TorchScript (`torch.jit.load(path)`); `'export'`: a `torch.export` program
    with a dynamic batch dimension (`torch.export.load(path).module()`). Returns the path.
    """
    if method not in EXPORT_METHODS:
        raise ValueError(f'method={method!r}: expected one of {EXPORT_METHODS}.')
    path = Path(path)
    if method == 'export' and path.suffix != '.pt2':
        raise ValueError(f'{path}: torch.export programs are saved as .pt2 files; use a path ending in .pt2.')
    sub = export_depth(model, depths)
    path.parent.mkdir(parents=True, exist_ok=True)
    if method == 'script':
        torch.jit.save(torch.jit.script(sub), str(path))
        return path
    p = next(sub.parameters())
    example = torch.randn((2,) + _input_size(sub, input_size), device=p.device, dtype=p.dtype)
    with torch.no_grad():
        if method == 'trace':
            torch.jit.save(torch.jit.trace(sub, example, check_trace=False), str(path))  # eval: deterministic
        else:
            batch = torch.export.Dim('batch', min=1, max=4096)
            program = torch.export.export(sub, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
    return path
