"""Sub-network sampling spaces: `st`, `stpp` and user-given per-stage kept-sets, with seeded draws.

- `st` (ST, arXiv:2210.04153 §3): every stage keeps a prefix of 1..d blocks (its allowed range), drawn uniformly
  and independently per stage. ResNet-50 [3, 4, 6, 3]: 216 configurations, the full network among them.
- `stpp` (ST++ inter-stage rule, arXiv:2305.02507 §3.3): the first and the last stage are never thinned; a middle
  stage loses at most a few blocks from its end. For ResNet-50 this is exactly the released "space3"
  (stage keeps {3}, {3, 4}, {3, 4, 5, 6}, {3}: 8 configurations). Our generalisation to other depths, chosen
  so that it reproduces space3: a middle stage of d blocks may drop at most one block when d <= 4 and at most
  floor(d / 2) blocks when d > 4 (never below the stage's own minimum). E.g. ResNet-101 [3, 4, 23, 3] keeps
  {3}, {3, 4}, {12..23}, {3}; CIFAR ResNet-20 [3, 3, 3] keeps {3}, {2, 3}, {3}. A network with two stages has
  no middle stage, so the rule thins the second; a single-stage network (ViT) applies it to its one stage
  (ViT-Ti, 12 blocks: keeps 6..12).
- user-given: a list of per-stage kept-sets, e.g. `[[3], [3, 4], [3, 4, 5, 6], [3]]`, or the string
  `"3|3,4|3-6|3"`.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import List, Optional, Sequence, Tuple, Union

__all__ = ['SPACES', 'build_space', 'parse_space', 'stpp_kept_set', 'DepthSampler', 'sample_depths']

SPACES = ('st', 'stpp')
Space = List[List[int]]


def stpp_kept_set(lo: int, hi: int) -> List[int]:
    """Kept depths of a middle stage under the ST++ rule: drop at most 1 block if hi <= 4, else floor(hi / 2)."""
    max_drop = 1 if hi <= 4 else hi // 2
    return list(range(max(lo, hi - max_drop), hi + 1))


def parse_space(text: str) -> Space:
    """Parse `"3|3,4|3-6|3"` (stages separated by '|', values by ',', ranges with '-') into kept-sets."""
    if not any(c.isdigit() for c in text):
        raise ValueError(f"unknown sampling space {text!r}: use one of {SPACES} or per-stage kept-sets "
                         f"such as '3|3,4|3-6|3'.")
    space = []
    for part in text.split('|'):
        kept = set()
        for tok in filter(None, (t.strip() for t in part.split(','))):
            try:
                a, b = (int(v) for v in tok.split('-', 1)) if '-' in tok else (int(tok), int(tok))
            except ValueError:
                raise ValueError(f'bad kept-set entry {tok!r} in {text!r}: write depths like "3|3,4|3-6|3" '
                                 f'(stages split by "|", values by ",", ranges "lo-hi").') from None
            if a > b:
                raise ValueError(f'bad kept-set range {tok!r} in {text!r}: write it as lo-hi with lo <= hi.')
            kept.update(range(a, b + 1))
        if not kept:
            raise ValueError(f'stage {len(space)} of {text!r} has an empty kept-set: every stage must keep at '
                             f'least one depth.')
        space.append(sorted(kept))
    return space


def build_space(space: Union[str, Sequence[Sequence[int]]], ranges: Sequence[Tuple[int, int]]) -> Space:
    """Resolve a space name or user-given kept-sets into validated per-stage kept-sets.

    `ranges` are the per-stage (fewest, most) kept blocks of the model (`depth.depth_ranges`).
    """
    if isinstance(space, str) and space in SPACES:
        if space == 'st':
            return [list(range(lo, hi + 1)) for lo, hi in ranges]
        n = len(ranges)
        fixed = {0, n - 1} if n > 2 else ({0} if n == 2 else set())
        return [[hi] if i in fixed else stpp_kept_set(lo, hi) for i, (lo, hi) in enumerate(ranges)]
    if isinstance(space, str):
        space = parse_space(space)
    space = [sorted({int(d) for d in kept}) for kept in space]
    if len(space) != len(ranges):
        raise ValueError(f'sampling space has {len(space)} stages; the model has {len(ranges)}.')
    for i, (kept, (lo, hi)) in enumerate(zip(space, ranges)):
        if not kept:
            raise ValueError(f'stage {i} has an empty kept-set: every stage must keep at least one depth.')
        bad = [d for d in kept if not lo <= d <= hi]
        if bad:
            raise ValueError(f'stage {i} can keep {lo}..{hi} blocks; kept-set has {bad}.')
    return space


class DepthSampler:
    """Seeded sampler of per-stage depths and sub-network input sizes.

    Its own `random.Random` makes draws independent of the global RNGs and identical on every rank, so
    DDP processes agree on the sub-networks of each step. `state_dict` / `load_state_dict` resume exactly.
    """

    def __init__(self, space: Space, seed: int = 0):
        self.space = [list(k) for k in space]
        self.seed = seed
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return math.prod(len(k) for k in self.space)

    def configurations(self) -> List[Tuple[int, ...]]:
        return [tuple(c) for c in itertools.product(*self.space)]

    def sample_depths(self) -> Tuple[int, ...]:
        """One configuration: each stage's depth uniform over its kept-set, independently per stage."""
        return sample_depths(self.space, self.rng)

    def sample_size(self, size: int, min_scale: Optional[float]) -> Optional[int]:
        """Sub-network input side: uniform over the integers [int(min_scale * size), size] (ST++ §3.2)."""
        if min_scale is None or min_scale >= 1:
            return None
        return self.rng.randint(max(1, int(min_scale * size)), size)

    def state_dict(self) -> dict:
        return {'seed': self.seed, 'rng': self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state['seed']
        self.rng.setstate(_as_rng_state(state['rng']))


def _as_rng_state(state):
    """random.Random state as a tuple of tuples (after a round trip through lists, e.g. JSON)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def sample_depths(space: Space, generator: Optional[random.Random] = None) -> Tuple[int, ...]:
    """Draw one per-stage depth configuration from `space` (uniform and independent per stage)."""
    rng = generator or random
    return tuple(rng.choice(kept) for kept in space)
