"""Block discovery and sub-network execution (`timm_stim.depth`) on real timm models."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from timm_stim import (
    check_depths, export_subnetwork, find_stages, full_depths, run_subnetworks, subnetwork, supported_families,
    valid_depths,
)
from timm_stim.depth import recalibrate_bn  # the core's, in place (timm_stim.recalibrate_bn keeps sub-networks apart)

# (name, create_model kwargs, input side): small inputs keep the suite fast
MODELS = [
    ('resnet18', {}, 32),
    ('resnet50', {}, 32),
    ('wide_resnet50_2', {}, 32),
    ('mobilenetv3_large_100', {}, 32),
    ('efficientnet_b0', {}, 32),
    ('convnext_atto', {}, 32),
    ('vit_tiny_patch16_224', dict(img_size=32), 32),
]
MODEL_IDS = [m[0] for m in MODELS]

# droppable blocks per model: every non-first block with an identity shortcut
DROPPABLE = {
    'resnet18': 4, 'resnet50': 12, 'wide_resnet50_2': 12, 'mobilenetv3_large_100': 9, 'efficientnet_b0': 9,
    'convnext_atto': 8, 'vit_tiny_patch16_224': 11,
}

_cache = {}


def _randomize_identity_inits(model):
    """timm starts residual branches (near) zero: zero-init last BN, ConvNeXt's layer scale 1e-6, ViT's
    init. Give every 1-d parameter (norm weights and biases, layer scales) and BN statistic a random value so
    that every block changes its input and a dropped block is visible in the output."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:
                if n.endswith('bias'):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                else:
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _model(name, kwargs):
    """One initialised model per name (seeded, no identity-like residual branches); tests deep-copy it when
    they change state."""
    if name not in _cache:
        torch.manual_seed(0)
        _cache[name] = _randomize_identity_inits(timm.create_model(name, num_classes=10, **kwargs))
    return _cache[name]


def _input(side, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, side, side, generator=g)


def _some_drop(stages):
    """A depth tuple dropping the last block of every stage that has one to drop, and two in the longest."""
    depths = [s.num_blocks - (1 if s.droppable else 0) for s in stages]
    longest = max(range(len(stages)), key=lambda i: stages[i].droppable)
    if stages[longest].droppable >= 2:
        depths[longest] = stages[longest].num_blocks - 2
    return tuple(depths)


def _identity_copy(model, depths):
    """Hand-built sub-network: a deep copy with the dropped blocks replaced by nn.Identity.

    Dropping a block with an identity shortcut means its input passes through unchanged, which is exactly
    what nn.Identity does in its slot.
    """
    ref = copy.deepcopy(model)
    for s, d in zip(find_stages(ref), depths):
        for i in range(s.start + d, s.start + s.num_blocks):
            s.container[i] = nn.Identity()
    return ref


# ----------------------------------------------------------------------------------------------- discovery
@pytest.mark.parametrize('name,kwargs,side', MODELS, ids=MODEL_IDS)
def test_find_stages(name, kwargs, side):
    model = _model(name, kwargs)
    stages = find_stages(model)
    assert sum(s.droppable for s in stages) == DROPPABLE[name]
    assert all(s.min_depth >= 1 for s in stages)
    # every stage container really holds its blocks
    for s in stages:
        assert len(list(s.container.children())) >= s.start + s.num_blocks
    assert valid_depths(model)[-1] == full_depths(model)


def test_find_stages_resnet_first_block_kept():
    model = _model('resnet50', {})
    for s in find_stages(model):
        assert s.min_depth == 1 and s.num_blocks == len(s.container)
    assert full_depths(model) == (3, 4, 6, 3)
    assert len(valid_depths(model)) == 3 * 4 * 6 * 3


# ------------------------------------------------------------------------------------------- keep-all exact
@pytest.mark.parametrize('name,kwargs,side', MODELS, ids=MODEL_IDS)
def test_keep_all_is_bit_exact(name, kwargs, side):
    model = _model(name, kwargs)
    full = full_depths(model)
    x = _input(side)
    for train in (False, True):
        model.train(train)
        torch.manual_seed(0)
        ref = model(x)
        with subnetwork(model, full) as m:
            torch.manual_seed(0)
            out = m(x)
        assert torch.equal(ref, out), f'{name} train={train}'
        torch.manual_seed(0)
        outs = run_subnetworks(model, x, [(full, None)])
        assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with subnetwork(model, full):
            assert torch.equal(model(x), ref)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = model(x)
        with subnetwork(model, full):
            out = model(x)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    if x.ndim == 4 and 'vit' not in name:
        mcl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        ref = mcl(xcl)
        with subnetwork(mcl, full):
            assert torch.equal(mcl(xcl), ref)


# ------------------------------------------------------------------------------------------- dropped blocks
@pytest.mark.parametrize('name,kwargs,side', MODELS, ids=MODEL_IDS)
def test_dropped_blocks_equal_identity_slots(name, kwargs, side):
    model = _model(name, kwargs).eval()
    depths = _some_drop(find_stages(model))
    assert depths != full_depths(model)
    ref = _identity_copy(model, depths).eval()
    x = _input(side)
    with torch.no_grad(), subnetwork(model, depths):
        out = model(x)
    assert torch.equal(out, ref(x))
    assert not torch.equal(out, model(x).detach())  # the full network differs: blocks really were dropped
    with torch.autocast('cpu', dtype=torch.bfloat16), subnetwork(model, depths):
        out = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(out, ref(x))
    # the exported copy (blocks removed) matches too
    assert torch.equal(export_subnetwork(model, depths).eval()(x), ref(x))


def test_dropped_block_equals_hand_built_resnet18():
    """resnet18 keeping (2, 1, 2, 1): stem, then the kept blocks by hand, then the head."""
    model = _model('resnet18', {}).eval()
    depths = (2, 1, 2, 1)
    x = _input(32, batch=3)
    with torch.no_grad():
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        for layer, d in zip([model.layer1, model.layer2, model.layer3, model.layer4], depths):
            for block in list(layer)[:d]:
                h = block(h)
        ref = model.fc(model.global_pool(h))
        with subnetwork(model, depths):
            out = model(x)
    assert torch.equal(out, ref)


def test_dropped_block_equals_hand_built_vit():
    model = _model('vit_tiny_patch16_224', dict(img_size=32)).eval()
    x = _input(32)
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in list(model.blocks)[:5]:
            h = block(h)
        ref = model.forward_head(model.norm(h))
        with subnetwork(model, (5,)):
            out = model(x)
    assert torch.equal(out, ref)


def test_channels_last_dropped():
    model = copy.deepcopy(_model('resnet50', {})).eval().to(memory_format=torch.channels_last)
    x = _input(32).contiguous(memory_format=torch.channels_last)
    depths = (2, 3, 4, 2)
    ref = _identity_copy(model, depths)
    with torch.no_grad(), subnetwork(model, depths):
        assert torch.equal(model(x), ref(x))


# ------------------------------------------------------------------------------------------- BatchNorm
def _bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items() if 'running' in k or 'num_batches' in k}


def test_bn_stats_of_skipped_blocks_untouched():
    model = copy.deepcopy(_model('resnet50', {})).train()
    depths = (2, 3, 4, 2)
    stages = find_stages(model)
    skipped = [s.container[i] for s, d in zip(stages, depths) for i in range(d, s.num_blocks)]
    kept = [s.container[i] for s, d in zip(stages, depths) for i in range(d)]
    before_skipped = [_bn_state(b) for b in skipped]
    before_kept = [_bn_state(b) for b in kept]
    with subnetwork(model, depths):
        model(_input(32, batch=4)).sum().backward()
    for b, before in zip(skipped, before_skipped):
        after = _bn_state(b)
        assert all(torch.equal(after[k], before[k]) for k in before)
        assert all(p.grad is None for p in b.parameters())  # skipped blocks did not run
    for b, before in zip(kept, before_kept):
        after = _bn_state(b)
        changed = [k for k in before if 'running_mean' in k and not torch.equal(after[k], before[k])]
        assert changed, 'a kept block did not update its BatchNorm statistics'
        assert all(p.grad is not None for p in b.parameters())


# ------------------------------------------------------------------------------------------- restore
def _structure(model):
    return [(n, id(m)) for n, m in model.named_modules()]


@pytest.mark.parametrize('name,kwargs,side', [MODELS[1], MODELS[3], MODELS[6]], ids=['resnet50', 'mnv3', 'vit'])
def test_full_network_restored(name, kwargs, side):
    model = _model(name, kwargs).eval()
    timm_keys = list(timm.create_model(name, num_classes=10, **kwargs).state_dict().keys())
    before = _structure(model)
    assert list(model.state_dict().keys()) == timm_keys
    depths = tuple(lo for lo, _ in [(s.min_depth, s.num_blocks) for s in find_stages(model)])
    x = _input(side)
    with torch.no_grad():
        ref = model(x)
        with subnetwork(model, depths):
            assert len(list(model.modules())) < len(before)
            model(x)
    assert _structure(model) == before
    assert list(model.state_dict().keys()) == timm_keys

    class Boom(Exception):
        pass

    with pytest.raises(Boom), subnetwork(model, depths):
        raise Boom()
    assert _structure(model) == before
    assert list(model.state_dict().keys()) == timm_keys
    # a failure inside the forward (bad input) also restores it
    with pytest.raises(RuntimeError), subnetwork(model, depths):
        model(torch.randn(2, 5, side, side))
    assert _structure(model) == before
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_export_subnetwork_leaves_model_whole():
    model = _model('resnet18', {})
    before = _structure(model)
    sub = export_subnetwork(model, (1, 1, 1, 1))
    assert _structure(model) == before
    assert [len(l) for l in (sub.layer1, sub.layer2, sub.layer3, sub.layer4)] == [1, 1, 1, 1]
    assert set(sub.state_dict()) < set(model.state_dict())


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('model', [
    nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)),
    'vgg11',
])
def test_non_residual_model_type_error(model):
    if isinstance(model, str):
        model = timm.create_model(model, num_classes=10, pretrained=False)
    with pytest.raises(TypeError) as e:
        find_stages(model)
    msg = str(e.value)
    for family in supported_families():
        assert family in msg
    with pytest.raises(TypeError), subnetwork(model, (1,)):
        pass


def test_resnet_without_droppable_block_type_error():
    from timm.models.resnet import BasicBlock, ResNet
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    with pytest.raises(TypeError, match='no droppable'):
        find_stages(model)


@pytest.mark.parametrize('depths,match', [
    ((2, 2, 2), 'has 3 entries'),
    ((2, 2, 2, 2, 2), 'has 5 entries'),
    ((0, 2, 2, 2), 'can keep 1..2'),
    ((2, 3, 2, 2), 'can keep 1..2'),
    ((2, -1, 2, 2), 'can keep 1..2'),
    ((2, 1.5, 2, 2), 'integer'),
])
def test_bad_depths_value_error(depths, match):
    model = _model('resnet18', {})
    before = _structure(model)
    with pytest.raises(ValueError, match=match):
        check_depths(find_stages(model), depths)
    with pytest.raises(ValueError, match=match), subnetwork(model, depths):
        pass
    assert _structure(model) == before


# ------------------------------------------------------------------------------------------- BN re-estimation
class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=0.05)
        self.bn2 = nn.BatchNorm2d(4, momentum=None)

    def forward(self, x):
        return self.bn2(torch.relu(self.bn(self.conv(x))))


def test_recalibrate_bn_exact_average():
    torch.manual_seed(0)
    model = _ConvBN().eval()
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1) + i, torch.zeros(8)) for i in range(4)]
    # hand computation (momentum=None: equal-weight average of per-batch mean and unbiased variance);
    # 20 images -> batches of 8, 8 and the first 4 of the third
    xs = [b[0] for b in batches[:2]] + [batches[2][0][:4]]
    with torch.no_grad():
        h1 = [model.conv(x) for x in xs]
        mean1 = torch.stack([h.mean((0, 2, 3)) for h in h1]).mean(0)
        var1 = torch.stack([h.var((0, 2, 3), unbiased=True) for h in h1]).mean(0)
        h2 = [torch.relu(nn.functional.batch_norm(h, None, None, training=True, eps=model.bn.eps,
                                                  weight=model.bn.weight, bias=model.bn.bias)) for h in h1]
        mean2 = torch.stack([h.mean((0, 2, 3)) for h in h2]).mean(0)
        var2 = torch.stack([h.var((0, 2, 3), unbiased=True) for h in h2]).mean(0)

    n = recalibrate_bn(model, iter(batches), num_images=20)
    assert n == 20
    torch.testing.assert_close(model.bn.running_mean, mean1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, var1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn2.running_mean, mean2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn2.running_var, var2, rtol=1e-5, atol=1e-6)
    assert int(model.bn.num_batches_tracked) == 3
    # momentum and mode restored
    assert model.bn.momentum == 0.05 and model.bn2.momentum is None
    assert not model.training
    # plain tensors work too; fewer images than asked -> returns how many were seen
    assert recalibrate_bn(model.train(), [b[0] for b in batches], num_images=1000) == 32
    assert model.training


def test_recalibrate_bn_subnetwork_leaves_skipped_blocks():
    """Re-estimating for a sub-network only touches the BN layers that sub-network runs."""
    model = copy.deepcopy(_model('resnet18', {})).train()
    model(_input(32, batch=4))  # move every running statistic away from its reset value
    depths = (1, 2, 2, 1)
    skipped = [model.layer1[1], model.layer4[1]]
    before = [_bn_state(b) for b in skipped]
    before_kept = _bn_state(model.layer2)
    recalibrate_bn(model, [_input(32, batch=4, seed=s) for s in range(3)], num_images=12, depths=depths)
    for b, st in zip(skipped, before):
        assert all(torch.equal(_bn_state(b)[k], st[k]) for k in st)
    after_kept = _bn_state(model.layer2)
    assert all(not torch.equal(after_kept[k], before_kept[k]) for k in before_kept if 'running_mean' in k)
