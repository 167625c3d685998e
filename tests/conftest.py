"""Shared pytest fixtures for timm-stim.

Fixtures (all generic, usable by every test module):
- `repo_root`: the repository root (a `pathlib.Path`).
- `cifar10_root`: the CIFAR-10 JPEG ImageFolder (`train/` and `val/`): `$TIMM_STIM_CIFAR10` when set, else
  `<repo>/../shared/data/cifar10`; the test is skipped when it is absent. `cifar10_dir()` (plain function) returns
  the same path or None, for module-level skips; `cifar10_path()` the path looked at, present or not.
- `cifar10_subset`: a function `(split, per_class, offset=0) -> (images uint8 [N, 3, 32, 32], labels int64 [N])`
  decoding the first `per_class` JPEGs (sorted names, after skipping `offset`) of every class; results are cached
  for the whole session, so several tests share one decode.
- `cifar10_normalize`: `uint8 images -> float32`, normalised with CIFAR-10 mean / std.
- `stim_cache`: module-scoped; points `TIMM_STIM_CACHE` (the decoded-image cache of the fast data path) at a fresh
  temporary folder for one test module (and the subprocesses it starts), outside the repository and the user's
  cache, and restores it afterwards. Use it with `pytestmark = pytest.mark.usefixtures('stim_cache')`.

Torch uses at most `TIMM_STIM_TEST_THREADS` intra-op threads (default: min(4, cpu count)) so that tests do not
oversubscribe small CI machines. At the end of a run one line says how many real-data tests (CIFAR-10,
Fashion-MNIST) were skipped and why (`pytest_terminal_summary`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Tuple

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
from timm_stim.models import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402,F401  (one source for the statistics)

torch.set_num_threads(int(os.environ.get('TIMM_STIM_TEST_THREADS', min(4, os.cpu_count() or 1))))


CIFAR10_ENV = 'TIMM_STIM_CIFAR10'


def cifar10_path() -> Path:
    """Where the tests look for CIFAR-10: `$TIMM_STIM_CIFAR10` when set, else `<repo>/../shared/data/cifar10`."""
    return Path(os.environ.get(CIFAR10_ENV) or REPO_ROOT / '..' / 'shared' / 'data' / 'cifar10')


def cifar10_dir() -> Optional[Path]:
    """`cifar10_path()` (resolved) when it holds `train/` and `val/`, else None."""
    root = cifar10_path().resolve()
    return root if (root / 'train').is_dir() and (root / 'val').is_dir() else None


def require_cifar10() -> Path:
    """The CIFAR-10 folder, or skip the calling test with a reason."""
    root = cifar10_dir()
    if root is None:
        pytest.skip(f'CIFAR-10 JPEG folder not found at {cifar10_path().resolve()} (set {CIFAR10_ENV})')
    return root


@functools.lru_cache(maxsize=None)
def load_cifar10_subset(split: str, per_class: int, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode `per_class` images per class of `split` ('train' or 'val'); cached per process."""
    from PIL import Image
    root = require_cifar10()
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f'no CIFAR-10 split {split!r} at {split_dir}')
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted((split_dir / cls).glob('*.jpg'))[offset:offset + per_class]
        if len(files) < per_class:
            raise ValueError(f'{split_dir / cls} has only {len(files)} images after offset {offset}, '
                             f'asked for {per_class}')
        for f in files:
            with Image.open(f) as im:
                arr = torch.frombuffer(bytearray(im.convert('RGB').tobytes()), dtype=torch.uint8)
            images.append(arr.view(32, 32, 3).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def normalize_cifar10(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, normalised with the CIFAR-10 mean / std."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255. - mean) / std


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def cifar10_root() -> Path:
    return require_cifar10()


@pytest.fixture(scope='session')
def cifar10_subset():
    """`(split, per_class, offset=0) -> (uint8 images, labels)`; skips the test when CIFAR-10 is absent."""
    require_cifar10()
    return load_cifar10_subset


@pytest.fixture(scope='session')
def cifar10_normalize():
    return normalize_cifar10


@pytest.fixture(scope='module')
def stim_cache(tmp_path_factory) -> Path:
    """A decoded-image cache (`TIMM_STIM_CACHE`) shared by one module's runs and their subprocesses."""
    path = tmp_path_factory.mktemp('stim_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TIMM_STIM_CACHE', str(path))
        yield path


# ------------------------------------------------------------------------------------ real-data skip summary
# (the name a skip reason holds, how to give the data)
_REAL_DATA = (('CIFAR-10', lambda: f'not found at {cifar10_path().resolve()}; set {CIFAR10_ENV} to a folder '
                                   f'with train/ and val/ class folders'),
              ('Fashion-MNIST', lambda: "install Debian's dataset-fashion-mnist"))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr or '')


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line: how many tests skipped for want of real data (CIFAR-10, Fashion-MNIST), and how to give it."""
    counts = {name: 0 for name, _ in _REAL_DATA}
    for report in terminalreporter.stats.get('skipped', []):
        reason = _skip_reason(report).lower()
        name = next((n for n, _ in _REAL_DATA if n.lower() in reason), None)
        if name is not None:
            counts[name] += 1
    if sum(counts.values()):
        parts = [f'{n} without {name} ({how()})' for name, how in _REAL_DATA if (n := counts[name])]
        terminalreporter.write_line(f'timm-stim: {sum(counts.values())} real-data test(s) skipped: '
                                    + '; '.join(parts) + '.', yellow=True)
