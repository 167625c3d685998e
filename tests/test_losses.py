"""Losses (`kl`, `kl_minus`, `normalize_logits`, `smaller_input`) against hand-written formulas, gradient flow,
and the `StimulativeTrainer` step."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.task import ClassificationTask

from timm_stim import (
    StimConfig, StimulativeTrainer, build_space, DEFAULT_AMPLITUDE, depth_ranges, kl, kl_minus, normalize_logits,
    run_subnetworks, smaller_input, subnetwork,
)
from timm_stim.losses import logit_amplitude


def _logits(seed=0, shape=(5, 7), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).float()


# ------------------------------------------------------------------------------------------- formulas by hand
def _log_softmax_by_hand(z):
    z = z.double()
    return z - torch.log(torch.exp(z).sum(-1, keepdim=True))


def _kl_by_hand(t, s, T):
    """T^2 * mean_b sum_c p_t (log p_t - log p_s), p = softmax(z / T)."""
    lt, ls = _log_softmax_by_hand(t / T), _log_softmax_by_hand(s / T)
    return (torch.exp(lt) * (lt - ls)).sum(-1).mean() * T * T


def _ln_by_hand(z, A):
    z = z.double()
    mean = z.sum(-1, keepdim=True) / z.shape[-1]
    var = ((z - mean) ** 2).sum(-1, keepdim=True) / z.shape[-1]  # biased
    return A * (z - mean) / torch.sqrt(var + 1e-7)


@pytest.mark.parametrize('T', [1.0, 2.5, 0.5])
def test_kl_formula(T):
    t, s = _logits(0), _logits(1)
    expected = _kl_by_hand(t, s, T)
    torch.testing.assert_close(kl(t, s, T).double(), expected, rtol=1e-5, atol=1e-6)
    assert kl(t, t.clone(), T).abs() < 1e-6
    assert kl(t, s, T) > 0


@pytest.mark.parametrize('A', [1.0, 10.0, 0.3])
def test_normalize_logits_formula(A):
    z = _logits(2, scale=5.0) + 4.0
    torch.testing.assert_close(normalize_logits(z, A).double(), _ln_by_hand(z, A), rtol=1e-5, atol=1e-5)
    out = normalize_logits(z, A)
    torch.testing.assert_close(out.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    # every normalised vector has L2 norm A * sqrt(C) (spec §4a)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((5,), A * math.sqrt(7)), rtol=1e-4, atol=0)
    # invariant to shifting and positive scaling of the logits
    torch.testing.assert_close(normalize_logits(3 * z + 11, A), out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('T,A', [(1.0, 1.0), (2.0, 10.0), (0.7, 3.0)])
def test_kl_minus_formula(T, A):
    t, s = _logits(3), _logits(4)
    expected = _kl_by_hand(_ln_by_hand(t, A), _ln_by_hand(s, A), T)
    torch.testing.assert_close(kl_minus(t, s, T, A).double(), expected, rtol=1e-5, atol=1e-6)
    # direction only: rescaling / shifting the student's logits does not change KL-
    torch.testing.assert_close(kl_minus(t, 4 * s - 2, T, A), kl_minus(t, s, T, A), rtol=1e-4, atol=1e-5)


def test_default_amplitude_is_the_released_value():
    assert DEFAULT_AMPLITUDE == 1.0
    assert StimulativeTrainer(_resnet18(), verbose=False).amplitude == 1.0
    assert StimulativeTrainer(_resnet18(), amplitude=3.0, verbose=False).amplitude == 3.0


# ------------------------------------------------------------------------------------------- gradient flow
@pytest.mark.parametrize('fn', [kl, kl_minus])
def test_teacher_gets_no_gradient(fn):
    t = _logits(5).requires_grad_()
    s = _logits(6).requires_grad_()
    fn(t, s).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def _resnet18(num_classes=10):
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=num_classes)
    with torch.no_grad():  # undo zero-init of the last BN of each block so that every block matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return model


def test_shared_weights_get_both_gradients():
    """KL-only loss: gradients reach exactly the parameters the sub-network used (never the dropped blocks,
    never through the teacher); main + KL gradient is the sum of both."""
    model = _resnet18().train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    depths = (1, 2, 1, 2)
    z_main, z_sub = run_subnetworks(model, x, [(depths, 24)])
    params = dict(model.named_parameters())
    g_kl = torch.autograd.grad(kl_minus(z_main, z_sub, 1.0, 10.0), list(params.values()), allow_unused=True,
                               retain_graph=True)
    g_kl = dict(zip(params, g_kl))
    # the KL term gives no gradient to the teacher logits
    assert torch.autograd.grad(kl_minus(z_main, z_sub, 1.0, 10.0), z_main, allow_unused=True)[0] is None
    dropped = ('layer1.1.', 'layer3.1.')
    for n, g in g_kl.items():
        if n.startswith(dropped):
            assert g is None, n
        else:
            assert g is not None and g.abs().sum() > 0, n
    g_main = dict(zip(params, torch.autograd.grad(F.cross_entropy(z_main, y), list(params.values()),
                                                  retain_graph=True)))
    assert all(g.abs().sum() > 0 for g in g_main.values())
    total = F.cross_entropy(z_main, y) + kl_minus(z_main, z_sub, 1.0, 10.0)
    g_total = dict(zip(params, torch.autograd.grad(total, list(params.values()))))
    for n in params:
        expected = g_main[n] + (g_kl[n] if g_kl[n] is not None else 0)
        torch.testing.assert_close(g_total[n], expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------- smaller inputs
def test_smaller_input():
    x = torch.randn(2, 3, 32, 32)
    assert smaller_input(x, None) is x and smaller_input(x, 32) is x
    for s in (13, 20, 31):
        out = smaller_input(x, s)
        assert out.shape == (2, 3, s, s)
        assert torch.equal(out, F.interpolate(x, size=(s, s), mode='bilinear', align_corners=False))
    r = torch.randn(2, 3, 32, 48)
    assert smaller_input(r, 16).shape == (2, 3, 16, 24)
    assert torch.equal(smaller_input(r, 16), F.interpolate(r, size=(16, 24), mode='bilinear', align_corners=False))


# ------------------------------------------------------------------------------------------- trainer
def _tiny_batch(n=6, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_off_mode_equals_classification_task():
    x, y = _tiny_batch()
    models = [_resnet18(), _resnet18()]
    tasks = [ClassificationTask(models[0], verbose=False), StimulativeTrainer(models[1], mode='off', verbose=False)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    for step in range(3):
        outs = []
        for task, opt in zip(tasks, opts):
            torch.manual_seed(step)
            out = task(x, y)
            opt.zero_grad()
            out['loss'].backward()
            opt.step()
            outs.append(out)
        assert torch.equal(outs[0]['loss'], outs[1]['loss'])
        assert torch.equal(outs[0]['output'], outs[1]['output'])
        assert outs[1]['depths'] == [] and outs[1]['loss_kl'].numel() == 0
    for (n, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), n


def _recompute(trainer, model, x, y, out):
    """The step by hand from the reported depths / sizes: main loss and each KL term."""
    cfg = trainer.stim
    A = trainer.amplitude
    z = model(x)
    main_in = normalize_logits(z, A) if cfg.loss == 'kl-' and cfg.main_on_normalized else z
    loss_main = trainer.criterion(main_in, y)
    kls = []
    for depths, size in zip(out['depths'], out['sizes']):
        with subnetwork(model, depths):
            zs = model(smaller_input(x, size))
        kls.append(kl_minus(z, zs, cfg.temperature, A) if cfg.loss == 'kl-' else kl(z, zs, cfg.temperature))
    return loss_main, torch.stack(kls)


@pytest.mark.parametrize('mode,kwargs', [
    ('stpp', dict(subnets=3, weight=0.5)),
    ('stpp', dict(subnets=2, main_on_normalized=False, amplitude=2.0, temperature=2.0)),
    ('st', dict()),
    ('st', dict(subnets=2, loss='kl-', min_scale=0.5, weight=0.3)),
])
def test_trainer_step_matches_hand_computation(mode, kwargs):
    model = _resnet18().train()
    trainer = StimulativeTrainer(model, mode=mode, seed=11, verbose=False, **kwargs)
    x, y = _tiny_batch()
    out = trainer(x, y)
    cfg = trainer.stim
    K = cfg.subnets
    assert set(out) >= {'loss', 'output', 'loss_main', 'loss_kl', 'depths', 'sizes'}
    assert out['loss_kl'].shape == (K,) and len(out['depths']) == K and len(out['sizes']) == K
    space = build_space(cfg.space, depth_ranges(model))
    for d, s in zip(out['depths'], out['sizes']):
        assert all(di in kept for di, kept in zip(d, space))
        assert int(cfg.min_scale * 32) <= s <= 32
    if cfg.min_scale >= 1:
        assert out['sizes'] == [32] * K
    torch.testing.assert_close(out['loss'], out['loss_main'] + cfg.weight * out['loss_kl'].sum())
    loss_main, loss_kl = _recompute(trainer, model, x, y, out)
    torch.testing.assert_close(out['loss_main'], loss_main.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['loss_kl'], loss_kl.detach(), rtol=1e-5, atol=1e-6)
    assert out['output'].shape == (6, 10) and out['output'].requires_grad
    out['loss'].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trainer_defaults():
    model = _resnet18()
    st = StimulativeTrainer(model, mode='st', verbose=False)
    assert (st.stim.subnets, st.stim.space, st.stim.loss, st.stim.min_scale) == (1, 'st', 'kl', 1.0)
    pp = StimulativeTrainer(model, verbose=False)
    assert (pp.stim.mode, pp.stim.subnets, pp.stim.space, pp.stim.loss) == ('stpp', 6, 'stpp', 'kl-')
    assert pp.amplitude == pytest.approx(DEFAULT_AMPLITUDE)
    assert pp.sampler.space == [[2], [1, 2], [1, 2], [2]]  # resnet18 [2, 2, 2, 2] under the stpp rule
    x, y = _tiny_batch()
    out = pp(x, y)
    assert len(out['depths']) == 6


# ------------------------------------------------------------------------ class-count rule (issue 28)
def test_logit_amplitude_rule():
    assert logit_amplitude(1000) == logit_amplitude(10) == logit_amplitude(3) == DEFAULT_AMPLITUDE == 1.0
    assert logit_amplitude(2) is None  # raw logits: LN(z) is +-1 at 2 classes
    assert logit_amplitude(2, 3.0) == 3.0 and logit_amplitude(1000, 0.5) == 0.5  # explicit A overrides
    with pytest.raises(ValueError, match='at least 2 classes'):
        logit_amplitude(1)
    z = _logits(5, shape=(8, 2)).requires_grad_()  # why: A * LN(z) is constant at 2 classes
    ln = normalize_logits(z, 1.0)
    torch.testing.assert_close(ln.abs(), torch.ones_like(ln), rtol=0, atol=1e-4)  # up to eps = 1e-7
    F.cross_entropy(ln, torch.arange(8) % 2).backward()
    assert z.grad.abs().max() < 1e-3


def _grad_norm(model):
    return float(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm())


def test_two_classes_stpp_trains_on_raw_logits(caplog):
    """2 classes, amplitude unset: main CE on z and plain KL (the step by hand), with a gradient; an explicit A = 1
    keeps the old behaviour (CE on LN(z) = +-1, no signal) and says so."""
    x, y = _tiny_batch()
    y = y % 2
    model = _resnet18(2).train()
    trainer = StimulativeTrainer(model, subnets=2, seed=3, verbose=False)
    assert trainer.amplitude is None and 'raw logits' in trainer.logit_rule
    out = trainer(x, y)
    z = model(x)
    kls = []
    for depths, size in zip(out['depths'], out['sizes']):
        with subnetwork(model, depths):
            kls.append(kl(z, model(smaller_input(x, size))))
    torch.testing.assert_close(out['loss_main'], F.cross_entropy(z, y).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['loss_kl'], torch.stack(kls).detach(), rtol=1e-5, atol=1e-6)
    out['loss'].backward()
    assert _grad_norm(model) > 0.1

    old = _resnet18(2).train()
    with caplog.at_level('WARNING', logger='timm_stim.trainer'):
        trainer = StimulativeTrainer(old, subnets=2, seed=3, amplitude=1.0, verbose=True)
    assert 'no gradient' in caplog.text and trainer.amplitude == 1.0
    out = trainer(x, y)
    torch.testing.assert_close(out['loss_main'], F.cross_entropy(normalize_logits(old(x), 1.0), y).detach())


@pytest.mark.parametrize('num_classes', [1000, 10, 3])
def test_rule_is_the_released_recipe_from_three_classes(num_classes):
    """Amplitude unset = explicit A = 1 (the released ST++ code), bit for bit: losses and gradients."""
    x, y = _tiny_batch()
    y = y % num_classes
    grads, losses = [], []
    for kw in (dict(), dict(amplitude=1.0)):
        model = _resnet18(num_classes).train()
        trainer = StimulativeTrainer(model, subnets=2, seed=3, verbose=False, **kw)
        assert trainer.amplitude == 1.0
        out = trainer(x, y)
        out['loss'].backward()
        losses.append(out['loss'])
        grads.append([p.grad for p in model.parameters()])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_one_class_refused_and_rule_logged(caplog):
    with pytest.raises(ValueError, match='--stim-mode stpp needs at least 2 classes'):
        StimulativeTrainer(_resnet18(1), verbose=False)
    with pytest.raises(ValueError, match='--stim-mode st needs at least 2 classes'):
        StimulativeTrainer(_resnet18(1), mode='st', verbose=False)
    StimulativeTrainer(_resnet18(1), mode='off', verbose=False)  # plain training: the criterion's business
    with caplog.at_level('INFO', logger='timm_stim.trainer'):
        StimulativeTrainer(_resnet18(10), verbose=True)
        StimulativeTrainer(_resnet18(2), verbose=True)
    assert '10 classes: KL- and main loss on A * LN(z), A = 1' in caplog.text
    assert '2 classes: raw logits for KL- and main loss' in caplog.text


@pytest.mark.parametrize('criterion', ['mixup', 'smoothing', 'bce', 'bce_mixup', 'kwargs'])
def test_trainer_with_timm_losses(criterion):
    model = _resnet18().train()
    x, y = _tiny_batch()
    kw = dict(mode='stpp', subnets=2, verbose=False)
    if criterion == 'mixup':
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
        x, y = mixup(x, y)
        trainer = StimulativeTrainer(model, criterion=SoftTargetCrossEntropy(), **kw)
    elif criterion == 'smoothing':
        trainer = StimulativeTrainer(model, criterion=LabelSmoothingCrossEntropy(0.1), **kw)
    elif criterion == 'bce':
        trainer = StimulativeTrainer(model, criterion=BinaryCrossEntropy(smoothing=0.1), **kw)
    elif criterion == 'bce_mixup':
        mixup = Mixup(mixup_alpha=0.8, num_classes=10)
        x, y = mixup(x, y)
        trainer = StimulativeTrainer(model, criterion=BinaryCrossEntropy(target_threshold=0.2), **kw)
    else:
        trainer = StimulativeTrainer(model, criterion_kwargs=dict(smoothing=0.1), **kw)
    out = trainer(x, y)
    assert torch.isfinite(out['loss']) and out['loss_kl'].shape == (2,)
    torch.testing.assert_close(out['loss_main'], trainer.criterion(normalize_logits(out['output'], trainer.amplitude),
                                                                   y).detach())
    out['loss'].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trainer_task_state_resumes_draws():
    x, y = _tiny_batch()
    a = StimulativeTrainer(_resnet18(), mode='st', subnets=2, seed=5, verbose=False)
    for _ in range(2):
        a(x, y)
    state = copy.deepcopy(a.get_task_state())
    expected = [a(x, y)['depths'] for _ in range(3)]
    b = StimulativeTrainer(_resnet18(), mode='st', subnets=2, seed=0, verbose=False)
    b.load_task_state(state)
    assert [b(x, y)['depths'] for _ in range(3)] == expected
    assert b.get_task_state(ema=True) == {}


# ------------------------------------------------------------------------------------------- bad inputs
def test_vit_fixed_size_with_smaller_inputs_refused():
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=10)
    with pytest.raises(ValueError, match='dynamic_img_size=True'):
        StimulativeTrainer(vit, mode='stpp', verbose=False)
    # patch-multiple sizes only (dynamic size, no padding): refused too
    vit_dyn = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=10, dynamic_img_size=True)
    with pytest.raises(ValueError, match='divisible by its patch size'):
        StimulativeTrainer(vit_dyn, mode='stpp', verbose=False)
    # without smaller inputs the fixed-size ViT trains
    out = StimulativeTrainer(vit, mode='stpp', subnets=2, min_scale=1.0, verbose=False)(*_tiny_batch(2))
    assert out['sizes'] == [32, 32]
    # a ViT made for any input size takes them
    vit_any = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=10, dynamic_img_size=True,
                                dynamic_img_pad=True)
    out = StimulativeTrainer(vit_any, mode='stpp', subnets=2, verbose=False)(*_tiny_batch(2))
    assert all(13 <= s <= 32 for s in out['sizes'])


def test_run_subnetworks_too_small_input_value_error():
    """Below the trainer's early check: a direct run_subnetworks call with a too-small input says what to do."""
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=10)
    with pytest.raises(ValueError, match='smaller than'):
        run_subnetworks(vit, torch.randn(1, 3, 32, 32), [((6,), 16)])
    assert len(vit.blocks) == 12


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='stpp++'), 'unknown stim mode'),
    (dict(loss='mse'), 'unknown stim loss'),
    (dict(subnets=-1), 'subnets'),
    (dict(min_scale=0.0), 'min_scale'),
    (dict(min_scale=1.5), 'min_scale'),
    (dict(temperature=0), 'temperature'),
    (dict(space='nope'), 'unknown sampling space'),
    (dict(space='2|2|2'), 'stages'),
    (dict(weight=-1), r'weight must be >= 0, got -1'),
    (dict(amplitude=0.0), r'amplitude must be > 0, got 0.0'),
    (dict(amplitude=-1.0), r'amplitude must be > 0'),
    (dict(space='3||3'), 'empty kept-set'),
])
def test_trainer_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StimulativeTrainer(_resnet18(), verbose=False, **kwargs)
    if kwargs != dict(space='2|2|2'):  # everything but the stage count is checked without a model
        with pytest.raises(ValueError, match=match):
            StimConfig(**kwargs).resolved()


@pytest.mark.parametrize('flag,value,api', [
    ('--stim-weight', '-1', dict(weight=-1.0)), ('--stim-amplitude', '0', dict(amplitude=0.0)),
    ('--stim-temp', '0', dict(temperature=0.0)), ('--stim-min-scale', '1.5', dict(min_scale=1.5)),
    ('--stim-subnets', '-1', dict(subnets=-1)), ('--stim-space', 'bogus', dict(space='bogus')),
])
def test_stim_flags_and_api_share_checks(flag, value, api, capsys):
    """add_stim_args refuses at parse time what StimConfig.resolved refuses, with the same rule in the message."""
    import argparse
    from timm_stim.trainer import add_stim_args
    parser = argparse.ArgumentParser(prog='x')
    add_stim_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([flag, value])
    err = capsys.readouterr().err
    with pytest.raises(ValueError) as e:
        StimConfig(**api).resolved()
    rule = str(e.value).split(',')[0].split(' ', 1)[1] if 'space' not in api else 'unknown sampling space'
    assert f'argument {flag}' in err and rule in err


def test_stim_config_from_args():
    import argparse
    from timm_stim.trainer import add_stim_args
    parser = argparse.ArgumentParser()
    add_stim_args(parser)
    parser.add_argument('--seed', type=int, default=42)
    cfg = StimConfig.from_args(parser.parse_args(['--stim-mode', 'st', '--stim-weight', '0.5']))
    assert (cfg.mode, cfg.subnets, cfg.loss, cfg.weight, cfg.seed) == ('st', 1, 'kl', 0.5, 42)
    assert StimConfig.from_args(parser.parse_args(['--stim-seed', '3'])).seed == 3
    assert StimConfig.from_args(parser.parse_args([])) == StimConfig(seed=42).resolved()


def test_trainer_non_residual_model():
    with pytest.raises(TypeError, match='Supported families'):
        StimulativeTrainer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), mode='st', verbose=False)
