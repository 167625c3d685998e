"""Sampling spaces (`st`, `stpp`, user kept-sets) and the seeded `DepthSampler`."""
import collections
import copy
import itertools
import pickle

import pytest
import timm
import torch

from timm_stim import DepthSampler, build_space, depth_ranges, parse_space, sample_depths

RESNET50 = [(1, 3), (1, 4), (1, 6), (1, 3)]  # depth_ranges of timm's resnet50
RELEASED_SPACE3 = {(3, 3, 3, 3), (3, 3, 4, 3), (3, 3, 5, 3), (3, 3, 6, 3),
                   (3, 4, 3, 3), (3, 4, 4, 3), (3, 4, 5, 3), (3, 4, 6, 3)}

# upper 0.001 quantiles of the chi-square distribution (scipy.stats.chi2.ppf(0.999, df)), used when scipy is
# not installed
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 8: 26.124, 10: 29.588,
            15: 37.697, 17: 40.790, 19: 43.820, 23: 49.728, 215: 284.815}


def _chi2_critical(df):
    try:
        from scipy.stats import chi2
        return float(chi2.ppf(0.999, df))
    except ImportError:
        return CHI2_999[df]


def _chi2(observed, expected):
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


def test_resnet50_ranges_from_model():
    assert depth_ranges(timm.create_model('resnet50')) == RESNET50


def test_stpp_resnet50_is_released_space3():
    space = build_space('stpp', RESNET50)
    assert space == [[3], [3, 4], [3, 4, 5, 6], [3]]
    sampler = DepthSampler(space)
    assert set(sampler.configurations()) == RELEASED_SPACE3
    assert len(sampler) == 8
    assert {sampler.sample_depths() for _ in range(500)} == RELEASED_SPACE3


def test_st_resnet50_has_216_configs():
    space = build_space('st', RESNET50)
    sampler = DepthSampler(space)
    configs = sampler.configurations()
    assert len(sampler) == len(configs) == len(set(configs)) == 216
    assert (3, 4, 6, 3) in configs and (1, 1, 1, 1) in configs


def test_stpp_generalisation_documented_cases():
    # ResNet-101 [3, 4, 23, 3], CIFAR ResNet-20 [3, 3, 3], two stages, one stage (ViT-Ti)
    assert build_space('stpp', [(1, 3), (1, 4), (1, 23), (1, 3)]) == [[3], [3, 4], list(range(12, 24)), [3]]
    assert build_space('stpp', [(1, 3)] * 3) == [[3], [2, 3], [3]]
    assert build_space('stpp', [(1, 2), (1, 5)]) == [[2], [3, 4, 5]]
    assert build_space('stpp', [(1, 12)]) == [list(range(6, 13))]
    # never below a stage's own minimum
    assert build_space('stpp', [(1, 3), (4, 5), (1, 3)]) == [[3], [4, 5], [3]]


def test_st_chi_square_uniform_and_independent():
    """20,000 draws from ResNet-50's `st` space: each stage uniform over 1..d, stages pairwise independent."""
    space = build_space('st', RESNET50)
    sampler = DepthSampler(space, seed=2024)
    n = 20000
    draws = [sampler.sample_depths() for _ in range(n)]
    for i, kept in enumerate(space):
        counts = collections.Counter(d[i] for d in draws)
        assert set(counts) == set(kept)
        stat = _chi2([counts[k] for k in kept], [n / len(kept)] * len(kept))
        assert stat < _chi2_critical(len(kept) - 1), f'stage {i} not uniform: chi2={stat:.1f}'
    # independence: chi-square on the joint of two stages against the product of uniforms
    for i, j in [(1, 2), (0, 3), (2, 3)]:
        cells = list(itertools.product(space[i], space[j]))
        counts = collections.Counter((d[i], d[j]) for d in draws)
        stat = _chi2([counts[c] for c in cells], [n / len(cells)] * len(cells))
        assert stat < _chi2_critical(len(cells) - 1), f'stages {i},{j} not independent: chi2={stat:.1f}'
    # and the whole configuration is uniform over the 216
    counts = collections.Counter(draws)
    stat = _chi2([counts[c] for c in sampler.configurations()], [n / 216] * 216)
    assert stat < _chi2_critical(215)


def test_chi_square_detects_a_biased_sampler():
    """The statistic used above really rejects a non-uniform stage (guards the test itself)."""
    import random
    rng = random.Random(0)
    n = 20000
    draws = [rng.choice([1, 2, 3, 3]) for _ in range(n)]
    counts = collections.Counter(draws)
    assert _chi2([counts[k] for k in (1, 2, 3)], [n / 3] * 3) > _chi2_critical(2)


def test_seeds_reproduce_and_differ():
    space = build_space('st', RESNET50)
    a = [DepthSampler(space, seed=7).sample_depths() for _ in range(1)]
    s1, s2, s3 = DepthSampler(space, seed=7), DepthSampler(space, seed=7), DepthSampler(space, seed=8)
    d1 = [s1.sample_depths() for _ in range(50)]
    d2 = [s2.sample_depths() for _ in range(50)]
    d3 = [s3.sample_depths() for _ in range(50)]
    assert d1 == d2 and d1 != d3 and d1[0] == a[0]
    z1 = [s1.sample_size(224, 0.43) for _ in range(50)]
    z2 = [s2.sample_size(224, 0.43) for _ in range(50)]
    assert z1 == z2
    # independent of the global RNGs
    import random
    s4 = DepthSampler(space, seed=7)
    random.seed(1)
    torch.manual_seed(1)
    assert [s4.sample_depths() for _ in range(50)] == d1


@pytest.mark.parametrize('roundtrip', ['copy', 'pickle', 'torch', 'lists'])
def test_state_dict_roundtrip_resumes(roundtrip, tmp_path):
    space = build_space('stpp', RESNET50)
    s = DepthSampler(space, seed=3)
    for _ in range(17):
        s.sample_depths()
        s.sample_size(32, 0.43)
    state = s.state_dict()
    if roundtrip == 'copy':
        state = copy.deepcopy(state)
    elif roundtrip == 'pickle':
        state = pickle.loads(pickle.dumps(state))
    elif roundtrip == 'torch':
        torch.save(state, tmp_path / 's.pt')
        state = torch.load(tmp_path / 's.pt', weights_only=False)
    else:  # JSON-like: tuples become lists
        import json
        state = json.loads(json.dumps(state))
    expected = [(s.sample_depths(), s.sample_size(32, 0.43)) for _ in range(30)]
    r = DepthSampler(space, seed=999)
    r.load_state_dict(state)
    assert r.seed == 3
    assert [(r.sample_depths(), r.sample_size(32, 0.43)) for _ in range(30)] == expected


def test_user_kept_sets():
    assert parse_space('3|3,4|3-6|3') == [[3], [3, 4], [3, 4, 5, 6], [3]]
    assert parse_space(' 1 , 3 | 2-3 ,1 | 6 | 1-3') == [[1, 3], [1, 2, 3], [6], [1, 2, 3]]
    space = build_space('3|3,4|3-6|3', RESNET50)
    assert set(DepthSampler(space).configurations()) == RELEASED_SPACE3
    space = build_space([[3], (4, 3, 4), {2, 6}, [1]], RESNET50)
    assert space == [[3], [3, 4], [2, 6], [1]]
    s = DepthSampler(space, seed=0)
    assert {s.sample_depths() for _ in range(300)} == {(3, a, b, 1) for a in (3, 4) for b in (2, 6)}


@pytest.mark.parametrize('space,match', [
    ('stpp+', 'unknown sampling space'),
    ('ST', 'unknown sampling space'),
    ('', 'unknown sampling space'),
    ('3||3-6|3', 'empty kept-set'),
    ([[3], [], [3], [3]], 'empty kept-set'),
    ('3|3,4|3-7|3', 'can keep 1..6'),
    ('0|3|3|3', 'can keep 1..3'),
    ([[3], [3, 4], [6]], 'has 3 stages'),
    ('3|3|3|3|3', 'has 5 stages'),
    ('3|a|3|3', 'kept-set'),
    ('3|4-2|3|3', 'kept-set'),
])
def test_space_errors(space, match):
    with pytest.raises(ValueError, match=match):
        build_space(space, RESNET50)


def test_sizes_uniform_in_range():
    s = DepthSampler(build_space('st', RESNET50), seed=5)
    h = 32
    lo = int(0.43 * h)  # 13
    n = 11000
    sizes = [s.sample_size(h, 0.43) for _ in range(n)]
    counts = collections.Counter(sizes)
    assert set(counts) == set(range(lo, h + 1))
    stat = _chi2([counts[k] for k in range(lo, h + 1)], [n / (h - lo + 1)] * (h - lo + 1))
    assert stat < _chi2_critical(h - lo)
    assert s.sample_size(224, 0.43) in range(96, 225)
    assert s.sample_size(32, 1.0) is None and s.sample_size(32, None) is None


def test_sample_depths_function():
    import random
    space = [[1, 2], [3]]
    assert {sample_depths(space, random.Random(i)) for i in range(50)} == {(1, 3), (2, 3)}
