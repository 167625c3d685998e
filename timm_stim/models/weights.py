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
manifest file (`read_manifest(strict=False)`); the writers (`add_weights`, the release command) stay strict. Model
names and tags follow timm's tag grammar (letters, digits, `_`: `check_name`), and an entry's files lie inside the
weights directory; an entry breaking either is refused.

An entry owns every file it names (`WeightsEntry.stored()` / `files()`): its weights and its sidecars, such as the
per-depth BN statistics of `depth_stats` (`<model>.<tag>.depths.safetensors`, top level). Every change of the
manifest is one read-modify-write under a file lock (`manifest_lock`, `.manifest.lock` beside it) and all or nothing
(`update_manifest`): new bytes are written under names the manifest does not use yet (a re-release whose file name
is taken gets `<model>.<tag>.<sha256[:12]>.safetensors`), each file whole, mode 0644, without a visible temporary
file while it is written (`O_TMPFILE`); then the manifest is switched in one rename; then the files only the old
entry named are removed. A kill at any moment leaves a manifest whose every file is in place.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import os
import pickle
import re
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch


__all__ = [
    'HUB_ORG', 'ENV_WEIGHTS_DIR', 'MANIFEST_NAME', 'WeightsEntry', 'weights_dir', 'read_manifest', 'find_entry',
    'sha256_file', 'verify_file', 'resolve_file', 'resolve_pretrained_cfg', 'add_weights', 'pretrained_tag_cfgs',
    'tagged_default_cfgs', 'write_weights', 'load_checkpoint_state_dict', 'build_checked_model', 'known_models',
    'write_manifest', 'place_entry', 'WHEEL_MAX_MB', 'GIT_PART_MB', 'hub_offline', 'entry_cfg', 'part_files',
    'split_parts', 'join_parts', 'WHEEL_BUDGET_MB', 'check_wheel_budget', 'move_weights', 'state_dict_nbytes',
    'RELEASE_MAX_MB', 'check_release_size', 'StoredFile', 'check_name', 'manifest_lock', 'update_manifest',
    'resolve_depth_stats', 'hub_unreachable', 'read_torch_file', 'state_dict_mismatch', 'DEPTH_STATS_HUB_NAME',
    'set_depth_stats',
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
DEPTH_STATS_HUB_NAME = 'depth_stats.safetensors'  # the sidecar's name in a Hub repository / export folder
# timm's tag grammar: `timm.create_model('<model>.<tag>')` splits at the first '.', and a tag (like a model name)
# is one word of letters, digits and '_' -- no '.', '/', spaces or '..': it also names files in the weights folder
NAME_PATTERN = re.compile(r'[A-Za-z0-9_]+')
# what a manifest's `file` may name: a file in the weights folder or its hub/ sub-folder, never a path outside
_FILE_PATTERN = re.compile(r'(hub/)?[A-Za-z0-9_][A-Za-z0-9_.-]*\.safetensors')
LOCK_NAME = '.manifest.lock'  # filelock of every read-modify-write of the manifest (git-ignored)
LOCK_TIMEOUT_S = 600


def check_name(kind: str, value: Any) -> str:
    """`value` when it is a valid model name or tag (`kind` says which, for the message); ValueError otherwise."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(f'{kind} {value!r} is not a timm tag name: use letters, digits and _ only (what '
                         f'timm.create_model("<model>.<tag>") parses; no ".", "/", spaces or "..").')
    return value


def _in_wheel(file: str) -> bool:
    return not file.startswith('hub/')


@dataclass(frozen=True)
class StoredFile:
    """One file a manifest entry owns in the weights directory (the weights, or a sidecar such as the per-depth BN
    statistics): its name there, sha256 and size, and its name in the tag's Hub repository."""
    file: str
    sha256: str
    size: Optional[int]
    hub_filename: str
    role: str = 'weights'


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
    # what the Hub card needs from benchmarks/results/ (timm_stim.cards.comparison_record), recorded at release so
    # that a card exported from an installed wheel equals one exported from a clone
    comparison: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    def stored(self) -> List[StoredFile]:
        """Every file this entry owns in the weights directory: its weights, then its sidecars. A release writes
        them all or none, a re-release replaces them all, a removed entry takes them all along."""
        files = [StoredFile(self.file, self.sha256, self.size, self.hf_hub_filename)]
        if self.depth_stats.get('file'):
            d = self.depth_stats
            files.append(StoredFile(d['file'], str(d.get('sha256', '')), d.get('size'),
                                    d.get('hf_hub_filename') or DEPTH_STATS_HUB_NAME, 'depth statistics'))
        return files

    def files(self) -> List[str]:
        """The names (relative to the weights directory) of every file this entry owns."""
        return [s.file for s in self.stored()]

    @property
    def wheel_bytes(self) -> int:
        """Bytes of this entry's files inside the wheel (top-level files, not under hub/)."""
        return sum(s.size or 0 for s in self.stored() if _in_wheel(s.file))

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
    try:
        check_name('model', entry.model), check_name('tag', entry.tag)
    except ValueError as e:
        raise ValueError(f'{path}: entry {i}: {e}') from None
    for stored in entry.stored():
        if not isinstance(stored.sha256, str) or len(stored.sha256) != 64 \
                or any(c not in '0123456789abcdef' for c in stored.sha256.lower()):
            raise ValueError(f'{path}: entry {entry.name} has sha256={stored.sha256!r} for {stored.file}, not 64 hex '
                             f'digits.')
        if not isinstance(stored.file, str) or not _FILE_PATTERN.fullmatch(stored.file) or '..' in stored.file:
            raise ValueError(f'{path}: entry {entry.name} names the file {stored.file!r}: expected <name>.safetensors '
                             f'or hub/<name>.safetensors inside the weights directory.')
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


def verify_file(path: PathLike, entry: WeightsEntry, stored: Optional[StoredFile] = None) -> Path:
    """Check `path` against the manifest entry (size when recorded, then sha256) for its weights, or for the stored
    file `stored` of it (a sidecar); raise ValueError if not."""
    path, stored = Path(path), stored or entry.stored()[0]
    what = f'{stored.role} file {path} for {entry.name}'
    if not path.is_file():
        raise FileNotFoundError(f'{what} does not exist.')
    size = path.stat().st_size
    if stored.size is not None and size != stored.size:
        state = 'truncated' if size < stored.size else 'larger than recorded'
        raise ValueError(f'{what} is {state}: {size} bytes, the manifest records {stored.size}. Delete it and fetch '
                         f'it again (git lfs pull / Hub download).')
    digest = sha256_file(path)
    if digest != stored.sha256.lower():
        raise ValueError(f'{what} has sha256 {digest}, the manifest records {stored.sha256}: the file is corrupt, '
                         f'truncated or not the one listed. Refusing to load it; delete it and fetch it again, or '
                         f'update the manifest with add_weights.')
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


_PROXY_VARS = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hub endpoint (`HF_ENDPOINT`, default https://huggingface.co) cannot be reached right now, in a few
    words naming the cause ('cannot resolve huggingface.co (DNS: ...)', 'no connection to huggingface.co:443 (...)');
    None when a TCP connection to it opens within `timeout` seconds, or when a proxy is configured (then only a
    real request can tell). Takes at most about `timeout` + 1 s, so that no caller waits for a minute of retries."""
    from urllib.parse import urlparse
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    try:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = 'https://huggingface.co'
    url = urlparse(endpoint)
    host, port = url.hostname or 'huggingface.co', url.port or (80 if url.scheme == 'http' else 443)
    found: Dict[str, Optional[str]] = {}

    def probe() -> None:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            found['why'] = f'cannot resolve {host} (DNS: {getattr(e, "strerror", None) or e})'
            return
        last: Optional[OSError] = None
        for family, kind, proto, _, address in addresses[:3]:
            try:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(timeout)
                    s.connect(address)
                found['why'] = None
                return
            except OSError as e:
                last = e
        found['why'] = f'no connection to {host}:{port} ({getattr(last, "strerror", None) or last or "no address"})'

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if thread.is_alive():
        return f'no answer from {host} within {timeout:g} s (DNS or connection)'
    return found.get('why')


def _get_it(entry: WeightsEntry) -> str:
    """How to get a missing stored file, for an error message."""
    pinned = ' once the tag is published (its manifest entry pins no Hub revision yet)' if not entry.hub_revision \
        else f' (online, revision {entry.hub_revision})'
    return (f'get it from a clone of timm-stim (`git clone --depth 1 <repository>`; pip install -e <clone>, or '
            f'TIMM_STIM_WEIGHTS_DIR=<clone>/weights: its weights/hub/ parts are joined on first use), or from the '
            f'Hub{pinned}.')


def resolve_file(
        entry: WeightsEntry,
        directory: Optional[PathLike] = None,
        cache_dir: Optional[PathLike] = None,
        stored: Optional[StoredFile] = None,
) -> Path:
    """The verified local path of `entry`'s weights (or of its stored file `stored`, a sidecar): the weights
    directory's file, else its git parts (joined), else the Hub copy.

    The Hub copy is read at the pinned revision of `hf_hub_id` (`org/name@rev`); with `HF_HUB_OFFLINE=1` only the
    local HF cache is consulted, and when the Hub cannot be reached (no DNS, no connection: `hub_unreachable`) the
    error comes in seconds, in one line naming where the file was looked for and how to get it.
    """
    stored = stored or entry.stored()[0]
    local = _dir(directory) / stored.file
    if local.exists():
        try:
            return verify_file(local, entry, stored)
        except ValueError:
            if not part_files(local):
                raise  # a joined file older than its parts (a re-released tag) is joined again below
    if part_files(local):  # a clone: the committed parts of a weights/hub/ file
        return verify_file(join_parts(local), entry, stored)
    where = (f'{stored.role} of {entry.name} not found: no local file {local} (nor its git parts {local.name}.part*), '
             f'and the Hub copy {entry.hub_id}/{stored.hub_filename}')
    offline = hub_offline()
    unreachable = None if offline else hub_unreachable()
    try:
        from huggingface_hub import hf_hub_download
        downloaded = hf_hub_download(entry.hub_repo, stored.hub_filename, revision=entry.hub_revision,
                                     cache_dir=cache_dir, local_files_only=offline or bool(unreachable))
    except Exception as e:  # offline, missing repository or file: one line, not the Hub client's paragraph
        if offline:
            why = 'is not in the local HF cache (HF_HUB_OFFLINE is set, so only the cache was searched)'
        elif unreachable:
            why = f'is not in the local HF cache and the Hub cannot be reached: {unreachable}'
        else:
            why = (f'could not be fetched ({type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}; without '
                   f'network, HF_HUB_OFFLINE=1 makes this fail at once)')
        raise FileNotFoundError(f'{where} {why}; {_get_it(entry)}') from None
    return verify_file(downloaded, entry, stored)


def resolve_depth_stats(entry: WeightsEntry, directory: Optional[PathLike] = None,
                        cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The verified local path of `entry`'s per-depth BN statistics (`resolve_file`), None when it ships none."""
    sidecars = entry.stored()[1:]
    return resolve_file(entry, directory, cache_dir, sidecars[0]) if sidecars else None


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
    weights/hub/ file. Each part is written whole or not at all (`_write_file`)."""
    return _write_parts(Path(path), Path(path).read_bytes(), part_mb)


def _write_parts(path: Path, data: bytes, part_mb: Optional[float] = None) -> List[Path]:
    step = int((part_mb or GIT_PART_MB) * 2 ** 20)
    n = max(1, math.ceil(len(data) / step))
    parts = [_write_file(path.with_name(f'{path.name}.part{i}of{n}'), memoryview(data)[(i - 1) * step:i * step])
             for i in range(1, n + 1)]
    for old in set(_part_glob(path)) - set(parts):  # parts of another count under this name
        old.unlink()
    return parts


def _write_file(path: Path, data: Union[bytes, memoryview]) -> Path:
    """Create or replace `path` with `data`, mode 0644, whole or not at all. While the bytes are written the file
    has no name (Linux `O_TMPFILE`), so a kill -9 leaves nothing behind; it is then linked as `.<name>.<pid>.tmp`
    and renamed over `path` (the one moment a kill could leave that name, which the next release sweeps). Without
    `O_TMPFILE` the bytes go to `.<name>.<pid>.tmp` directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.unlink(missing_ok=True)
    try:
        if not _link_unnamed(path.parent, data, tmp):
            with open(tmp, 'wb') as f:
                _write_fd(f.fileno(), data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _link_unnamed(directory: Path, data: Union[bytes, memoryview], name: Path) -> bool:
    """Write `data` to a file without a name in `directory` (`O_TMPFILE`), then link it as `name`; False where the
    system cannot (then nothing was linked)."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):  # not Linux, or a file system without O_TMPFILE
        return False
    try:
        _write_fd(fd, data)
        folder = os.open(directory, os.O_RDONLY)
        try:  # a dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), which links the open file, not the symlink
            os.link(f'/proc/self/fd/{fd}', name.name, dst_dir_fd=folder, follow_symlinks=True)
        except OSError:  # no /proc
            return False
        finally:
            os.close(folder)
        return True
    finally:
        os.close(fd)


def _write_fd(fd: int, data: Union[bytes, memoryview]) -> None:
    view = memoryview(data).cast('B')
    while view:
        view = view[os.write(fd, view):]
    os.fchmod(fd, 0o644)  # readable by all, as git checks files out (safetensors itself writes 0600)
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def join_parts(path: PathLike) -> Path:
    """Join the parts of `path` into `path` (whole or not at all); when its folder is read-only, into timm_stim's
    cache."""
    from ..data import default_cache_dir
    path = Path(path)
    target = path if os.access(path.parent, os.W_OK) else default_cache_dir() / 'weights' / path.name
    return _write_file(target, b''.join(part.read_bytes() for part in part_files(path)))


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


def read_torch_file(path: PathLike, what: str = 'checkpoint') -> Any:
    """`torch.load` of a checkpoint with `weights_only=True` (plus `argparse.Namespace`: timm-stim-train checkpoints
    hold their args), memory-mapped where the format allows. A refused pickle or a truncated / non-torch file is a
    ValueError in one line that names the file (`what`: how the user gave it, e.g. '--resume'); the advice is never
    to lift `weights_only`."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as e:
                if 'mmap' not in str(e):
                    raise
                return torch.load(path, map_location='cpu', weights_only=True)  # the legacy (non-zip) format
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        found = re.search(r'GLOBAL (\S+)', str(e))
        if found or 'weights only' in str(e).lower():
            raise ValueError(
                f'{what} {path}: refused to load it: it holds a Python object'
                + (f' ({found.group(1)})' if found else '') + ' that is neither a tensor nor plain data, and '
                'unpickling it could run any code. timm-stim reads checkpoints of timm-stim-train or timm, state '
                'dicts and .safetensors files only.') from None
        raise ValueError(_unreadable(path, what, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(_unreadable(path, what, e)) from None


def _unreadable(path: Path, what: str, error: BaseException) -> str:
    size = path.stat().st_size if path.is_file() else 0
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split('. ')[0][:160]
    reason = '' if 'weights_only' in reason else f'; {reason}'
    return (f'{what} {path} is truncated or not a PyTorch checkpoint ({size} bytes{reason}): use an intact copy, or '
            f'an earlier checkpoint of that run.')


def load_checkpoint_state_dict(path: PathLike, use_ema: bool = False, what: str = 'checkpoint'
                               ) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (safetensors / plain state dict) or of a train checkpoint (`.pth.tar`:
    `state_dict`, or `state_dict_ema` with `use_ema`); a ValueError in one line for a file that cannot be read
    (`read_torch_file`; `what` names it as the user gave it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} does not exist.')
    if path.suffix == '.safetensors':
        if use_ema:
            raise ValueError(f'{path} is a plain weights file: it has no EMA weights (drop use_ema).')
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors' own error type: a truncated or foreign file
            raise ValueError(_unreadable(path, what, e)) from None
    ckpt = read_torch_file(path, what)
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


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """How `given` differs from a model's `expected` state dict ('3 missing keys (e.g. [...]); 1 shape mismatches
    (e.g. [...])'), '' when it fits."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f'{k} {tuple(given[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f'{len(missing)} missing keys (e.g. {missing[:3]})' if missing else '',
             f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})' if unexpected else '',
             f'{len(shapes)} shape mismatches (e.g. {shapes[:2]})' if shapes else '']
    return '; '.join(p for p in parts if p)


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
    problem = state_dict_mismatch(net.state_dict(), state_dict)
    if problem:
        raise ValueError(f'{source} does not match {model} with num_classes={num_classes}: {problem}. Name the '
                         f'architecture the run trained.')
    net.load_state_dict(state_dict, strict=True)
    return net


def _entry_json(entry: WeightsEntry) -> Dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(entry).items()
            if v not in (None, '', {}, []) and not (k == 'hf_hub_filename' and v == 'model.safetensors')
            and not (k == 'storage_dtype' and v == 'float32')}


def write_manifest(entries: List[WeightsEntry], directory: Optional[PathLike] = None) -> Path:
    """Write the manifest whole or not at all (`_write_file`). A read-modify-write goes through `update_manifest`,
    which holds the manifest lock."""
    path = _dir(directory) / MANIFEST_NAME
    return _write_file(path, (json.dumps({'weights': [_entry_json(e) for e in entries]}, indent=2) + '\n').encode())


_HELD: Dict[str, int] = {}  # manifest locks this process holds (directory -> depth), so that nesting never deadlocks


@contextmanager
def manifest_lock(directory: Optional[PathLike] = None) -> Iterator[Path]:
    """Hold the weights directory's lock file (`LOCK_NAME`, a `filelock`) while its manifest is read, changed and
    written, so that two releases at once both land. Re-entrant within a process; yields the directory."""
    from filelock import FileLock, Timeout
    directory = _dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield directory
        finally:
            _HELD[key] -= 1
        return
    lock = FileLock(str(directory / LOCK_NAME))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise ValueError(f'{directory / LOCK_NAME}: another release, move or push has held the manifest for '
                         f'{LOCK_TIMEOUT_S} s; wait for it to end.') from None
    _HELD[key] = 1
    try:
        yield directory
    finally:
        del _HELD[key]
        lock.release()


Change = Callable[[List[WeightsEntry]], Tuple[List[WeightsEntry], Dict[str, bytes]]]


def update_manifest(change: Change, directory: Optional[PathLike] = None) -> List[WeightsEntry]:
    """One read-modify-write of the manifest under its lock, all or nothing. `change(entries)` gets the manifest as it
    is now (read strictly: no entry is ever dropped) and returns the new entries and the new files they name
    (`{name in the weights directory: bytes}`; never other bytes under a name the current manifest names). The new
    files are written first (each whole, mode 0644; under hub/ with their git parts), then the manifest is switched in
    one rename, then every file only the old entries owned is removed (with its parts). A kill at any moment leaves
    the old manifest or the new one, each with every file it names. Returns the new entries."""
    with manifest_lock(directory) as directory:
        old = read_manifest(directory)
        new, files = change(list(old))
        owned = {s.file: s.sha256 for e in old for s in e.stored()}
        for name, data in files.items():
            if name in owned and hashlib.sha256(data).hexdigest() != owned[name]:
                raise RuntimeError(f'{name} is named by the manifest: a release writes other bytes under a new name.')
        _sweep(directory, old + new, {Path(n).name.split('.safetensors')[0] for n in files})
        for name, data in files.items():
            _write_file(directory / name, data)
            if not _in_wheel(name):
                _write_parts(directory / name, data)  # what git holds of it
        write_manifest(new, directory)
        kept = {f for e in new for f in e.files()}
        for name in set(owned) - kept:
            _remove_stored(directory, name)
    return new


def _sweep(directory: Path, entries: Sequence[WeightsEntry], stems: Collection[str]) -> None:
    """Remove what a killed writer left: its temporary files (`.<name>.<pid>.tmp` of a process that has ended) and
    files of the tags being written that no entry names (written by a release killed before its manifest switch)."""
    owned = {p for e in entries for f in e.files() for p in [directory / f] + _part_glob(directory / f)}
    tags = {'.'.join(stem.split('.')[:2]) for stem in stems}
    for folder in (directory, directory / 'hub'):
        for path in folder.glob('.*.tmp') if folder.is_dir() else []:
            if _stale(path):
                path.unlink(missing_ok=True)
        for tag in tags:
            for path in folder.glob(f'{glob.escape(tag)}.*') if folder.is_dir() else []:
                if path not in owned and not path.name.endswith('.tmp') and path.is_file():
                    path.unlink(missing_ok=True)


def _stale(tmp: Path) -> bool:
    """A `.<name>.<pid>.tmp` whose writer has ended (or, without /proc to ask, one over a day old)."""
    found = re.fullmatch(r'\..+\.(\d+)\.tmp', tmp.name)
    if not found or int(found.group(1)) == os.getpid():
        return False
    if Path('/proc/self').is_dir():
        return not Path(f'/proc/{found.group(1)}').exists()
    return tmp.stat().st_mtime < time.time() - 86400


def check_wheel_budget(entries: Collection[WeightsEntry], name: str, nbytes: int) -> None:
    """Refuse (ValueError, before anything is written) to put `nbytes` more inside the wheel for the tag `name`
    when the wheel's weights would then exceed `WHEEL_BUDGET_MB`; a replaced namesake's files do not count."""
    others = sum(e.wheel_bytes for e in entries if e.name != name)
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


def _fresh_name(canonical: str, sha256: str, old: Optional[WeightsEntry]) -> str:
    """Where new bytes are stored: where the entry they replace keeps the same bytes (in the same folder), else
    `canonical`, unless that entry owns that name with other bytes; then `<stem>.<sha256[:12]>.safetensors`, so that
    no file the manifest names is ever written over with other bytes."""
    owned = {s.file: s.sha256 for s in old.stored()} if old is not None else {}
    same = [f for f, sha in owned.items() if sha == sha256 and _in_wheel(f) == _in_wheel(canonical)]
    if same:
        return same[0]
    if canonical not in owned:
        return canonical
    return f'{canonical[:-len(".safetensors")]}.{sha256[:12]}.safetensors'


def _remove_stored(directory: Path, file: str) -> None:
    path = directory / file
    for old in [path] + _part_glob(path):
        old.unlink(missing_ok=True)


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    # one metadata key: safetensors writes a metadata map in random order, and the same weights must give the same
    # sha256 (a re-release of unchanged weights changes nothing)
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={'format': 'pt'})


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
        depth_stats: Optional[Tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]] = None,
        **info: Any,
) -> WeightsEntry:
    """Store `state_dict` as `<model>.<tag>.safetensors` (under `hub/` when larger than `WHEEL_MAX_MB` or with
    `out_of_wheel`) and add or replace its manifest entry: a new tag goes after the model's others, a replaced one
    keeps its place, and with `default` it goes first (the model's default tag, as in timm). `depth_stats`:
    (tensors, fields) of the per-depth BN statistics shipped beside the weights as `<model>.<tag>.depths.safetensors`
    (top level, in the wheel, also for a hub/ tag; the entry's `depth_stats` gets `fields` plus file, sha256, size and
    hf_hub_filename); a re-release without it drops the old sidecar. All checks run first (the names, the
    architecture, the wheel budget, `RELEASE_MAX_MB`): on any error nothing is written. The release is all or nothing
    (`update_manifest`): a re-release never writes over the files the manifest names (new bytes get new names), so a
    kill leaves the old tag loadable."""
    name = f'{check_name("model", model)}.{check_name("tag", tag)}'
    if not checked:
        build_checked_model(model, state_dict, num_classes, in_chans)
    nbytes = state_dict_nbytes(state_dict)
    check_release_size(name, nbytes)
    folder = 'hub/' if out_of_wheel or nbytes > WHEEL_MAX_MB * 2 ** 20 else ''
    blobs = {f'{folder}{name}.safetensors': _safetensors_bytes(state_dict)}
    if depth_stats is not None:  # top level even beside a hub/ file: it ships in the wheel (a tenth of the weights)
        blobs[f'{name}.depths.safetensors'] = _safetensors_bytes(depth_stats[0])
    dtypes = {str(v.dtype).replace('torch.', '') for v in state_dict.values() if v.is_floating_point()}
    made: List[WeightsEntry] = []

    def change(entries: List[WeightsEntry]) -> Tuple[List[WeightsEntry], Dict[str, bytes]]:
        old = next((e for e in entries if e.name == name), None)
        files, stored = {}, []
        for canonical, data in blobs.items():
            sha = hashlib.sha256(data).hexdigest()
            stored.append((_fresh_name(canonical, sha, old), sha, len(data)))
            files[stored[-1][0]] = data
        sidecar = dict(depth_stats[1], file=stored[1][0], sha256=stored[1][1], size=stored[1][2],
                       hf_hub_filename=DEPTH_STATS_HUB_NAME) if depth_stats is not None else {}
        entry = WeightsEntry(model=model, tag=tag, file=stored[0][0], sha256=stored[0][1], size=stored[0][2],
                             num_classes=int(num_classes), storage_dtype='/'.join(sorted(dtypes)) or 'float32',
                             depth_stats=sidecar, **info)
        if entry.wheel_bytes:
            check_wheel_budget(entries, name, entry.wheel_bytes)
        made.append(entry)
        return place_entry(entries, entry, default), files

    update_manifest(change, directory)
    return made[-1]


def move_weights(name: str, out_of_wheel: bool = True, directory: Optional[PathLike] = None) -> WeightsEntry:
    """Move the weights file of the tag `name` (`<model>.<tag>`) out of the wheel into `hub/` (with its git parts),
    or back into the wheel (within `WHEEL_MAX_MB` and `WHEEL_BUDGET_MB`); its sidecars stay in the wheel. Only the
    manifest's `file` changes, the bytes and sha256 stay. The file is checked against its sha256 first; the move is
    all or nothing, as a release (`update_manifest`)."""
    made: List[WeightsEntry] = []

    def change(entries: List[WeightsEntry]) -> Tuple[List[WeightsEntry], Dict[str, bytes]]:
        entry = _entry_named(entries, name, directory)
        if entry.in_wheel != out_of_wheel:
            made.append(entry)
            return entries, {}
        new = dataclasses.replace(entry, file=('hub/' if out_of_wheel else '') + entry.file.split('/')[-1])
        if not out_of_wheel:
            if (entry.size or 0) > WHEEL_MAX_MB * 2 ** 20:
                raise ValueError(f'{name}: {entry.size / 2 ** 20:.1f} MB is over the {WHEEL_MAX_MB} MB per-file '
                                 f'limit of the wheel; it stays in hub/.')
            check_wheel_budget(entries, name, new.wheel_bytes)
        made.append(new)
        return place_entry(entries, new), {new.file: _local_bytes(_dir(directory), entry, entry.stored()[0])}

    update_manifest(change, directory)
    return made[-1]


def set_depth_stats(name: str, data: Optional[bytes], fields: Optional[Mapping[str, Any]] = None,
                    directory: Optional[PathLike] = None, **changes: Any) -> WeightsEntry:
    """Attach the per-depth BN statistics file `data` (safetensors bytes) to the tag `name` as its `depth_stats`
    sidecar (`fields` plus file, sha256, size, hf_hub_filename), replacing the one it has; `data=None` drops it.
    `changes` sets other fields of the entry in the same switch (e.g. `depths`). All or nothing, under the manifest
    lock, as a release (`update_manifest`): the new file gets a name the manifest does not use yet, the old one is
    removed after the switch."""
    made: List[WeightsEntry] = []

    def change(entries: List[WeightsEntry]) -> Tuple[List[WeightsEntry], Dict[str, bytes]]:
        entry, files, sidecar = _entry_named(entries, name, directory), {}, {}
        if data is not None:
            sha = hashlib.sha256(data).hexdigest()
            file = _fresh_name(f'{name}.depths.safetensors', sha, entry)
            files[file] = bytes(data)
            sidecar = dict(fields or {}, file=file, sha256=sha, size=len(data), hf_hub_filename=DEPTH_STATS_HUB_NAME)
        new = dataclasses.replace(entry, depth_stats=sidecar, **changes)
        if new.wheel_bytes:
            check_wheel_budget(entries, name, new.wheel_bytes)
        made.append(new)
        return place_entry(entries, new), files

    update_manifest(change, directory)
    return made[-1]


def _entry_named(entries: Sequence[WeightsEntry], name: str, directory: Optional[PathLike]) -> WeightsEntry:
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        raise ValueError(f'no weights {name!r} in {_dir(directory) / MANIFEST_NAME}; known: '
                         f'{[e.name for e in entries]}')
    return entry


def _local_bytes(directory: Path, entry: WeightsEntry, stored: StoredFile) -> bytes:
    """The bytes of one stored file of `entry` in `directory` (joined from its git parts if need be), sha256-checked."""
    path = directory / stored.file
    if not path.is_file() and part_files(path):
        join_parts(path)
    return verify_file(path, entry, stored).read_bytes()


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
    check_name('model', model), check_name('tag', tag)  # before the checkpoint is read
    state_dict = load_checkpoint_state_dict(path, use_ema)
    build_checked_model(model, state_dict, num_classes, source=str(path))
    info.setdefault('source', f'{path}' + (' (state_dict_ema)' if use_ema else ''))
    return write_weights(state_dict, model, tag, num_classes, directory, checked=True, out_of_wheel=out_of_wheel,
                         **info)
