"""The model zoo against timm's own model-test patterns (its tests/test_models.py), over every `*_stim` name."""
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from timm.models._manipulate import group_parameters

import timm_stim
from timm_stim.models import STIM_BASES, CifarResNet
from timm_stim.models.stim_zoo import CifarResNetStim, MobileNetV3Stim, ResNetStim

STIM_MODELS = timm.list_models('*_stim')
CIFAR_BASES = timm.list_models('cifar_*', exclude_filters='*_stim')
EARLY_POOL = (MobileNetV3Stim,)  # pool before the head conv, as in timm's EARLY_POOL_MODELS
EXPECTED = {
    'resnet18_stim', 'resnet34_stim', 'resnet50_stim', 'resnet101_stim', 'wide_resnet50_2_stim',
    'wide_resnet101_2_stim', 'mobilenetv3_large_100_stim', 'mobilenetv3_small_100_stim', 'cifar_resnet20_stim',
    'cifar_resnet32_stim', 'cifar_resnet44_stim', 'cifar_resnet56_stim', 'cifar_resnet110_stim',
    'cifar_wrn16_4_stim', 'cifar_wrn28_10_stim', 'cifar_resnet8_stim', 'cifar_resnet14_stim',
}


def test_registered_names():
    assert set(STIM_MODELS) == EXPECTED
    assert set(CIFAR_BASES) == {'cifar_resnet8', 'cifar_resnet14', 'cifar_resnet20', 'cifar_resnet32', 'cifar_resnet44', 'cifar_resnet56',
                                'cifar_resnet110', 'cifar_wrn16_4', 'cifar_wrn28_10'}
    # own registry modules, not timm's: nothing of ours in timm's `resnet` / `mobilenetv3` listings
    assert set(timm.list_models(module='stim_zoo')) == EXPECTED
    assert set(timm.list_models(module='cifar_resnet')) == set(CIFAR_BASES)
    assert not [n for n in timm.list_models(module=['resnet', 'mobilenetv3']) if 'stim' in n or 'cifar' in n]
    for name, base in STIM_BASES.items():
        assert timm.is_model(base) and name == base + '_stim'


@pytest.mark.slow
def test_import_registers_without_warnings():
    code = textwrap.dedent('''
        import io, logging, warnings
        import timm
        buf = io.StringIO()
        logging.getLogger().addHandler(logging.StreamHandler(buf))
        logging.getLogger().setLevel(logging.DEBUG)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import timm_stim
        msgs = [str(w.message) for w in caught] + [l for l in buf.getvalue().splitlines() if l]
        print(len(timm.list_models('*_stim')), msgs)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f'{len(EXPECTED)} []', out.stdout + out.stderr



# what `import timm_stim` must not load beyond `import timm` (benchmarks/import_time.py measures the rest)
LAZY_MODULES = ('matplotlib', 'timm.task', 'timm.loss', 'timm_stim.trainer', 'timm_stim.train', 'timm_stim.validate',
                'timm_stim.release', 'timm_stim.hub', 'timm_stim.cards', 'timm_stim.data', 'timm_stim.loaders')


@pytest.mark.slow
def test_import_is_lazy_and_still_registers():
    """`import timm_stim` adds no plotting, training-task, command or data-path modules to `import timm`, and
    the registry is complete right after it: the `*_stim` models and the manifest's pretrained tags."""
    import json
    from timm_stim.models.weights import read_manifest
    code = textwrap.dedent('''
        import json, sys
        import timm
        before = set(sys.modules)
        import timm_stim
        added = sorted(set(sys.modules) - before)
        out = dict(added=added, matplotlib='matplotlib' in sys.modules, stim=timm.list_models('*_stim'),
                   cifar=timm.list_pretrained('*cifar*'))
        out['task'] = timm_stim.StimulativeTrainer.__module__  # loaded on first use
        out['task_loaded'] = 'timm.task' in sys.modules
        print(json.dumps(out))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out['matplotlib']
    assert not [m for m in out['added'] if m.startswith(LAZY_MODULES)], out['added']
    assert set(out['stim']) == EXPECTED
    assert sorted(out['cifar']) == sorted(e.name for e in read_manifest() if 'cifar' in e.name)  # timm sorts naturally
    assert out['task'] == 'timm_stim.trainer' and out['task_loaded']

def test_unknown_model_gets_timms_error():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('resnet50_stimm')
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('cifar_resnet21_stim')
    with pytest.raises(RuntimeError, match='Invalid pretrained tag'):
        timm.create_model('cifar_resnet20_stim.no_such_tag')


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n == 'wide_resnet101_2_stim' else n
                                  for n in STIM_MODELS])
def test_model_forward_backward_cfg(name):
    """timm's forward / backward / default-cfg checks on one model instance (creation dominates on CPU)."""
    torch.manual_seed(0)
    model = timm.create_model(name)
    assert isinstance(model, (ResNetStim, MobileNetV3Stim, CifarResNetStim))
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict
    assert cfg['paper_ids'] == 'arXiv:2305.02507' and cfg['license'] and cfg['description']
    assert model.num_classes == cfg['num_classes'] and model.num_features > 0 and model.head_hidden_size > 0
    # a name with released CIFAR-10 weights defaults to their head, as a timm name does to its default tag's
    assert (model.num_classes == 10) == (name.startswith('cifar_') or 'cifar10' in (cfg.get('tag') or ''))
    # pool_size: the default input's spatial size divided by the network's reduction
    reduction = model.feature_info[-1]['reduction']
    assert tuple(s // reduction for s in cfg['input_size'][1:]) == tuple(cfg['pool_size'])

    # forward / backward: every parameter receives a gradient
    side = 32  # CIFAR nets at their native size; ImageNet nets small (1x1 final map): fast on CPU
    x = torch.randn(2, 3, side, side)
    model.train()
    out = model(x)
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()
    out.mean().backward()
    params = dict(model.named_parameters())
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f'{len(no_grad)} parameters got no gradient: {no_grad[:5]}'

    # forward_features / forward_head(pre_logits) / reset_classifier, as timm's test_model_default_cfgs
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        assert feats.shape[2:] == (side // reduction, side // reduction)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre.shape
        if not isinstance(model, EARLY_POOL):
            model.reset_classifier(0, '')
            assert model(x).shape == feats.shape
        model.reset_classifier(7, 'avg')
        assert model(x).shape == (2, 7)

    # group_matcher covers every parameter (timm's layer-decay / param grouping)
    groups = group_parameters(model, model.group_matcher())
    assert sorted(n for names in groups.values() for n in names) == sorted(dict(model.named_parameters()))


@pytest.mark.parametrize('name', STIM_MODELS)
def test_features_only(name):
    """features_only works (timm's feature wrapper around the full network) with channels per feature_info."""
    model = timm.create_model(name, features_only=True).eval()
    side = 32  # CIFAR nets at their native size; ImageNet nets small (1x1 final map): fast on CPU
    with torch.no_grad():
        feats = model(torch.randn(1, 3, side, side))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [side // f.shape[-1] for f in feats] == model.feature_info.reduction()
    # the wrapper keeps elastic depth: it shares the model's stage containers
    assert isinstance(model, timm_stim.elastic.ElasticFeaturesMixin)
    depths = model.list_depths()[0]
    with torch.no_grad(), timm_stim.at_depth(model, depths):
        assert timm_stim.get_depth(model) == depths
        assert [f.shape for f in model(torch.randn(1, 3, side, side))] == [f.shape for f in feats]
    assert timm_stim.get_depth(model) == timm_stim.full_depths(model)


@pytest.mark.parametrize('name,kwargs', [
    ('cifar_resnet20_stim', {}), ('cifar_wrn16_4_stim', {}), ('resnet18_stim', dict(out_indices=(1, 2))),
    ('resnet18_stim', dict(feature_cls='dict')), ('resnet18_stim', dict(feature_cls='hook')),
    ('mobilenetv3_small_100_stim', {}),
])
def test_features_only_elastic_depth(name, kwargs):
    """at_depth / set_depth on a features_only `_stim` model run the same sub-network as the classifier model."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)  # undo zero-init-last: a dropped block must change the features
    x = torch.randn(1, 3, 32, 32)
    as_list = lambda out: list(out.values()) if isinstance(out, dict) else list(out)
    with torch.no_grad():
        full = as_list(model(x))
        small = model.list_depths()[0]
        with timm_stim.at_depth(model, small):
            sub = as_list(model(x))
        model.set_depth(small)
        assert all(torch.equal(a, b) for a, b in zip(as_list(model(x)), sub))
        model.set_depth(None)
        assert all(torch.equal(a, b) for a, b in zip(as_list(model(x)), full))
    assert any(not torch.equal(a, b) for a, b in zip(full, sub)), 'dropping blocks must change a feature map'


def test_features_only_without_stages_is_a_clear_error():
    model = timm.create_model('resnet18_stim', features_only=True, out_indices=(0,))
    with pytest.raises(TypeError, match='no ResNet-layout stage'):
        model.set_depth((1,))


@pytest.mark.parametrize('name', ['resnet50_stim', 'mobilenetv3_large_100_stim', 'cifar_resnet20_stim',
                                  'cifar_wrn16_4_stim'])
def test_strict_load_of_timm_base_weights(name):
    """`<arch>_stim` has exactly `<arch>`'s layout: timm-initialised weights load strictly, outputs match."""
    torch.manual_seed(1)
    base = timm.create_model(STIM_BASES[name]).eval()
    model = timm.create_model(name, num_classes=base.num_classes).eval()  # a released CIFAR-10 default tag aside
    model.load_state_dict(base.state_dict(), strict=True)
    assert list(model.state_dict()) == list(base.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


def test_base_layouts_identical_for_all():
    """Same state-dict keys and shapes as the base timm model for every `_stim` name (meta device: cheap)."""
    for name, base in STIM_BASES.items():
        with torch.device('meta'):
            a = timm.create_model(name, num_classes=7).state_dict()  # the class count of a default tag aside
            b = timm.create_model(base, num_classes=7).state_dict()
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, name


@pytest.mark.parametrize('name,params_m', [
    ('cifar_resnet20', 0.27), ('cifar_resnet32', 0.46), ('cifar_resnet44', 0.66), ('cifar_resnet56', 0.85),
    ('cifar_resnet110', 1.7), ('cifar_wrn16_4', 2.7), ('cifar_wrn28_10', 36.5)])
def test_cifar_architectures(name, params_m):
    """Parameter counts of the papers (arXiv:1512.03385 Table 6, arXiv:1605.07146 Table 4) and the stage rule."""
    with torch.device('meta'):
        model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.03, n
    layers = {'cifar_wrn16_4': 2, 'cifar_wrn28_10': 4}.get(name, (int(name[len('cifar_resnet'):]) - 2) // 6)
    stages = timm_stim.find_stages(model)
    assert [s.name for s in stages] == ['layer1', 'layer2', 'layer3']
    assert [(s.num_blocks, s.min_depth) for s in stages] == [(layers, 1)] * 3
    for s in stages:
        assert isinstance(s.container, torch.nn.Sequential)
        assert all(b.downsample is None for b in list(s.container)[1:])
    # projection shortcut exactly where channels or stride change
    assert (model.layer1[0].downsample is None) == name.startswith('cifar_resnet')
    assert model.layer2[0].downsample is not None and model.layer3[0].downsample is not None
    assert model.num_features == model.layer3[-1].conv2.out_channels


def test_cifar_no_droppable_block_refused():
    with pytest.raises(TypeError, match='no droppable'):
        timm_stim.find_stages(CifarResNet(layers=(1, 1, 1)))
    with pytest.raises(ValueError, match='three stages'):
        CifarResNet(layers=(3, 3))
    with pytest.raises(ValueError, match='block='):
        CifarResNet(block='bottleneck')


@pytest.mark.parametrize('name', ['cifar_resnet20_stim', 'cifar_wrn16_4_stim'])
def test_cifar_grad_checkpointing_and_script(name):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        assert torch.allclose(model(x), ref)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), ref, atol=1e-6)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_create_kwargs_and_pickle(tmp_path):
    model = timm.create_model('cifar_resnet20_stim', num_classes=100, in_chans=1, drop_rate=0.2)
    assert model.fc.out_features == 100 and model.conv1.in_channels == 1
    path = tmp_path / 'm.pt'
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is CifarResNetStim


@pytest.mark.parametrize('name', ['cifar_resnet20_stim', 'cifar_wrn16_4_stim', 'resnet18_stim'])
def test_forward_intermediates(name):
    """timm's intermediates API, also at a set depth (it runs the same sub-network as forward_features)."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for depths in (None, [1] * len(timm_stim.find_stages(model))):
            model.set_depth(depths)
            final, inter = model.forward_intermediates(x)
            assert torch.allclose(final, model.forward_features(x))
            assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
            assert model.forward_intermediates(x, indices=1, intermediates_only=True)[0].shape == inter[-1].shape
        getter = timm.create_model(name, features_only=True, feature_cls='getter').eval()
        assert [f.shape[1] for f in getter(x)] == getter.feature_info.channels()


def test_cifar_wrn_intermediates_norm_matches_timm():
    """As timm's models with a final norm: the last intermediate is normalised only with norm=True."""
    torch.manual_seed(0)
    model = timm.create_model('cifar_wrn16_4', zero_init_last=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        raw = model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        final, inter = model.forward_intermediates(x)
        expected_raw = model.layer3(model.layer2(model.layer1(model.conv1(x))))
    assert torch.allclose(raw, expected_raw) and (raw < 0).any()  # un-normalised: pre-activation values
    assert torch.allclose(normed, model.act(model.norm(expected_raw))) and (normed >= 0).all()
    assert torch.allclose(inter[-1], raw) and torch.allclose(final, model.forward_features(x))


@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_wrn16_4_stim'])
def test_cifar_prune_intermediate_layers(name):
    """timm's prune_intermediate_layers: later stages, final norm and head go; kept intermediates are unchanged."""
    torch.manual_seed(0)
    model = timm.create_model(name, zero_init_last=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert model.prune_intermediate_layers([1, 2]) == [1, 2]
        after = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        final, _ = model.forward_intermediates(x, indices=[1, 2])
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        assert len(model.layer3) == 0 and model.num_classes == 0
        assert model.num_features == model.feature_info[2]['num_chs'] == final.shape[1]
        assert model(x).shape == final.shape  # no pool, no classifier: timm's reset_classifier(0, '')
    assert [s.name for s in timm_stim.find_stages(model)] == ['layer1', 'layer2']
    full = timm.create_model(name)
    full.prune_intermediate_layers(3, prune_head=False)
    assert full.num_classes == 10 and len(full.layer3)
