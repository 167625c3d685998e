"""Elastic-depth inference: persistent / temporary depth, valid configurations, FLOPs profile, export."""
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_stim
from timm_stim import elastic


def _nontrivial_bn(model):
    """Undo zero-init-last so that a dropped block changes the output."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope='module')
def r20():
    torch.manual_seed(0)
    return _nontrivial_bn(timm.create_model('cifar_resnet20_stim').eval())


def _x(n=2, side=32):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_set_depth_persistent_and_state_dict_full(r20):
    x = _x()
    with torch.no_grad():
        full = r20(x)
        with timm_stim.subnetwork(r20, (1, 2, 3)):
            ref = r20(x)
    keys = list(r20.state_dict())
    try:
        assert r20.set_depth((1, 2, 3)) is r20
        assert elastic.get_depth(r20) == (1, 2, 3)
        with torch.no_grad():
            assert torch.equal(r20(x), ref) and torch.equal(r20(x), ref)  # persists over calls
            assert not torch.allclose(ref, full)
            # state_dict, modules and .to() see the full network while a depth is set
            assert list(r20.state_dict()) == keys
            assert len(r20.layer1) == 3
            r20.double()
            assert all(p.dtype == torch.float64 for p in r20.parameters())
            assert torch.allclose(r20(x.double()).float(), ref, atol=1e-5)
            r20.float()
        # torch.jit.script of an elastic model scripts the plain module at the current depth
        with torch.no_grad():
            assert torch.allclose(torch.jit.script(r20)(x), ref, atol=1e-6)
    finally:
        elastic.set_depth(r20, None)
    with torch.no_grad():
        assert torch.equal(r20(x), full)
    assert elastic.get_depth(r20) == (3, 3, 3)
    elastic.set_depth(r20, (3, 3, 3))  # the full depths are stored as "no depth"
    assert r20.stim_depths is None


def test_at_depth_restores_also_on_error(r20):
    x = _x()
    with torch.no_grad(), timm_stim.subnetwork(r20, (1, 1, 1)):
        ref = r20(x)
    r20.set_depth((2, 2, 2))
    try:
        with elastic.at_depth(r20, (1, 1, 1)), torch.no_grad():
            assert elastic.get_depth(r20) == (1, 1, 1) and torch.equal(r20(x), ref)
        assert r20.stim_depths == (2, 2, 2)
        with pytest.raises(KeyError):
            with elastic.at_depth(r20, None):
                assert elastic.get_depth(r20) == (3, 3, 3)
                raise KeyError('boom')
        assert r20.stim_depths == (2, 2, 2)
    finally:
        r20.set_depth(None)
    # plain timm models: at_depth runs the core's sub-network without editing the model; set_depth is refused
    plain = _nontrivial_bn(timm.create_model('resnet18').eval())
    with torch.no_grad():
        full = plain(_x())
        with timm_stim.subnetwork(plain, (1, 1, 1, 1)):
            ref = plain(_x())
        with elastic.at_depth(plain, (1, 1, 1, 1)):
            assert len(plain.layer1) == 2  # nothing removed: the stage container skips the block
            small = plain(_x())
        assert torch.equal(small, ref) and torch.equal(plain(_x()), full) and not torch.equal(small, full)
    with pytest.raises(TypeError, match='_stim'):
        elastic.set_depth(plain, (1, 1, 1, 1))


def test_bad_depths_refused(r20):
    with pytest.raises(ValueError, match='3 stages'):
        r20.set_depth((1, 1))
    with pytest.raises(ValueError, match='can keep 1..3'):
        r20.set_depth((0, 3, 3))
    with pytest.raises(ValueError, match='can keep 1..3'):
        r20.set_depth((4, 3, 3))
    assert r20.stim_depths is None
    with pytest.raises(ValueError, match='input_size'):
        elastic.depth_profile(r20, input_size=(32, 32))
    with pytest.raises(ValueError, match='.pt2'):
        elastic.save_exported(r20, 'x.pt', method='export')
    with pytest.raises(ValueError, match='method'):
        elastic.save_exported(r20, 'x.pt', method='onnx')


@pytest.mark.parametrize('name,count', [('cifar_resnet20_stim', 27), ('resnet50_stim', 216),
                                        ('mobilenetv3_large_100_stim', 144), ('cifar_wrn16_4_stim', 8)])
def test_list_depths(name, count):
    with torch.device('meta'):
        model = timm.create_model(name)
    depths = model.list_depths()
    assert depths == timm_stim.valid_depths(model) and len(depths) == count == len(set(depths))
    assert depths[-1] == timm_stim.full_depths(model)
    ranges = timm_stim.depth_ranges(model)
    assert all(lo <= d <= hi for cfg in depths for d, (lo, hi) in zip(cfg, ranges))


def _measured_flops(model, depths, side):
    with elastic.at_depth(model, depths), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return counter.get_total_flops()


@pytest.mark.parametrize('name,side', [('cifar_resnet20_stim', 32), ('resnet50_stim', 64),
                                       ('mobilenetv3_small_100_stim', 64)])
def test_depth_profile_monotone_and_exact(name, side):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    profile = model.depth_profile(input_size=(3, side, side))
    by_depth = {p['depths']: p for p in profile}
    assert list(by_depth) == model.list_depths()
    full = by_depth[timm_stim.full_depths(model)]
    assert full['flops_share'] == 1.0 and full['params'] == sum(p.numel() for p in model.parameters())
    # removing one block from any stage of any configuration strictly reduces FLOPs and parameters
    ranges = timm_stim.depth_ranges(model)
    for cfg, p in by_depth.items():
        for i, (lo, _) in enumerate(ranges):
            if cfg[i] > lo:
                smaller = by_depth[cfg[:i] + (cfg[i] - 1,) + cfg[i + 1:]]
                assert smaller['flops'] < p['flops'] and smaller['params'] < p['params']
    # the additive profile equals FlopCounterMode on the sub-network and the exported module's size
    for cfg in [profile[0], profile[len(profile) // 2], profile[-2]]:
        assert cfg['flops'] == _measured_flops(model, cfg['depths'], side)
        assert cfg['params'] == sum(q.numel() for q in model.export_depth(cfg['depths']).parameters())


def test_depth_profile_subset_and_default_input(r20):
    prof = elastic.depth_profile(r20, depths=[(1, 1, 1), (3, 3, 3)])  # input size from pretrained_cfg
    assert [p['depths'] for p in prof] == [(1, 1, 1), (3, 3, 3)]
    assert prof[1]['flops'] == _measured_flops(r20, None, 32)
    assert 0.25 < prof[0]['flops_share'] < 0.4  # 3 of 9 blocks plus stem and head


def test_export_depth_is_plain_timm_module(r20):
    sub = r20.export_depth((1, 2, 3))
    assert type(sub) is timm_stim.models.CifarResNet
    assert [len(sub.layer1), len(sub.layer2), len(sub.layer3)] == [1, 2, 3]
    assert len(r20.layer1) == 3  # the original is untouched
    x = _x()
    with torch.no_grad(), timm_stim.subnetwork(r20, (1, 2, 3)):
        assert torch.equal(sub(x), r20(x))


BLOCKED_RUNNER = '''
    import sys
    class Block:  # the exported artefacts must load and run without timm or timm_stim
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('timm', 'timm_stim'):
                raise ImportError('blocked: ' + name)
    sys.meta_path.insert(0, Block())
    import torch
    for d in sys.argv[1:]:
        x = torch.load(d + '/x.pt')
        outs = {}
        with torch.no_grad():
            for method in ('script', 'trace'):
                outs[method] = torch.jit.load(f'{d}/{method}.pt')(x)
            program = torch.export.load(f'{d}/export.pt2').module()
            outs['export'] = program(x)
            outs['export_b1'] = program(x[:1])
        torch.save(outs, d + '/outs.pt')
    assert not [m for m in sys.modules if m.split('.')[0] in ('timm', 'timm_stim')]
    print('OK')
'''


EXPORTS = [('cifar_resnet20_stim', (1, 2, 3)), ('resnet18_stim', (1, 2, 1, 2))]


@pytest.mark.slow
def test_exported_depth_runs_without_timm_stim(tmp_path):
    """TorchScript (script, trace) and torch.export artefacts of a chosen depth match eager, in a process that
    cannot import timm or timm_stim."""
    refs = {}
    x = torch.randn(3, 3, 32, 32)
    for name, depths in EXPORTS:
        torch.manual_seed(0)
        model = _nontrivial_bn(timm.create_model(name).eval())
        model.set_depth(depths)
        with torch.no_grad():
            refs[name] = model(x)
        d = tmp_path / name
        for method in ('script', 'trace'):
            elastic.save_exported(model, d / f'{method}.pt', method=method, input_size=(3, 32, 32))
        elastic.save_exported(model, d / 'export.pt2', method='export', input_size=(3, 32, 32))
        torch.save(x, d / 'x.pt')
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(BLOCKED_RUNNER)] + [str(tmp_path / n) for n in refs],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('OK'), out.stderr[-3000:]
    for name, ref in refs.items():
        outs = torch.load(tmp_path / name / 'outs.pt')
        for method in ('script', 'trace', 'export'):
            assert torch.allclose(outs[method], ref, atol=1e-5), (name, method)
        assert torch.allclose(outs['export_b1'], ref[:1], atol=1e-5)  # dynamic batch
