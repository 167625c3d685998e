"""Elastic depth out of the box: shipped per-depth BN statistics, a thread-safe switch, the budget picker."""
import threading
import warnings

import pytest
import timm
import torch

import timm_stim
from timm_stim import depth_stats, elastic
from timm_stim.heldout import heldout_indices, heldout_record, split_heldout
from timm_stim.models import weights

DEFAULT = 'cifar_resnet20_stim'


def _random_stats(model, configs, seed=0):
    g = torch.Generator().manual_seed(seed)
    bns = [(n, b) for n, b in model.named_modules() if isinstance(b, torch.nn.BatchNorm2d)]
    return {tuple(c): {n: (0.2 * torch.randn(b.num_features, generator=g),
                           0.5 + torch.rand(b.num_features, generator=g)) for n, b in bns} for c in configs}


@pytest.fixture()
def r20():
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20_stim').eval()
    configs = model.list_depths()[:-1]
    elastic.attach_depth_stats(model, _random_stats(model, configs))
    return model


def test_stats_change_the_subnetwork_and_export_matches(r20):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with timm_stim.subnetwork(r20, (1, 2, 1)):
            own = r20(x)  # the core's switch: the full network's statistics
        with timm_stim.at_depth(r20, (1, 2, 1)):
            shipped = r20(x)
        exported = timm_stim.export_depth(r20, (1, 2, 1))(x)
    assert not torch.allclose(own, shipped)  # the stored statistics are used
    assert torch.equal(shipped, exported)  # and the exported plain module carries them
    assert type(timm_stim.export_depth(r20, (1, 2, 1)).layer1) is torch.nn.Sequential


def test_switch_does_not_edit_the_model(r20):
    before = {n: type(m) for n, m in r20.named_modules()}
    with timm_stim.at_depth(r20, (1, 1, 1)):
        assert {n: type(m) for n, m in r20.named_modules()} == before
        assert len(r20.layer1) == 3 and timm_stim.get_depth(r20) == (1, 1, 1)
    assert timm_stim.get_depth(r20) == (3, 3, 3)


def test_eight_threads_eight_depths_equal_sequential(r20):
    """One shared model, eight threads at eight depths: exactly the outputs of running them one after another."""
    configs = r20.list_depths()[::3][:8]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = {}
        for c in configs:
            with timm_stim.at_depth(r20, c):
                expected[c] = r20(x)
    errors, start = [], threading.Barrier(len(configs))

    def work(c):
        start.wait()
        try:
            for _ in range(10):
                with torch.no_grad(), timm_stim.at_depth(r20, c):
                    assert timm_stim.get_depth(r20) == c
                    assert torch.equal(r20(x), expected[c]), c
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(tuple(v.flatten()[:4].tolist()) for v in expected.values())) == len(configs)


@pytest.mark.slow
def test_compile_at_each_depth(r20):
    """torch.compile of the whole model follows the switch (one graph per depth), equal to eager."""
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(r20)
    with torch.no_grad():
        for c in [(1, 1, 1), (2, 3, 1), None, (1, 1, 1)]:
            with timm_stim.at_depth(r20, c):
                eager, fast = r20(x), compiled(x)
            torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)


def test_script_of_full_and_sub_network(r20):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = r20(x)
        assert torch.equal(torch.jit.script(r20)(x), full)
        assert type(r20.layer1) is elastic.ElasticSequential  # scripting left the model as it was
        r20.set_depth((1, 1, 2))
        with timm_stim.at_depth(r20, (1, 1, 2)):
            sub = r20(x)
        assert torch.equal(torch.jit.script(r20)(x), sub)
        r20.set_depth(None)


def test_missing_stats_warn_once_and_name_the_helper():
    model = timm.create_model('cifar_resnet20_stim').eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):
            with timm_stim.at_depth(model, (1, 1, 1)):
                model(x)
    msgs = [str(w.message) for w in caught if 'BatchNorm statistics' in str(w.message)]
    assert len(msgs) == 1 and 'timm_stim.recalibrate_bn(model, loader, depths=(1, 1, 1))' in msgs[0]


def test_recalibrate_bn_stores_a_subnetwork_beside_the_full_stats():
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20_stim').eval()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(16, 3, 32, 32) * 2 + 1 for _ in range(4)]
    assert timm_stim.recalibrate_bn(model, batches, 48, depths=(1, 1, 1)) == 48
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in own.items())  # the model's own are untouched
    table = timm_stim.stats_table(model)[(1, 1, 1)]
    assert 'layer3.0.bn1' in table and 'layer3.1.bn1' not in table  # only what the sub-network runs
    assert not model.training


def test_budget_picker_takes_the_best_heldout_within_budget(r20):
    rows = [dict(depths=list(d), full=d == (3, 3, 3), flops_share=s, latency_ms=ms, heldout_top1=h, test_top1=h)
            for d, s, ms, h in [((1, 1, 1), 0.31, 1.0, 80.0), ((2, 2, 1), 0.45, 1.5, 84.0),
                                ((1, 1, 3), 0.48, 1.4, 86.0), ((2, 2, 2), 0.65, 2.0, 87.0),
                                ((3, 3, 3), 1.0, 3.0, 90.0)]]
    elastic.attach_depth_stats(r20, {}, rows=rows, meta=dict(machine='test CPU'))
    assert elastic.pick_depth(r20, budget=0.5) == (1, 1, 3)
    r20.set_depth(budget=0.4)
    assert timm_stim.get_depth(r20) == (1, 1, 1)
    timm_stim.set_depth(r20, budget_ms=1.5)
    assert timm_stim.get_depth(r20) == (1, 1, 3)
    timm_stim.set_depth(r20, budget=1.0)
    assert timm_stim.get_depth(r20) == (3, 3, 3)
    with pytest.raises(ValueError, match='smallest needs 0.31'):
        r20.set_depth(budget=0.3)
    with pytest.raises(ValueError, match='exactly one'):
        elastic.pick_depth(r20, budget=0.5, budget_ms=1.0)
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        r20.set_depth(budget=1.5)
    table = timm_stim.list_depths(r20, measured=True)
    assert table[0]['machine'] == 'test CPU' and table[0]['has_stats']


def test_budget_without_a_measured_table_is_a_clear_error():
    model = timm.create_model('cifar_resnet20_stim')
    with pytest.raises(ValueError, match='no measured depth table'):
        model.set_depth(budget=0.5)


def test_heldout_split_is_fixed_and_disjoint():
    train, held = split_heldout(50000)
    assert len(held) == 5000 and len(train) == 45000
    assert not set(held.tolist()) & set(train.tolist())
    assert torch.equal(held, heldout_indices(50000))
    import hashlib
    record = heldout_record(50000)  # pins the exact indices: the sha256 of the comma-joined sorted list
    assert record['size'] == 5000 and record['seed'] == 0 and record['of'] == 50000
    assert record['indices_sha256'] == hashlib.sha256(','.join(map(str, held.tolist())).encode()).hexdigest()
    assert heldout_record(50000, seed=1)['indices_sha256'] != record['indices_sha256']
    with pytest.raises(ValueError):
        heldout_indices(100, size=100)


def test_sidecar_round_trip_and_sha256(tmp_path, r20):
    table = {d: s for d, s in list(timm_stim.stats_table(r20).items())[:3]}
    path = depth_stats.save(tmp_path / 'x.depths.safetensors', table, dict(rows=[], machine='m'))
    loaded, info = depth_stats.load(path)
    assert set(loaded) == set(table) and info['machine'] == 'm'
    for d in table:
        for name, (mean, var) in table[d].items():
            assert torch.equal(loaded[d][name][0], mean) and torch.equal(loaded[d][name][1], var)
    assert oct(path.stat().st_mode)[-3:] == '644'
    entry = weights.WeightsEntry(model='m', tag='t', file='x.safetensors', sha256='0' * 64, num_classes=10,
                                 depth_stats=dict(file=path.name, sha256=weights.sha256_file(path)))
    assert depth_stats.resolve(entry, tmp_path) == path
    path.write_bytes(path.read_bytes()[:-1] + b'x')  # one byte changed
    with pytest.raises(ValueError, match='sha256'):
        depth_stats.resolve(entry, tmp_path)


def _shipped_entry():
    entry = next((e for e in weights.read_manifest() if e.model == DEFAULT), None)
    if entry is None or not entry.depth_stats:
        pytest.skip('the default tag ships no depth statistics in this checkout')
    return entry


def test_default_tag_ships_statistics_for_every_configuration():
    entry = _shipped_entry()
    model = timm.create_model(DEFAULT, pretrained=True)
    stored = timm_stim.stats_table(model)
    assert set(stored) == set(model.list_depths()[:-1])
    rows = timm_stim.list_depths(model, measured=True)
    assert len(rows) == 27 and all(r['has_stats'] for r in rows)
    assert {tuple(r['depths']) for r in rows} == set(model.list_depths())
    assert entry.depth_stats['heldout']['size'] == 5000


def test_default_tag_smallest_depth_on_real_data(cifar10_subset, cifar10_normalize):
    """What a user gets with no data: create_model(pretrained=True) and the depth switch alone (1,000 test images)."""
    _shipped_entry()
    model = timm.create_model(DEFAULT, pretrained=True).eval()
    images, labels = cifar10_subset('val', 100)
    x = cifar10_normalize(images)

    def top1():
        with torch.no_grad():
            return 100 * (model(x).argmax(-1) == labels).float().mean().item()

    with timm_stim.at_depth(model, (1, 1, 1)):
        shipped = top1()
    with timm_stim.subnetwork(model, (1, 1, 1)):
        own = top1()  # the full network's statistics: what users got before
    assert shipped >= 76.0 and shipped >= own + 8, (shipped, own)


def test_exported_folder_carries_the_statistics(tmp_path):
    """timm-stim-export writes depth_stats.safetensors; timm's `local-dir:` name loads it back (sha256-checked)."""
    entry = _shipped_entry()
    from timm_stim.hub import export
    folder = tmp_path / 'export'
    export(entry.name, folder)
    assert (folder / 'depth_stats.safetensors').is_file()
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    ref = timm.create_model(entry.name, pretrained=True)
    assert set(timm_stim.stats_table(model)) == set(timm_stim.stats_table(ref)) != set()
    assert timm_stim.list_depths(model, measured=True) == timm_stim.list_depths(ref, measured=True)
    data = bytearray((folder / 'depth_stats.safetensors').read_bytes())
    data[-1] ^= 1
    (folder / 'depth_stats.safetensors').write_bytes(bytes(data))
    with pytest.raises(ValueError, match='sha256'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
