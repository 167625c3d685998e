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

Where weights live (a PyPI wheel may be at most 100 MB, a file on GitHub 100 MB): a stored file of at most
`WHEEL_MAX_MB` (25 MB) is `weights/<model>.<tag>.safetensors`, committed and shipped inside the wheel, as long as
all such files stay within `WHEEL_BUDGET_MB` (80 MB; writing one more is refused, naming the way out); a larger
one, or any tag stored with `out_of_wheel` (the baselines of timm's architectures: `move_weights`), is
`weights/hub/<model>.<tag>.safetensors`, kept out of the wheel (package data is top-level `*.safetensors`
only) and out of git (`weights/.gitignore`), and committed instead as byte parts of at most `GIT_PART_MB`
(`<file>.part1of2`, ...; `split_parts`). A clone joins the parts on first use (`join_parts`); an installed wheel
fetches the file from the Hub at the pinned revision of `hf_hub_id` (`org/name@<commit>`). Either way its sha256
is checked like any local file's.

A broken manifest entry never breaks `import timm_stim`: the registry skips it with a warning naming the
manifest file (`read_manifest(strict=False)`); the writers (`add_weights`, the release command) stay strict.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Union

import torch

from ..atomic import atomic_path, atomic_write_text

__all__ = [
    'HUB_ORG', 'ENV_WEIGHTS_DIR', 'MANIFEST_NAME', 'WeightsEntry', 'weights_dir', 'read_manifest', 'find_entry',
    'sha256_file', 'verify_file', 'resolve_file', 'resolve_pretrained_cfg', 'add_weights', 'pretrained_tag_cfgs',
    'tagged_default_cfgs', 'write_weights', 'load_checkpoint_state_dict', 'build_checked_model', 'known_models',
    'write_manifest', 'place_entry', 'WHEEL_MAX_MB', 'GIT_PART_MB', 'hub_offline', 'entry_cfg', 'part_files',
    'split_parts', 'join_parts', 'WHEEL_BUDGET_MB', 'check_wheel_budget', 'move_weights', 'state_dict_nbytes',
    'RELEASE_MAX_MB', 'check_release_size',
]

HUB_ORG = 'timm-stim'
ENV_WEIGHTS_DIR = 'TIMM_STIM_WEIGHTS_DIR'
MANIFEST_NAME = 'manifest.json'
WHEEL_MAX_MB = 25  # larger stored files live in weights/hub/: out of the wheel, in git as parts, on the Hub
WHEEL_BUDGET_MB = 80  # all weights inside the wheel together: room under PyPI's 100 MB for the code
GIT_PART_MB = 90  # the largest committed part of a weights/hub/ file (GitHub refuses files over 100 MB)
# the largest file one release may store: a release must land in one push, and this repository takes at most
# 256 MiB of changes per push (a 268 MB float32 wide_resnet50_2 was refused whole), with room left for the rest
RELEASE_MAX_MB = 128
_CFG_OVERRIDES = ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'license', 'hf_hub_filename',
                  'label_names')

PathLike = Union[str, os.PathLike]


def _in_wheel(file: str) -> bool:
    return not file.startswith('hub/')


def state_dict_nbytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors of `state_dict`, as stored (what decides wheel or `hub/`)."""
    return sum(v.numel() * v.element_size() for v in state_dict.values())


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
    label_names: Optional[List[str]] = None
    # written by the release command (timm_stim.release)
    commit: str = ''  # timm-stim code commit at release
    source: str = ''  # the train checkpoint and which weights (state_dict / state_dict_ema)
    storage_dtype: str = 'float32'
    train_args: Dict[str, Any] = field(default_factory=dict)  # args.yaml keys differing from defaults + stim_mode
    evaluation: Dict[str, Any] = field(default_factory=dict)  # split, images, precision, logged top-1, tolerance
    depths: List[Dict[str, Any]] = field(default_factory=list)  # per-depth top-1 / FLOPs (BN re-estimated)
    stats: Dict[str, Any] = field(default_factory=dict)  # params, gmacs, activations of the full network
    release_command: str = ''
    # per-depth BatchNorm statistics shipped beside the weights (timm_stim.depth_stats): {"file", "sha256", "size",
    # "configs": [[d1, d2, ...], ...], "hf_hub_filename"}; empty when the tag ships none
    depth_stats: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    @property
    def in_wheel(self) -> bool:
        """Shipped inside the wheel (a top-level file), not under `hub/`."""
        return _in_wheel(self.file)

    @property
    def hub_id(self) -> str:
        """The Hub id, `org/name` or pinned `org/name@revision`."""
        return self.hf_hub_id or f'{HUB_ORG}/{self.name}'

    @property
    def mode(self) -> str:
        """The run's `--stim-mode` (`stpp`, `st` or `off`; stpp, the training default, when not recorded)."""
        return str(self.train_args.get('stim_mode', 'stpp'))

    @property
    def hub_repo(self) -> str:
        return self.hub_id.split('@')[0]

    @property
    def hub_revision(self) -> Optional[str]:
        return self.hub_id.split('@')[1] if '@' in self.hub_id else None

    def describe(self) -> str:
        """How the weights were trained (the pretrained cfg's `description`)."""
        if self.description:
            return self.description
        how = {'off': 'as a plain baseline (no ST)', 'st': 'with Stimulative Training, arXiv:2210.04153'}
        parts = [f'Trained by timm-stim ({how.get(self.mode, "Stimulative Training++, arXiv:2305.02507")})'
                 + (f' on {self.dataset}' if self.dataset else '') + '.']
        if self.recipe:
            parts.append(f'Recipe: {self.recipe}.')
        if self.command:
            parts.append(f'Command: `{self.command}`.')
        if self.metrics:
            parts.append('Measured: ' + ', '.join(f'{k} {v}' for k, v in self.metrics.items()) + '.')
        if self.input_size:
            parts.append(f'Input {self.input_size[-2]}x{self.input_size[-1]} px, {self.num_classes} classes; '
                         f'fine-tune to other sizes and class counts as with any timm model (num_classes=..., '
                         f'the data config\'s input size).')
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


def read_manifest(directory: Optional[PathLike] = None, strict: bool = True) -> List[WeightsEntry]:
    """The manifest's entries (empty when there is no manifest).

    `strict`: a malformed file or entry raises ValueError; otherwise it is skipped with a warning that names the
    manifest file (what `import timm_stim` does, so that one bad entry never breaks the import).
    """
    path = _dir(directory) / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        items = _manifest_items(path)
    except ValueError as e:
        if strict:
            raise
        _warn_once(f'{e} No timm-stim weights are registered from it.')
        return []
    entries, seen = [], set()
    for i, item in enumerate(items):
        try:
            entry = _parse_entry(path, i, item, seen)
        except (ValueError, TypeError) as e:
            if strict:
                raise ValueError(str(e)) from e
            _warn_once(f'{e} Skipping this entry.')
            continue
        seen.add(entry.name)
        entries.append(entry)
    return entries


_WARNED = set()


def _warn_once(message: str) -> None:
    """One warning per problem and process (the manifest is read by several registration modules)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _manifest_items(path: Path) -> List[Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path} is not valid JSON ({e}); fix or regenerate it with timm_stim.models.weights.'
                         f'add_weights.') from e
    items = data.get('weights') if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f'{path}: expected {{"weights": [...]}} or a list of entries.')
    return items


def _parse_entry(path: Path, i: int, item: Any, seen: Collection[str]) -> WeightsEntry:
    if not isinstance(item, dict):
        raise ValueError(f'{path}: entry {i} is not an object.')
    known = {f.name for f in dataclasses.fields(WeightsEntry)}
    missing = [k for k in ('model', 'tag', 'file', 'sha256', 'num_classes') if k not in item]
    unknown = sorted(set(item) - known)
    if missing or unknown:
        raise ValueError(f'{path}: entry {i} ({item.get("model")}.{item.get("tag")}) '
                         + (f'lacks {missing}' if missing else f'has unknown keys {unknown}')
                         + f'; entry keys are {sorted(known)}.')
    entry = WeightsEntry(**item)
    if not isinstance(entry.sha256, str) or len(entry.sha256) != 64 \
            or any(c not in '0123456789abcdef' for c in entry.sha256.lower()):
        raise ValueError(f'{path}: entry {entry.name} has sha256={entry.sha256!r}, not 64 hex digits.')
    if entry.name in seen:
        raise ValueError(f'{path}: {entry.name} is listed twice.')
    return entry


def find_entry(model: str, tag: Optional[str], directory: Optional[PathLike] = None) -> Optional[WeightsEntry]:
    """The manifest entry of `model.tag` (a broken manifest or entry is skipped with a warning)."""
    for entry in read_manifest(directory, strict=False):
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


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set (read now, not only when huggingface_hub was imported)."""
    env = os.environ.get('HF_HUB_OFFLINE', '').strip().upper()
    if env:
        return env in ('1', 'ON', 'YES', 'TRUE')
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def resolve_file(
        entry: WeightsEntry,
        directory: Optional[PathLike] = None,
        cache_dir: Optional[PathLike] = None,
) -> Path:
    """The verified local path of `entry`'s weights: the weights directory's file, else the Hub copy.

    The Hub copy is read at the pinned revision of `hf_hub_id` (`org/name@rev`); with `HF_HUB_OFFLINE=1` only the
    local HF cache is consulted (no network retries).
    """
    local = _dir(directory) / entry.file
    if local.exists():
        try:
            return verify_file(local, entry)
        except ValueError:
            if not part_files(local):
                raise  # a joined file older than its parts (a re-released tag) is joined again below
    if part_files(local):  # a clone: the committed parts of a weights/hub/ file
        return verify_file(join_parts(local), entry)
    offline = hub_offline()
    try:
        from huggingface_hub import hf_hub_download
        downloaded = hf_hub_download(entry.hub_repo, entry.hf_hub_filename, revision=entry.hub_revision,
                                     cache_dir=cache_dir, local_files_only=offline)
    except Exception as e:  # offline, missing repository or file: say where we looked
        hint = ('HF_HUB_OFFLINE is set, so only the local HF cache was searched.' if offline else
                'Without network, set HF_HUB_OFFLINE=1 to fail at once instead of waiting for Hub retries.')
        raise FileNotFoundError(
            f'weights for {entry.name}: no local file {local} and the Hub copy {entry.hub_id}/'
            f'{entry.hf_hub_filename} could not be fetched ({type(e).__name__}: {e}). {hint}') from e
    return verify_file(downloaded, entry)


def _part_glob(path: Path) -> List[Path]:
    return sorted(path.parent.glob(f'{glob.escape(path.name)}.part*of*')) if path.parent.is_dir() else []


def part_files(path: PathLike) -> List[Path]:
    """The committed parts of `path` (`<name>.part1ofN` ... `<name>.partNofN`) in order; [] when there are none."""
    path = Path(path)
    found = _part_glob(path)
    if not found:
        return []
    n = found[0].name.rsplit('of', 1)[-1]
    expected = [path.with_name(f'{path.name}.part{i}of{n}') for i in range(1, int(n) + 1)] if n.isdigit() else []
    if sorted(expected) != found:
        raise ValueError(f'weights parts of {path} are incomplete or mixed: {[p.name for p in found]}; expected '
                         f'{path.name}.part1ofN ... partNofN. Fetch them again (git checkout / git pull).')
    return expected


def split_parts(path: PathLike, part_mb: Optional[float] = None) -> List[Path]:
    """Write `path` as byte parts of at most `part_mb` (default `GIT_PART_MB`) MB next to it: what git holds of a
    weights/hub/ file."""
    path = Path(path)
    step = int((part_mb or GIT_PART_MB) * 2 ** 20)
    n = max(1, math.ceil(path.stat().st_size / step))
    for old in _part_glob(path):
        old.unlink()
    parts = []
    with open(path, 'rb') as f:
        for i in range(1, n + 1):
            parts.append(path.with_name(f'{path.name}.part{i}of{n}'))
            parts[-1].write_bytes(f.read(step))
    return parts


def join_parts(path: PathLike) -> Path:
    """Join the parts of `path` into `path` (atomically); when its folder is read-only, into timm_stim's cache."""
    from ..data import default_cache_dir
    path = Path(path)
    target = path if os.access(path.parent, os.W_OK) else default_cache_dir() / 'weights' / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, 'wb') as out:
        for part in part_files(path):
            with open(part, 'rb') as f:
                shutil.copyfileobj(f, out, 2 ** 22)
    return target


def resolve_pretrained_cfg(cfg: Any, directory: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None
                           ) -> Any:
    """Point a timm `PretrainedCfg` at verified weights before timm's `load_pretrained` reads it.

    A manifest tag gets `file=<verified path>` (timm then loads it, adapting `num_classes` / `in_chans`).
    A source the caller gave (`pretrained_cfg_overlay=dict(file=...)`, `hf-hub:` ids) is left to timm.
    No weights at all raises RuntimeError, as timm does.
    """
    if getattr(cfg, 'state_dict', None) is not None or getattr(cfg, 'file', None):
        return cfg
    entry = find_entry(cfg.architecture, cfg.tag, directory)
    if entry is not None and (not cfg.hf_hub_id or cfg.hf_hub_id == entry.hub_id):
        return dataclasses.replace(cfg, file=str(resolve_file(entry, directory, cache_dir)), custom_load=False)
    if cfg.hf_hub_id or cfg.url:
        return cfg
    tags = [e.name for e in read_manifest(directory, strict=False) if e.model == cfg.architecture]
    raise RuntimeError(
        f'{cfg.architecture}{"." + cfg.tag if cfg.tag else ""} has no pretrained weights '
        f'(weights with this architecture: {tags or "none yet"}; manifest: {_dir(directory) / MANIFEST_NAME}). '
        f'Use pretrained=False, a listed tag, or pretrained_cfg_overlay=dict(file=...).')


def pretrained_tag_cfgs(
        base_cfgs: Dict[str, Dict[str, Any]],
        directory: Optional[PathLike] = None,
        others: Optional[Collection[str]] = None,
) -> Dict[str, Dict[str, Any]]:
    """`{'<model>.<tag>': cfg}` for every manifest entry whose model is in `base_cfgs` (`generate_default_cfgs`).

    Entries of other models are skipped: silently when `others` is None or names them (another registration
    module takes them), else with a warning naming the manifest file.
    """
    cfgs = {}
    for entry in read_manifest(directory, strict=False):
        if entry.model not in base_cfgs:
            if others is not None and entry.model not in others:
                _warn_once(f'{_dir(directory) / MANIFEST_NAME}: entry {entry.name} names unknown model '
                              f'{entry.model!r}; skipping it. Known: {sorted(set(base_cfgs) | set(others))}.')
            continue
        cfgs[entry.name] = _pool_at_input_size({**base_cfgs[entry.model], **entry_cfg(entry)},
                                               base_cfgs[entry.model])
    return cfgs


def _pool_at_input_size(cfg: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    """A tag trained at another input size than its base cfg (resnet50_stim on CIFAR-10: 32 px, not 224) gets
    the final feature map of that size as `pool_size` (1x1, not 7x7), as timm's cfgs state it."""
    if base.get('pool_size') and base.get('input_size') and tuple(cfg['input_size']) != tuple(base['input_size']):
        cfg['pool_size'] = tuple(max(1, math.ceil(p * n / b)) for p, n, b in
                                 zip(base['pool_size'], cfg['input_size'][-2:], base['input_size'][-2:]))
    return cfg


def entry_cfg(entry: WeightsEntry) -> Dict[str, Any]:
    """The pretrained-cfg fields an entry sets (over its model's base cfg)."""
    cfg = {k: getattr(entry, k) for k in _CFG_OVERRIDES if getattr(entry, k) is not None}
    for k in ('input_size', 'mean', 'std', 'label_names'):
        if cfg.get(k) is not None:
            cfg[k] = tuple(cfg[k])
    return dict(cfg, hf_hub_id=entry.hub_id, num_classes=entry.num_classes, description=entry.describe())


def tagged_default_cfgs(
        base_cfgs: Dict[str, Dict[str, Any]],
        directory: Optional[PathLike] = None,
        others: Optional[Collection[str]] = None,
) -> Dict[str, Dict[str, Any]]:
    """The cfg table for `generate_default_cfgs`: a name with manifest weights gets its tags only (the first is the
    default, as in timm, so `list_pretrained` shows exactly the tags); a name without keeps its weightless cfg."""
    tagged = pretrained_tag_cfgs(base_cfgs, directory, others)
    with_weights = {name.split('.')[0] for name in tagged}
    return {**{n: c for n, c in base_cfgs.items() if n not in with_weights}, **tagged}


# ------------------------------------------------------------------------------------------------- writing
def known_models() -> List[str]:
    """Names a manifest entry may use: every `*_stim` model and the CIFAR base architectures."""
    from .cifar_resnet import CIFAR_ARCHS
    from .stim_zoo import STIM_BASES
    return sorted(set(STIM_BASES) | set(CIFAR_ARCHS))


def load_checkpoint_state_dict(path: PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (safetensors / plain state dict) or of a train checkpoint (`.pth.tar`:
    `state_dict`, or `state_dict_ema` with `use_ema`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist.')
    if path.suffix == '.safetensors':
        if use_ema:
            raise ValueError(f'{path} is a plain weights file: it has no EMA weights (drop use_ema).')
        from safetensors.torch import load_file
        return load_file(str(path))
    with torch.serialization.safe_globals([argparse.Namespace]):  # timm-stim train checkpoints hold their args
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(ckpt, dict) and ('state_dict' in ckpt or 'state_dict_ema' in ckpt):
        key = 'state_dict_ema' if use_ema else 'state_dict'
        if ckpt.get(key) is None:
            raise ValueError(f'{path} has no {key}' + (' (the run was trained without --model-ema)' if use_ema
                                                        else '') + f'; it holds {sorted(ckpt)}.')
        ckpt = ckpt[key]
    elif use_ema:
        raise ValueError(f'{path} is a plain state dict: it has no EMA weights (drop use_ema).')
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f'{path} is neither a state dict nor a train checkpoint with a state_dict.')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in ckpt.items()}


def build_checked_model(
        model: str,
        state_dict: Mapping[str, torch.Tensor],
        num_classes: int,
        in_chans: int = 3,
        source: str = 'the checkpoint',
) -> torch.nn.Module:
    """`model` with `num_classes` holding `state_dict` strictly; a clear ValueError for an unknown model name or a
    state dict of another architecture."""
    import timm
    known = known_models()
    if model not in known:
        raise ValueError(f'unknown model {model!r}: weights can be added for {", ".join(known)}.')
    net = timm.create_model(model, num_classes=num_classes, in_chans=in_chans)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f'{len(missing)} missing keys (e.g. {missing[:3]})' if missing else '',
                 f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})' if unexpected else '',
                 f'{len(shapes)} shape mismatches (e.g. {shapes[:2]})' if shapes else '']
        raise ValueError(f'{source} does not match {model} with num_classes={num_classes}: '
                         + '; '.join(p for p in parts if p) + '. Name the architecture the run trained.')
    net.load_state_dict(state_dict, strict=True)
    return net


def _entry_json(entry: WeightsEntry) -> Dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(entry).items()
            if v not in (None, '', {}, []) and not (k == 'hf_hub_filename' and v == 'model.safetensors')
            and not (k == 'storage_dtype' and v == 'float32')}


def write_manifest(entries: List[WeightsEntry], directory: Optional[PathLike] = None) -> Path:
    """Write the manifest atomically (a temporary file renamed over it)."""
    path = _dir(directory) / MANIFEST_NAME
    return atomic_write_text(path, json.dumps({'weights': [_entry_json(e) for e in entries]}, indent=2) + '\n')


def check_wheel_budget(entries: Collection[WeightsEntry], name: str, nbytes: int) -> None:
    """Refuse (ValueError, before anything is written) to put `nbytes` more inside the wheel for the tag `name`
    when the wheel's weights would then exceed `WHEEL_BUDGET_MB`; a replaced namesake's file does not count."""
    others = sum(e.size or 0 for e in entries if e.in_wheel and e.name != name)
    if others + nbytes > WHEEL_BUDGET_MB * 2 ** 20:
        raise ValueError(
            f'{name}: the weights inside the wheel would total {(others + nbytes) / 2 ** 20:.1f} MB, over the '
            f'{WHEEL_BUDGET_MB} MB budget that keeps the wheel under PyPI\'s 100 MB. Store it out of the wheel '
            f'(timm-stim-release --out-of-wheel, write_weights(out_of_wheel=True)), or move a non-default tag out '
            f'(timm_stim.models.weights.move_weights(\'<model>.<tag>\')). Nothing was written.')


def check_release_size(name: str, nbytes: int) -> None:
    """Refuse (ValueError, before anything is written) a stored file of the tag `name` larger than
    `RELEASE_MAX_MB`: a push cannot carry it, whatever parts git splits it into."""
    if nbytes > RELEASE_MAX_MB * 2 ** 20:
        raise ValueError(
            f'{name}: the stored file would be {nbytes / 2 ** 20:.1f} MB, over the {RELEASE_MAX_MB} MB that one '
            f'release may add (a push of this repository carries at most 256 MiB of changes). Store it in float16 '
            f'(timm-stim-release --storage auto or float16). Nothing was written.')


def _stored_name(model: str, tag: str, out_of_wheel: bool) -> str:
    return ('hub/' if out_of_wheel else '') + f'{model}.{tag}.safetensors'


def _remove_stored(directory: Path, file: str) -> None:
    path = directory / file
    for old in [path] + _part_glob(path):
        old.unlink(missing_ok=True)


def write_weights(
        state_dict: Mapping[str, torch.Tensor],
        model: str,
        tag: str,
        num_classes: int,
        directory: Optional[PathLike] = None,
        in_chans: int = 3,
        checked: bool = False,
        default: bool = False,
        out_of_wheel: bool = False,
        **info: Any,
) -> WeightsEntry:
    """Store `state_dict` as `<model>.<tag>.safetensors` (under `hub/` when larger than `WHEEL_MAX_MB` or with
    `out_of_wheel`) and add or replace its manifest entry: a new tag goes after the model's others, a replaced one
    keeps its place, and with `default` it goes first (the model's default tag, as in timm). All checks run first
    (the architecture, the wheel budget, `RELEASE_MAX_MB`): on any error nothing is written."""
    from safetensors.torch import save_file
    if not checked:
        build_checked_model(model, state_dict, num_classes, in_chans)
    directory = _dir(directory)
    entries = read_manifest(directory)  # strict: never drop entries
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    nbytes = state_dict_nbytes(tensors)
    check_release_size(f'{model}.{tag}', nbytes)
    name = _stored_name(model, tag, out_of_wheel or nbytes > WHEEL_MAX_MB * 2 ** 20)
    if _in_wheel(name):
        check_wheel_budget(entries, f'{model}.{tag}', nbytes)
    dst = directory / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        # one metadata key: safetensors writes a metadata map in random order, and the same weights must give
        # the same sha256 (a re-release of unchanged weights changes nothing)
        save_file(tensors, str(tmp), metadata={'format': 'pt'})
        dtypes = {str(v.dtype).replace('torch.', '') for v in tensors.values() if v.is_floating_point()}
        entry = WeightsEntry(model=model, tag=tag, file=name, sha256=sha256_file(tmp), size=tmp.stat().st_size,
                             num_classes=int(num_classes), storage_dtype='/'.join(sorted(dtypes)) or 'float32',
                             **info)
    if not _in_wheel(name):
        split_parts(dst)  # what git holds of it
    write_manifest(place_entry(entries, entry, default), directory)
    for old in entries:  # a re-release stored on the other side of the wheel leaves no stale copy behind
        if old.name == entry.name and old.file != name:
            _remove_stored(directory, old.file)
    return entry


def move_weights(name: str, out_of_wheel: bool = True, directory: Optional[PathLike] = None) -> WeightsEntry:
    """Move the stored file of the tag `name` (`<model>.<tag>`) out of the wheel into `hub/` (with its git parts),
    or back into the wheel (within `WHEEL_MAX_MB` and `WHEEL_BUDGET_MB`); only its manifest `file` changes, its
    bytes and sha256 stay. The file is checked against its sha256 first."""
    directory = _dir(directory)
    entries = read_manifest(directory)
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        raise ValueError(f'no weights {name!r} in {directory / MANIFEST_NAME}; known: {[e.name for e in entries]}')
    src = directory / entry.file
    if not src.is_file() and part_files(src):
        join_parts(src)
    verify_file(src, entry)
    target = _stored_name(entry.model, entry.tag, out_of_wheel)
    if target == entry.file:
        return entry
    if not out_of_wheel:
        if (entry.size or 0) > WHEEL_MAX_MB * 2 ** 20:
            raise ValueError(f'{name}: {entry.size / 2 ** 20:.1f} MB is over the {WHEEL_MAX_MB} MB per-file limit '
                             'of the wheel; it stays in hub/.')
        check_wheel_budget(entries, name, entry.size or 0)
    dst = directory / target
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if out_of_wheel:
        split_parts(dst)
    moved = dataclasses.replace(entry, file=target)
    write_manifest(place_entry(entries, moved), directory)
    _remove_stored(directory, entry.file)
    return moved


def place_entry(entries: List[WeightsEntry], entry: WeightsEntry, default: bool = False) -> List[WeightsEntry]:
    """`entries` with `entry` added or replacing its namesake in place; `default` moves it before every other
    entry of its model (the first tag of a model is its default)."""
    names = [e.name for e in entries]
    if entry.name in names and not default:
        return [entry if e.name == entry.name else e for e in entries]
    rest = [e for e in entries if e.name != entry.name]
    ours = [i for i, e in enumerate(rest) if e.model == entry.model]
    at = (ours[0] if default else ours[-1] + 1) if ours else len(rest)
    return rest[:at] + [entry] + rest[at:]


def add_weights(
        path: PathLike,
        model: str,
        tag: str,
        num_classes: int,
        directory: Optional[PathLike] = None,
        use_ema: bool = False,
        out_of_wheel: bool = False,
        **info: Any,
) -> WeightsEntry:
    """Add (or replace) the manifest entry of a trained checkpoint, storing it in the weights directory.

    `path` is a safetensors / plain state dict or a train checkpoint (`.pth.tar`: its `state_dict`, or
    `state_dict_ema` with `use_ema`). An unknown model name or a checkpoint of another architecture raises
    ValueError and writes nothing. `info` takes the optional entry fields (dataset, recipe, command, metrics, ...).
    The release command (`timm-stim-release`) also re-evaluates the weights; prefer it for published tags.
    """
    state_dict = load_checkpoint_state_dict(path, use_ema)
    build_checked_model(model, state_dict, num_classes, source=str(path))
    info.setdefault('source', f'{path}' + (' (state_dict_ema)' if use_ema else ''))
    return write_weights(state_dict, model, tag, num_classes, directory, checked=True, out_of_wheel=out_of_wheel,
                         **info)
