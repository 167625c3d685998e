"""The held-out split: a fixed, seeded set of training images that new runs never train on.

Every choice (an arm, a setting, a default, the depth configurations a tag ships and the budget picker's ranking)
is made on it, so that the test split only reports. CIFAR-10: 5,000 of the 50,000 `train` images, chosen by
`torch.randperm(50000, seed 0)[:5000]` over the ImageFolder order (classes, then file names, sorted).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Tuple

import torch

__all__ = ['HELDOUT_SIZE', 'HELDOUT_SEED', 'heldout_indices', 'split_heldout', 'heldout_record']

HELDOUT_SIZE = 5000
HELDOUT_SEED = 0


def heldout_indices(n: int, size: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """The sorted indices of the held-out images among `n` training images."""
    if not 0 < size < n:
        raise ValueError(f'a held-out split of {size} images needs more than {size} training images, got {n}.')
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def split_heldout(n: int, size: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices to train on, held-out indices), both sorted."""
    held = heldout_indices(n, size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().flatten(), held


def heldout_record(n: int, size: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED) -> Dict[str, Any]:
    """What a manifest entry or results file records of the split (the sha256 pins the exact indices)."""
    held = heldout_indices(n, size, seed)
    digest = hashlib.sha256(','.join(map(str, held.tolist())).encode()).hexdigest()
    return dict(split='train', of=n, size=size, seed=seed, indices_sha256=digest,
                rule=f'torch.randperm({n}, generator seeded {seed})[:{size}], ImageFolder order')
