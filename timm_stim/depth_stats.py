"""Per-depth BatchNorm statistics shipped with a tag, so that elastic depth needs no data.

A sub-network's BatchNorm layers see other inputs than the full network's, so ST re-estimates their statistics
per sub-network (arXiv:2210.04153 §3; arXiv:2305.02507 evaluates sub-networks the same way). A user who loads a
tag and switches depth has no data step: the release estimates the statistics of each shipped configuration once
and stores them beside the weights, in `<model>.<tag>.depths.safetensors` (`depth_stats.safetensors` on the Hub),
sha256-checked like the weights and recorded in the manifest entry's `depth_stats`
(`timm_stim.models.weights.set_depth_stats` writes both, all or nothing).

File layout: one tensor per BatchNorm layer that a configuration runs, named `<d1-d2-...>/<bn name>.mean` and
`.../<bn name>.var`, and one metadata key `timm_stim` holding JSON: `format`, `model`, `configs`, the measured
table `rows` (depths, MFLOPs, FLOPs share, latency, held-out and test top-1), `machine`, `heldout`.
The weights file stays a plain timm state dict (it loads strictly into the base architecture).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .atomic import atomic_path
from .elastic import BNStats, Depths, attach_depth_stats

__all__ = ['FORMAT', 'config_key', 'to_bytes', 'save', 'load', 'resolve', 'load_into']

FORMAT = 'timm-stim-depth-stats/1'


def config_key(depths: Sequence[int]) -> str:
    return '-'.join(str(int(d)) for d in depths)


def to_bytes(table: Mapping[Sequence[int], BNStats], info: Mapping[str, Any]) -> bytes:
    """The safetensors bytes of `table` (configuration -> BN name -> (mean, var)) and `info` (JSON-able)."""
    from safetensors.torch import save
    tensors = {}
    for depths, bns in table.items():
        key = config_key(depths)
        for name, (mean, var) in bns.items():
            tensors[f'{key}/{name}.mean'] = mean.detach().float().cpu().contiguous()
            tensors[f'{key}/{name}.var'] = var.detach().float().cpu().contiguous()
    meta = dict(info, format=FORMAT, configs=[list(map(int, d)) for d in table])
    return save(tensors, metadata={'timm_stim': json.dumps(meta, sort_keys=True)})


def save(path: Union[str, Path], table: Mapping[Sequence[int], BNStats], info: Mapping[str, Any]) -> Path:
    """Write `to_bytes(table, info)` to `path` atomically (mode 0644). A tag's file is written by
    `timm_stim.models.weights.set_depth_stats`, which also switches its manifest entry."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(to_bytes(table, info))
    path.chmod(0o644)
    return path


def load(path: Union[str, Path]) -> Tuple[Dict[Depths, BNStats], Dict[str, Any]]:
    """Read a file written by `save`: (table, info)."""
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        raw = (f.metadata() or {}).get('timm_stim')
        info = json.loads(raw) if raw else {}
        if info.get('format') != FORMAT:
            raise ValueError(f'{path} is not a timm-stim depth statistics file (format {info.get("format")!r}, '
                             f'expected {FORMAT!r}).')
        table: Dict[Depths, Dict[str, List[torch.Tensor]]] = {}
        for k in f.keys():
            cfg, _, rest = k.partition('/')
            name, _, kind = rest.rpartition('.')
            depths = tuple(int(d) for d in cfg.split('-'))
            table.setdefault(depths, {}).setdefault(name, [None, None])[kind == 'var'] = f.get_tensor(k)
    return {d: {n: (v[0], v[1]) for n, v in bns.items()} for d, bns in table.items()}, info


def resolve(entry: Any, directory: Optional[Union[str, Path]] = None, cache_dir: Optional[Union[str, Path]] = None
            ) -> Path:
    """The verified local path of `entry`'s statistics file: the weights directory's, else the Hub copy (sha256
    checked; `timm_stim.models.weights.resolve_depth_stats`)."""
    from .models.weights import resolve_depth_stats
    path = resolve_depth_stats(entry, directory, cache_dir)
    if path is None:
        raise FileNotFoundError(f'{entry.name} ships no depth statistics.')
    return Path(path)


def load_into(model: nn.Module, entry: Any, directory: Optional[Union[str, Path]] = None) -> nn.Module:
    """Attach `entry`'s shipped statistics and measured table to `model` (a no-op when it ships none)."""
    if not entry.depth_stats:
        return model
    table, info = load(resolve(entry, directory))
    return attach_depth_stats(model, table, rows=info.get('rows', []), meta=info)


def load_beside(model: nn.Module, hub_id: str) -> bool:
    """Attach the statistics exported beside a model's weights (`timm_stim.hub.export`): in the folder of a timm
    `local-dir:` name, or the Hub repository (or HF cache) of an `hf-hub:` name, checked against the sha256 that the
    folder's config.json records. Returns whether statistics were found."""
    import hashlib
    if hub_id.startswith('local-dir:'):
        folder = Path(hub_id[len('local-dir:'):])
        config, stats = folder / 'config.json', folder / 'depth_stats.safetensors'
        if not (config.is_file() and stats.is_file()):
            return False
    else:
        from huggingface_hub import hf_hub_download
        from .models.weights import hub_offline
        try:
            config = Path(hf_hub_download(hub_id, 'config.json', local_files_only=hub_offline()))
            record = json.loads(config.read_text()).get('depth_stats')
            if not record:
                return False
            stats = Path(hf_hub_download(hub_id, record.get('hf_hub_filename', 'depth_stats.safetensors'),
                                         local_files_only=hub_offline()))
        except Exception:  # no copy reachable: the model still loads, the switch warns per configuration
            return False
    record = json.loads(Path(config).read_text()).get('depth_stats') or {}
    digest = hashlib.sha256(Path(stats).read_bytes()).hexdigest()
    if record.get('sha256') != digest:
        raise ValueError(f'{stats} has sha256 {digest}, its config.json records {record.get("sha256")}: corrupt or '
                         f'not the exported file. Export or download it again.')
    table, info = load(stats)
    attach_depth_stats(model, table, rows=info.get('rows', []), meta=info)
    return True
