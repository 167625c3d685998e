"""Weights manifest: which trained checkpoints exist, their sha256, and where `pretrained=True` finds them.

The manifest is `manifest.json` in the weights directory (the repository's top-level `weights/`, shipped inside
the installed package as `timm_stim/_weights/`): `{"weights": [entry, ...]}`, one entry per checkpoint::

    {"model": "cifar_resnet20_stim", "tag": "stpp_cifar10",
     "file": "cifar_resnet20_stim.stpp_cifar10.safetensors", "sha256": "<64 hex>", "size": 1093456,
     "num_classes": 10, "dataset": "cifar10", "recipe": "benchmarks/recipes/cifar_resnet20_stpp.yaml",
     "command": "timm-stim-train ...", "metrics": {"top1": 92.1},
     # optional: "hf_hub_id", "hf_hub_filename", "input_size", "mean", "std", "crop_pct", "interpolation",
     #           "license", "description"}

Every entry becomes the pretrained tag `<model>.<tag>` of the `*_stim` registry (see `stim_zoo.py`; the first
tag of a model is its default, as in timm), so the first real weights become a tag by adding the file and its
entry (`add_weights` writes both). Resolution for
`pretrained=True`: the local file in the weights directory, else the Hub copy (`hf_hub_id`, default
`timm-stim/<model>.<tag>`, file `model.safetensors` as written by `timm.models.save_for_hf`); either way the
file's sha256 must match the manifest, or loading is refused with an error naming the file.

The weights directory is, in order: `$TIMM_STIM_WEIGHTS_DIR`, the installed package's `timm_stim/_weights/`,
the source checkout's `weights/`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = [
    'HUB_ORG', 'ENV_WEIGHTS_DIR', 'MANIFEST_NAME', 'WeightsEntry', 'weights_dir', 'read_manifest', 'find_entry',
    'sha256_file', 'verify_file', 'resolve_file', 'resolve_pretrained_cfg', 'add_weights', 'pretrained_tag_cfgs',
]

HUB_ORG = 'timm-stim'
ENV_WEIGHTS_DIR = 'TIMM_STIM_WEIGHTS_DIR'
MANIFEST_NAME = 'manifest.json'
_CFG_OVERRIDES = ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'license', 'hf_hub_filename')

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class WeightsEntry:
    """One trained checkpoint listed in the manifest."""
    model: str
    tag: str
    file: str
    sha256: str
    num_classes: int
    size: Optional[int] = None
    dataset: str = ''
    recipe: str = ''
    command: str = ''
    metrics: Dict[str, float] = field(default_factory=dict)
    hf_hub_id: str = ''
    hf_hub_filename: str = 'model.safetensors'
    input_size: Optional[List[int]] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    license: Optional[str] = None
    description: str = ''

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    @property
    def hub_id(self) -> str:
        return self.hf_hub_id or f'{HUB_ORG}/{self.name}'

    def describe(self) -> str:
        """How the weights were trained (the pretrained cfg's `description`)."""
        if self.description:
            return self.description
        parts = ['Trained by timm-stim (Stimulative Training++, arXiv:2305.02507)'
                 + (f' on {self.dataset}' if self.dataset else '') + '.']
        if self.recipe:
            parts.append(f'Recipe: {self.recipe}.')
        if self.command:
            parts.append(f'Command: `{self.command}`.')
        if self.metrics:
            parts.append('Measured: ' + ', '.join(f'{k} {v}' for k, v in self.metrics.items()) + '.')
        return ' '.join(parts)


def weights_dir() -> Path:
    """The weights directory: `$TIMM_STIM_WEIGHTS_DIR`, else the package data copy, else the checkout's."""
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parents[1]
    installed = package / '_weights'  # non-editable install: pyproject maps weights/ -> timm_stim/_weights
    if installed.is_dir():
        return installed
    return package.parent / 'weights'


def _dir(directory: Optional[PathLike]) -> Path:
    return Path(directory) if directory is not None else weights_dir()


def read_manifest(directory: Optional[PathLike] = None) -> List[WeightsEntry]:
    """The manifest's entries (empty when there is no manifest). Malformed entries raise ValueError."""
    path = _dir(directory) / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path} is not valid JSON ({e}); fix or regenerate it with timm_stim.models.weights.'
                         f'add_weights.') from e
    items = data.get('weights') if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f'{path}: expected {{"weights": [...]}} or a list of entries.')
    known = {f.name for f in dataclasses.fields(WeightsEntry)}
    entries, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f'{path}: entry {i} is not an object.')
        missing = [k for k in ('model', 'tag', 'file', 'sha256', 'num_classes') if k not in item]
        unknown = sorted(set(item) - known)
        if missing or unknown:
            raise ValueError(f'{path}: entry {i} ({item.get("model")}.{item.get("tag")}) '
                             + (f'lacks {missing}' if missing else f'has unknown keys {unknown}')
                             + f'; entry keys are {sorted(known)}.')
        entry = WeightsEntry(**item)
        if len(entry.sha256) != 64 or any(c not in '0123456789abcdef' for c in entry.sha256.lower()):
            raise ValueError(f'{path}: entry {entry.name} has sha256={entry.sha256!r}, not 64 hex digits.')
        if entry.name in seen:
            raise ValueError(f'{path}: {entry.name} is listed twice.')
        seen.add(entry.name)
        entries.append(entry)
    return entries


def find_entry(model: str, tag: Optional[str], directory: Optional[PathLike] = None) -> Optional[WeightsEntry]:
    for entry in read_manifest(directory):
        if entry.model == model and entry.tag == (tag or ''):
            return entry
    return None


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: PathLike, entry: WeightsEntry) -> Path:
    """Check `path` against the manifest entry (size when recorded, then sha256); raise ValueError if not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'weights file {path} for {entry.name} does not exist.')
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        state = 'truncated' if size < entry.size else 'larger than recorded'
        raise ValueError(f'weights file {path} for {entry.name} is {state}: {size} bytes, the manifest records '
                         f'{entry.size}. Delete it and fetch it again (git lfs pull / Hub download).')
    digest = sha256_file(path)
    if digest != entry.sha256.lower():
        raise ValueError(f'weights file {path} for {entry.name} has sha256 {digest}, the manifest records '
                         f'{entry.sha256}: the file is corrupt, truncated or not the one listed. Refusing to load '
                         f'it; delete it and fetch it again, or update the manifest with add_weights.')
    return path


def resolve_file(
        entry: WeightsEntry,
        directory: Optional[PathLike] = None,
        cache_dir: Optional[PathLike] = None,
) -> Path:
    """The verified local path of `entry`'s weights: the weights directory's file, else the Hub copy."""
    local = _dir(directory) / entry.file
    if local.exists():
        return verify_file(local, entry)
    try:
        from huggingface_hub import hf_hub_download
        downloaded = hf_hub_download(entry.hub_id, entry.hf_hub_filename, cache_dir=cache_dir)
    except Exception as e:  # offline, missing repository or file: say where we looked
        raise FileNotFoundError(
            f'weights for {entry.name}: no local file {local} and the Hub copy {entry.hub_id}/'
            f'{entry.hf_hub_filename} could not be fetched ({type(e).__name__}: {e}).') from e
    return verify_file(downloaded, entry)


def resolve_pretrained_cfg(cfg: Any, directory: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None):
    """Point a timm `PretrainedCfg` at verified weights before timm's `load_pretrained` reads it.

    A manifest tag gets `file=<verified path>` (timm then loads it, adapting `num_classes` / `in_chans`).
    A source the caller gave (`pretrained_cfg_overlay=dict(file=...)`, `hf-hub:` ids) is left to timm.
    """
    if getattr(cfg, 'state_dict', None) is not None or getattr(cfg, 'file', None):
        return cfg
    entry = find_entry(cfg.architecture, cfg.tag, directory)
    if entry is not None and (not cfg.hf_hub_id or cfg.hf_hub_id == entry.hub_id):
        return dataclasses.replace(cfg, file=str(resolve_file(entry, directory, cache_dir)), custom_load=False)
    if cfg.hf_hub_id or cfg.url:
        return cfg
    tags = [e.name for e in read_manifest(directory) if e.model == cfg.architecture]
    raise ValueError(
        f'{cfg.architecture}{"." + cfg.tag if cfg.tag else ""} has no pretrained weights '
        f'(weights with this architecture: {tags or "none yet"}; manifest: {_dir(directory) / MANIFEST_NAME}). '
        f'Use pretrained=False, a listed tag, or pretrained_cfg_overlay=dict(file=...).')


def pretrained_tag_cfgs(base_cfgs: Dict[str, Dict[str, Any]], directory: Optional[PathLike] = None):
    """`{'<model>.<tag>': cfg}` for every manifest entry whose model is in `base_cfgs` (`generate_default_cfgs`)."""
    cfgs = {}
    for entry in read_manifest(directory):
        if entry.model not in base_cfgs:
            raise ValueError(f'manifest entry {entry.name}: unknown model {entry.model!r}; expected one of '
                             f'{sorted(base_cfgs)}.')
        cfg = dict(base_cfgs[entry.model])
        cfg.update({k: getattr(entry, k) for k in _CFG_OVERRIDES if getattr(entry, k) is not None})
        for k in ('input_size', 'mean', 'std'):
            if k in cfg:
                cfg[k] = tuple(cfg[k])
        cfg.update(hf_hub_id=entry.hub_id, num_classes=entry.num_classes, description=entry.describe())
        cfgs[entry.name] = cfg
    return cfgs


def add_weights(
        path: PathLike,
        model: str,
        tag: str,
        num_classes: int,
        directory: Optional[PathLike] = None,
        **info: Any,
) -> WeightsEntry:
    """Add (or replace) the manifest entry of a trained checkpoint, copying it into the weights directory.

    `info` takes the optional entry fields (dataset, recipe, command, metrics, input_size, ...). The file is
    stored as `<model>.<tag>.safetensors`; it must be a safetensors state dict.
    """
    src = Path(path)
    if src.suffix != '.safetensors':
        raise ValueError(f'{src}: weights are committed as safetensors; save with safetensors.torch.save_file.')
    if not src.is_file():
        raise FileNotFoundError(f'{src} does not exist.')
    directory = _dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f'{model}.{tag}.safetensors'
    dst = directory / name
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    entry = WeightsEntry(model=model, tag=tag, file=name, sha256=sha256_file(dst), size=dst.stat().st_size,
                         num_classes=int(num_classes), **info)
    entries = [e for e in read_manifest(directory) if e.name != entry.name] + [entry]
    items = [{k: v for k, v in dataclasses.asdict(e).items()
              if v not in (None, '', {}) and not (k == 'hf_hub_filename' and v == 'model.safetensors')}
             for e in entries]
    (directory / MANIFEST_NAME).write_text(json.dumps({'weights': items}, indent=2) + '\n')
    return entry
