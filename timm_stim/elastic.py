"""Elastic-depth inference: pick a sub-network of a trained model at inference time, with no data.

ST/ST++ train every sub-network that keeps a prefix of each stage's blocks (arXiv:2210.04153 §3,
arXiv:2305.02507 §3), so after training any of them can be used as a smaller, faster model:

* `set_depth(model, depths)` / `set_depth(model, budget=0.3)`: the persistent depth of a `*_stim` model (until
  `set_depth(model, None)`), given or the most accurate measured configuration within a FLOPs or latency budget;
* `at_depth(model, depths)`: a context manager for any supported model, private to the calling thread / task;
* `get_depth(model)`, `list_depths(model, measured=False)`: what runs now; the valid (or measured) configurations;
* `recalibrate_bn(model, batches, depths=...)`: BatchNorm statistics of one configuration from the user's data;
* `depth_profile(model, input_size)`: FLOPs (`torch.utils.flop_counter`) and parameter count of each;
* `export_depth(model, depths)` / `save_exported(...)`: a plain timm module with the dropped blocks removed,
  saved as TorchScript (`script` / `trace`) or `torch.export` programs that load without timm_stim.

The switch never edits the model. Each stage container becomes an `ElasticSequential` (same modules, same state
dict) that runs the blocks the active *plan* keeps; the plan lives in a `contextvars` variable, so one model shared
by several threads runs each thread's depth. A sub-network's BatchNorm layers see other inputs than the full
network's, so each configuration has its own running statistics: `*_stim` tags ship them (`timm_stim.depth_stats`)
and the plan hands them to the BatchNorm layers (eval mode) instead of the stored ones.
"""
import copy
import warnings
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.utils.model import unwrap_model

from .depth import check_depths, export_subnetwork, find_stages, full_depths, recalibrate_bn as _recalibrate_in_place, \
    subnetwork, valid_depths

__all__ = [
    'ElasticDepthMixin', 'ElasticFeaturesMixin', 'ElasticSequential', 'set_depth', 'get_depth', 'at_depth',
    'list_depths', 'depth_profile', 'export_depth', 'save_exported', 'EXPORT_METHODS', 'make_elastic',
    'recalibrate_bn', 'attach_depth_stats', 'stats_table', 'forget_stats', 'pick_depth',
]

Depths = Tuple[int, ...]
BNStats = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # BN module name -> (running_mean, running_var)
EXPORT_METHODS = ('script', 'trace', 'export')


def _stages(m: nn.Module):
    """The stages of `m`; a model whose every stage is one block (e.g. ResNet-8) has only its full depth."""
    return find_stages(m, require_droppable=False)


# ------------------------------------------------------------------------------------------------- the plan
class _Plan:
    """What one forward runs: per model its depths, per stage container the dropped block positions, per
    BatchNorm layer the statistics to use in eval mode. Immutable once made; nested switches merge."""
    __slots__ = ('depths', 'drop', 'bn')

    def __init__(self, depths: Dict[int, Depths], drop: Dict[int, Tuple[int, int]],
                 bn: Dict[int, Tuple[torch.Tensor, torch.Tensor]]):
        self.depths, self.drop, self.bn = depths, drop, bn

    def merged(self, other: Optional['_Plan']) -> '_Plan':
        if other is None:
            return self
        return _Plan({**other.depths, **self.depths}, {**other.drop, **self.drop}, {**other.bn, **self.bn})


_PLAN: ContextVar[Optional[_Plan]] = ContextVar('timm_stim_depth_plan', default=None)


class ElasticSequential(nn.Sequential):
    """A stage container that runs the blocks the active plan keeps (all of them when there is none)."""

    def forward(self, x):
        if not torch.jit.is_scripting():
            plan = _PLAN.get()
            span = plan.drop.get(id(self)) if plan is not None else None
            if span is not None:
                for i, module in enumerate(self._modules.values()):
                    if not span[0] <= i < span[1]:
                        x = module(x)
                return x
        for module in self:
            x = module(x)
        return x

    def __prepare_scriptable__(self) -> nn.Module:
        return _plain_copy(self)


class _ElasticNorm:
    """BatchNorm (or timm's BatchNormAct2d) that, in eval mode, normalises with the active plan's statistics."""

    def forward(self, x):
        plan = _PLAN.get()
        stats = plan.bn.get(id(self)) if plan is not None and not self.training else None
        if stats is None:
            return super().forward(x)
        x = F.batch_norm(x, stats[0], stats[1], self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x)) if isinstance(self, BatchNormAct2d) else x

    def __prepare_scriptable__(self) -> nn.Module:
        return _plain_copy(self)


_NORM_CLASSES = {base: type(f'Elastic{base.__name__}', (_ElasticNorm, base), {'__module__': __name__})
                 for base in (nn.BatchNorm2d, BatchNormAct2d)}


# what a model holds for the switch (instance attributes): never part of a plain, exported or scripted copy
_STIM_ATTRS = ('stim_depths', '_stim_depth_stats', '_stim_depth_table', '_stim_depth_meta', '_stim_plans',
               '_stim_warned')


def _plain_class(cls: type) -> type:
    return next(c for c in cls.__mro__ if issubclass(c, nn.Module)
                and not issubclass(c, (ElasticDepthMixin, ElasticSequential, _ElasticNorm)))


def _plain_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of `module` as its timm / torch class (shares parameters, buffers and children)."""
    view = copy.copy(module)
    view.__class__ = _plain_class(type(module))
    return view


def _plain_tree(module: nn.Module) -> nn.Module:
    """Shallow copies of `module` and all its descendants, each as its timm / torch class, sharing parameters and
    buffers: what TorchScript can compile, without touching the original's modules."""
    view = copy.copy(module)
    for key in _STIM_ATTRS:
        view.__dict__.pop(key, None)
    view.__dict__['_modules'] = {k: None if v is None else _plain_tree(v) for k, v in module._modules.items()}
    if isinstance(module, (ElasticDepthMixin, ElasticSequential, _ElasticNorm)):
        view.__class__ = _plain_class(type(module))
    return view


def make_elastic(model: nn.Module) -> bool:
    """Let `model` switch depth without edits: its stage containers become `ElasticSequential` (same modules and
    state dict). Idempotent; False when a stage container is not an `nn.Sequential` (then the switch falls back to
    editing the container for the duration of a pass, which is not thread-safe)."""
    m = unwrap_model(model)
    ok = True
    for s in _stages(m):
        c = s.container
        if type(c) is nn.Sequential:
            c.__class__ = ElasticSequential
        ok &= isinstance(c, ElasticSequential)
    return ok


# ------------------------------------------------------------------------------------- statistics per depth
def stats_table(model: nn.Module) -> Dict[Depths, BNStats]:
    """The per-configuration BatchNorm statistics `model` holds (shipped with its tag or from `recalibrate_bn`)."""
    return unwrap_model(model).__dict__.setdefault('_stim_depth_stats', {})


def attach_depth_stats(model: nn.Module, table: Mapping[Sequence[int], BNStats],
                       rows: Optional[Sequence[Mapping[str, Any]]] = None, meta: Optional[Mapping[str, Any]] = None
                       ) -> nn.Module:
    """Give `model` BatchNorm statistics per depth configuration (and optionally the measured table of `rows`,
    which `list_depths(measured=True)` and the budget picker read); the switch then uses them in eval mode."""
    m = unwrap_model(model)
    make_elastic(m)
    modules = dict(m.named_modules())
    stats = stats_table(m)
    for depths, bns in table.items():
        depths = check_depths(_stages(m), depths)
        for name in bns:
            bn = modules.get(name)
            if bn is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                raise ValueError(f'depth statistics name {name!r}, which is not a BatchNorm layer of '
                                 f'{type(m).__name__}: they belong to another architecture.')
            if type(bn) in _NORM_CLASSES:
                bn.__class__ = _NORM_CLASSES[type(bn)]
        stats[depths] = {k: (v[0].detach(), v[1].detach()) for k, v in bns.items()}
    if rows is not None:
        m.__dict__['_stim_depth_table'] = [dict(r, depths=tuple(r['depths'])) for r in rows]
        m.__dict__['_stim_depth_meta'] = dict(meta or {})
    m.__dict__.pop('_stim_plans', None)
    return model


def forget_stats(model: nn.Module, depths: Optional[Sequence[int]] = None) -> None:
    """Drop the stored statistics of `depths` (of every configuration when None): the switch then uses the full
    network's, with a warning."""
    m = unwrap_model(model)
    table = stats_table(m)
    if depths is None:
        table.clear()
    else:
        table.pop(tuple(depths), None)
    m.__dict__.pop('_stim_plans', None)


def _plan_for(m: nn.Module, depths: Optional[Sequence[int]]) -> _Plan:
    """The plan of `m` at `depths` (None = full network), cached per model and configuration."""
    stages = _stages(m)
    depths = full_depths(stages) if depths is None else check_depths(stages, depths)
    cache = m.__dict__.setdefault('_stim_plans', {})
    plan = cache.get(depths)
    if plan is None:
        drop = {id(s.container): (s.start + d, s.start + s.num_blocks) for s, d in zip(stages, depths)
                if d < s.num_blocks}
        stats = stats_table(m).get(depths) if drop else None
        bn = {}
        if stats:
            modules = dict(m.named_modules())
            bn = {id(modules[name]): v for name, v in stats.items()}
        plan = cache[depths] = _Plan({id(m): depths}, drop, bn)
    if plan.drop and not plan.bn and not m.training:
        _warn_no_stats(m, depths)
    return plan


def _warn_no_stats(m: nn.Module, depths: Depths) -> None:
    warned = m.__dict__.setdefault('_stim_warned', set())
    if depths in warned or not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules()):
        return
    warned.add(depths)
    warnings.warn(
        f'{type(m).__name__} has no BatchNorm statistics for depths {depths}: the full network\'s are used, which '
        f'costs accuracy. Re-estimate them once on ~2,000 training images: '
        f'timm_stim.recalibrate_bn(model, loader, depths={depths}).', stacklevel=4)


def _switch(m: nn.Module, depths: Optional[Sequence[int]]) -> ContextManager:
    """Run `m` at `depths` inside the block, for this thread / task only."""
    if not make_elastic(m):
        return subnetwork(m, depths)
    return _activate(_plan_for(m, depths))


@contextmanager
def _activate(plan: _Plan) -> Iterator[None]:
    token = _PLAN.set(plan.merged(_PLAN.get()))
    try:
        yield
    finally:
        _PLAN.reset(token)


def _persistent(m: nn.Module) -> ContextManager:
    """The switch of a `*_stim` model's own forward: its persistent depth, unless `at_depth` chose one here."""
    plan = _PLAN.get()
    if m.stim_depths is None or (plan is not None and id(m) in plan.depths):
        return nullcontext()
    return _switch(m, m.stim_depths)


# -------------------------------------------------------------------------------------------- the models
class ElasticDepthMixin:
    """Adds a persistent inference depth to a timm model class (`class ResNetStim(ElasticDepthMixin, ResNet)`).

    Adds no parameters or buffers: the state dict is the base class's. `stim_depths` is None (full network)
    or the per-stage kept depths used by every forward until reset.
    """
    stim_depths: Optional[Depths] = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with _persistent(self):
            return super().forward_features(x)

    def forward_intermediates(self, *args, **kwargs):
        with _persistent(self):
            return super().forward_intermediates(*args, **kwargs)

    def set_depth(self, depths: Optional[Sequence[int]] = None, **budget) -> 'ElasticDepthMixin':
        return set_depth(self, depths, **budget)

    def list_depths(self, measured: bool = False) -> List[Any]:
        return list_depths(self, measured)

    def depth_profile(self, input_size: Optional[Sequence[int]] = None, depths=None) -> List[Dict[str, Any]]:
        return depth_profile(self, input_size, depths)

    def export_depth(self, depths: Optional[Sequence[int]] = None) -> nn.Module:
        return export_depth(self, depths)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script scripts what this returns: the plain timm module at the current depth (a view sharing
        # the weights for the full network, a copy without the dropped blocks for a sub-network)
        if get_depth(self) == full_depths(self):
            return _plain_tree(self)
        return export_depth(self)


class ElasticFeaturesMixin(ElasticDepthMixin):
    """Persistent depth for timm's `features_only` wrappers of a `*_stim` model (`FeatureListNet`, ...)."""

    def forward(self, x: torch.Tensor):
        with _persistent(self):
            return super().forward(x)


def _elastic(model: nn.Module) -> ElasticDepthMixin:
    m = unwrap_model(model)
    if not isinstance(m, ElasticDepthMixin):
        raise TypeError(
            f'{type(m).__name__} has no persistent depth: create the `*_stim` model (e.g. '
            f'timm.create_model("resnet50_stim"); same weights layout as the base model) or use '
            f'`with timm_stim.at_depth(model, depths):` for a temporary depth.')
    return m


def set_depth(model: nn.Module, depths: Optional[Sequence[int]] = None, *, budget: Optional[float] = None,
              budget_ms: Optional[float] = None) -> nn.Module:
    """Run every later forward of a `*_stim` model as the sub-network keeping `depths[i]` blocks of stage i.

    `budget=0.5`: instead, the most accurate measured configuration (held-out top-1 of the tag's table) with at
    most half the full network's FLOPs; `budget_ms=2.0`: with at most 2 ms at batch 1 on the CPU the table was
    measured on (`list_depths(model, measured=True)`). `None` (or the full depths) restores the full network.
    Returns the model; `get_depth(model)` says what was chosen.
    """
    m = _elastic(model)
    if budget is not None or budget_ms is not None:
        if depths is not None:
            raise ValueError('pass depths or a budget, not both.')
        depths = pick_depth(m, budget=budget, budget_ms=budget_ms)
    if depths is not None:
        stages = _stages(m)
        depths = check_depths(stages, depths)
        if depths == full_depths(stages):
            depths = None
    if depths is None:
        m.__dict__.pop('stim_depths', None)
    else:
        make_elastic(m)
        m.stim_depths = depths
    return model


def get_depth(model: nn.Module) -> Depths:
    """The depths a forward of `model` runs at here: `at_depth`'s, else the persistent depth, else the full one."""
    m = unwrap_model(model)
    plan = _PLAN.get()
    if plan is not None and id(m) in plan.depths:
        return plan.depths[id(m)]
    return getattr(m, 'stim_depths', None) or full_depths(m)


@contextmanager
def at_depth(model: nn.Module, depths: Optional[Sequence[int]]) -> Iterator[nn.Module]:
    """Run `model` (any supported timm model) at `depths` inside the block (None = the full network).

    Private to the calling thread (or asyncio task): other threads running the same model keep their own depth.
    The model's stored per-depth BatchNorm statistics are used in eval mode.
    """
    with _switch(unwrap_model(model), depths):
        yield model


def list_depths(model: nn.Module, measured: bool = False) -> List[Any]:
    """Every valid per-stage kept-depth configuration, full network last (the core's `valid_depths`).

    `measured=True`: the table shipped with the tag instead, one dict per measured configuration (`depths`,
    `mflops`, `flops_share`, `latency_ms` at batch 1, `heldout_top1`, `test_top1`, `has_stats`), and the machine
    it was measured on in each row's `machine`.
    """
    m = unwrap_model(model)
    if not measured:
        return valid_depths(m)
    rows = m.__dict__.get('_stim_depth_table')
    if not rows:
        raise ValueError(f'{type(m).__name__} carries no measured depth table: load a `*_stim` tag '
                         f'(timm.create_model(name, pretrained=True)) or measure one with benchmarks/elastic.py.')
    machine = m.__dict__.get('_stim_depth_meta', {}).get('machine')
    stats = stats_table(m)
    return [dict(r, has_stats=tuple(r['depths']) in stats or r.get('full', False), machine=machine) for r in rows]


def pick_depth(model: nn.Module, budget: Optional[float] = None, budget_ms: Optional[float] = None) -> Depths:
    """The configuration of the measured table with the best held-out top-1 within the budget: `budget` as a share
    of the full network's FLOPs (0 < budget <= 1), `budget_ms` as latency at batch 1 on the table's machine."""
    if (budget is None) == (budget_ms is None):
        raise ValueError('give exactly one of budget (share of the full FLOPs) and budget_ms.')
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f'budget is a share of the full network\'s FLOPs in (0, 1], got {budget}.')
    rows = list_depths(model, measured=True)
    key, limit, unit = ('flops_share', budget, 'of the full FLOPs') if budget is not None else \
        ('latency_ms', budget_ms, 'ms at batch 1')
    fits = [r for r in rows if r.get(key) is not None and r[key] <= limit + 1e-9]
    if not fits:
        smallest = min(r[key] for r in rows if r.get(key) is not None)
        raise ValueError(f'no measured configuration fits {limit:g} {unit}: the smallest needs {smallest:.3g}.')
    best = max(fits, key=lambda r: (r['heldout_top1'], -r[key]))
    return tuple(best['depths'])


def recalibrate_bn(model: Union[nn.Module, Sequence[nn.Module]], batches: Iterable, num_images: int = 2000,
                   depths: Optional[Sequence[int]] = None) -> int:
    """Re-estimate BatchNorm statistics on `num_images` images of `batches` (ST, arXiv:2210.04153: after training).

    `depths` None or full: the model's own running statistics are replaced (as training does after each epoch).
    A sub-network's `depths`: its statistics are stored beside the model's, which stay untouched, and the depth
    switch uses them from then on (`stats_table(model)[depths]`). Returns the number of images used.
    """
    if depths is None or isinstance(model, (list, tuple)):
        return _recalibrate_in_place(model, batches, num_images, depths)
    m = unwrap_model(model)
    stages = _stages(m)
    depths = check_depths(stages, depths)
    if depths == full_depths(stages):
        return _recalibrate_in_place(m, batches, num_images)
    bns = {n: b for n, b in m.named_modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)}
    saved = {n: (b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone()) for n, b in bns.items()}
    dropped = {id(x) for s, d in zip(stages, depths)
               for blk in list(s.container.children())[s.start + d:s.start + s.num_blocks] for x in blk.modules()}
    try:
        seen = _recalibrate_in_place(m, batches, num_images, depths)
        table = {n: (b.running_mean.clone(), b.running_var.clone()) for n, b in bns.items() if id(b) not in dropped}
    finally:
        for n, b in bns.items():
            b.running_mean.copy_(saved[n][0]), b.running_var.copy_(saved[n][1])
            b.num_batches_tracked.copy_(saved[n][2])
    attach_depth_stats(m, {depths: table})
    return seen


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
    stages = _stages(m)
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
    """A plain timm module (deep copy, base classes) of the sub-network at `depths` (default: current depth).

    The dropped blocks are removed (core `export_subnetwork`) and the configuration's stored BatchNorm statistics
    become the copy's running statistics, so the module runs, scripts, traces and exports without timm_stim and
    gives what `at_depth` gives.
    """
    m = unwrap_model(model)
    depths = get_depth(m) if depths is None else check_depths(_stages(m), depths)
    sub = export_subnetwork(m, depths)
    for key in _STIM_ATTRS:
        sub.__dict__.pop(key, None)
    stats = stats_table(m).get(depths, {}) if depths != full_depths(m) else {}
    for name, module in sub.named_modules():
        if name in stats:
            module.running_mean.copy_(stats[name][0]), module.running_var.copy_(stats[name][1])
        if isinstance(module, (ElasticDepthMixin, ElasticSequential, _ElasticNorm)):
            module.__class__ = _plain_class(type(module))
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
