"""The training protocol behind every long run: BN re-estimation (model and EMA), NaN recovery, --sync-bn,
the fast data path's checks, up-front refusals, bfloat16 on CPU, and the minimum timm version."""
import argparse
import csv
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import cifar10_path

REPO = Path(__file__).resolve().parents[1]
CIFAR = cifar10_path()  # $TIMM_STIM_CIFAR10, else ../shared/data/cifar10 (conftest)
needs_cifar = pytest.mark.skipif(not (CIFAR / 'train').is_dir(), reason=f'CIFAR-10 not at {CIFAR}')

BASE = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '-b', '32', '--warmup-epochs', '0', '--lr', '0.05',
        '--log-interval', '2', '--seed', '1', '--no-plot', '--train-subset', '128']


pytestmark = pytest.mark.usefixtures('stim_cache')  # tests/conftest.py: a fresh decoded-image cache


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _bn_buffers(state):
    return {k: v for k, v in state.items() if k.endswith(('running_mean', 'running_var'))}


# ------------------------------------------------------------------------------------------ BatchNorm
@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
    from timm_stim.train import main
    out = tmp_path_factory.mktemp('ema')
    res = main(BASE + ['--val-split', '', '--epochs', '1', '--stim-mode', 'stpp', '--stim-subnets', '1',
                       '--stim-min-scale', '0.5', '--model-ema', '--model-ema-decay', '0.5',
                       '--stim-bn-recalib', '64', '--output', str(out), '--experiment', 'ema'])
    return Path(res['output_dir'])


@needs_cifar
def test_ema_bn_statistics_are_a_fresh_reestimation(ema_run):
    """stpp + EMA: the EMA's BN buffers in the checkpoint equal a re-estimation of the EMA weights on the same
    (training-augmented) images, not an average of statistics disturbed by sub-network passes."""
    import timm
    from timm.data import resolve_data_config
    from timm_stim.depth import recalibrate_bn
    from timm_stim.loaders import create_train_loaders, recalib_batches
    ckpt = _load(ema_run / 'last.pth.tar')
    args = ckpt['args']
    ema = timm.create_model('cifar_resnet20')
    ema.load_state_dict(ckpt['state_dict_ema'])
    stored = _bn_buffers(ckpt['state_dict_ema'])
    recalib = create_train_loaders(args, resolve_data_config(vars(args), model=ema), torch.device('cpu')).recalib
    assert recalibrate_bn(ema, recalib_batches(recalib, 0), 64) == 64
    fresh = _bn_buffers(ema.state_dict())
    for k in stored:
        torch.testing.assert_close(stored[k], fresh[k], rtol=1e-5, atol=1e-6, msg=k)
    # the trained model was re-estimated on those same images too
    model = timm.create_model('cifar_resnet20')
    model.load_state_dict(ckpt['state_dict'])
    trained = _bn_buffers(ckpt['state_dict'])
    recalibrate_bn(model, recalib_batches(recalib, 0), 64)
    for k, v in _bn_buffers(model.state_dict()).items():
        torch.testing.assert_close(trained[k], v, rtol=1e-5, atol=1e-6, msg=k)


@needs_cifar
def test_validate_use_ema_reestimates_bn(ema_run):
    from timm_stim.validate import _parse_args, main
    assert _parse_args(['--use-ema']).bn_recalib == 2000 and _parse_args([]).bn_recalib == 0
    res = main(['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--checkpoint', str(ema_run / 'last.pth.tar'),
                '--use-ema', '--val-subset', '64', '--bn-recalib', '64', '-b', '32'])
    assert res['bn_recalib'] == 64 and 0 <= res['results'][0]['top1'] <= 100


def test_recipe_file_sets_the_recommended_recipe_and_no_amp_overrides_it():
    from timm_stim.train import _parse_args
    recipe = str(REPO / 'benchmarks' / 'recipes' / 'cifar10.yaml')
    args = _parse_args(['-c', recipe])
    assert args.amp and args.amp_dtype == 'auto' and not args.filter_bias_and_bn  # bfloat16 where the CPU has it
    assert args.model_kwargs == {'zero_init_last': False} and args.sched_on_updates and args.stim_bn_recalib_aug
    assert not _parse_args(['-c', recipe, '--no-amp']).amp  # MobileNetV3 trains faster in float32 here


def test_bn_reestimation_is_the_default_for_every_mode():
    from timm_stim.train import _parse_args
    for mode in ('off', 'st', 'stpp'):
        args = _parse_args(['--stim-mode', mode])
        assert args.stim_bn_recalib == 2000 and args.stim_bn_recalib_aug, mode
    assert not _parse_args(['--no-stim-bn-recalib-aug']).stim_bn_recalib_aug


def test_recalibrate_bn_takes_several_models_on_the_same_batches():
    import timm
    import timm_stim  # noqa: F401
    from timm_stim.depth import recalibrate_bn
    torch.manual_seed(0)
    a = timm.create_model('cifar_resnet20')
    b = timm.create_model('cifar_resnet20')
    b.load_state_dict(a.state_dict())
    batches = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    assert recalibrate_bn([a, b], iter(batches), 20) == 20
    ref = timm.create_model('cifar_resnet20')
    ref.load_state_dict(a.state_dict())
    recalibrate_bn(ref, iter(batches), 20)
    for k, v in _bn_buffers(ref.state_dict()).items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v)


# --------------------------------------------------------------------------------------- NaN recovery
@needs_cifar
def test_nan_recovery_end_to_end(tmp_path, caplog):
    """The learning rate jumps 1e9x after epoch 0: the run stops with exit 3 without writing a bad checkpoint,
    names one with finite weights, and the advised resume with a new --lr trains on at the new rate."""
    from timm_stim.train import main
    run = ['--val-split', '', '--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-min-scale', '0.5',
           '--stim-bn-recalib', '64', '--sched', 'step', '--decay-epochs', '1', '--smoothing', '0',
           '--output', str(tmp_path), '--experiment', 'nan']
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        main(BASE + run + ['--epochs', '3', '--decay-rate', '1e9'])
    assert e.value.code == 3
    msg = caplog.text
    named = re.search(r'Last good checkpoint \(finite weights\): (\S+)\.', msg)
    assert named and '--resume' in msg and '--lr' in msg, msg
    named = Path(named.group(1))
    for f in (tmp_path / 'nan').glob('*.pth.tar'):  # nothing non-finite was ever written
        state = _load(f)['state_dict']
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), f
    assert _load(named)['epoch'] == 0
    res = main(BASE + run + ['--epochs', '3', '--decay-rate', '0.5', '--lr', '0.01', '--resume', str(named)])
    rows = list(csv.DictReader(open(Path(res['output_dir']) / 'summary.csv')))
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    assert [float(r['lr']) for r in rows[1:]] == pytest.approx([0.005, 0.0025])  # the new schedule, not 5000
    assert all(torch.isfinite(v).all() for v in _load(Path(res['output_dir']) / 'last.pth.tar')['state_dict'].values()
               if v.is_floating_point())


def test_nonfinite_tensors_sees_bn_buffers():
    import timm
    import timm_stim  # noqa: F401
    from timm_stim.train import nonfinite_tensors
    m = timm.create_model('cifar_resnet20')
    assert nonfinite_tensors(m) == []
    m.layer1[0].bn1.running_var[0] = float('inf')
    assert nonfinite_tensors(m) == ['layer1.0.bn1.running_var']


# -------------------------------------------------------------------------------------------- sync BN
def test_sync_bn_keeps_batchnormact_activation_on_mobilenetv3():
    import timm
    from timm.layers import BatchNormAct2d
    import timm_stim.train as train_mod
    model = timm.create_model('mobilenetv3_large_100', num_classes=10).eval()
    n_act = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    synced = train_mod.convert_sync_batchnorm(model).eval()  # what --sync-bn calls
    kept = [m for m in synced.modules() if isinstance(m, nn.SyncBatchNorm) and hasattr(m, 'act')]
    assert n_act > 0 and len(kept) == n_act
    assert not any(type(m) is nn.SyncBatchNorm for m in synced.modules())  # torch's converter would leave these
    torch.testing.assert_close(synced(x), ref)


# ----------------------------------------------------------------------------------- fast data path
def _folder(root: Path, size: int, per_class: int = 3, corrupt: bool = False) -> Path:
    from PIL import Image
    for split in ('train', 'val'):
        for c, cls in enumerate(('a', 'b')):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new('RGB', (size, size), (40 * i, 80 * c, 20)).save(d / f'{i}.png')
    if corrupt:
        (root / 'train' / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    return root


def test_fast_path_refuses_large_images_from_one_header(tmp_path, monkeypatch):
    import timm_stim.data as data
    root = _folder(tmp_path / 'big', 100)
    decoded = []
    monkeypatch.setattr(data, '_decode_file', lambda p: decoded.append(p))
    with pytest.raises(ValueError, match=r'100x100 px .*--no-fast-data'):
        data.load_image_tensors('', str(root), 'train', cache_dir=tmp_path / 'cache')
    assert decoded == [] and not (tmp_path / 'cache').exists()  # nothing decoded, no cache written


def test_fast_path_skips_a_corrupt_image_naming_it(tmp_path, caplog):
    from timm_stim.data import load_image_tensors
    root = _folder(tmp_path / 'small', 8, corrupt=True)
    with caplog.at_level(logging.WARNING):
        data = load_image_tensors('', str(root), 'train', cache_dir=tmp_path / 'cache')
    assert len(data) == 6 and data.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert 'broken.jpg' in caplog.text


@pytest.mark.parametrize('flags', [['--scale', '0.5', '1'], ['--ratio', '1', '1'], ['--color-jitter', '0.2'],
                                   ['--train-interpolation', 'bicubic'], ['--aa', 'rand-m9']])
def test_fast_data_refuses_timm_flags_it_does_not_implement(flags, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', '/nonexistent', '--fast-data'] + flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and '--no-fast-data' in err


def test_fast_path_vflip_and_crop_pct():
    import torch.nn.functional as F
    from timm_stim.data import ImageTensors, TensorLoader
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).to(torch.uint8)
    data = ImageTensors(imgs, torch.tensor([0, 1]), ['a', 'b'])
    x, _ = next(iter(TensorLoader(data, 2, True, [0.], [1 / 255], padding=0, hflip=0., vflip=1.)))
    assert torch.equal(x, imgs.float().flip(-2))
    x, _ = next(iter(TensorLoader(data, 2, False, [0.], [1 / 255], crop_pct=0.8)))
    big = F.interpolate(imgs.float(), size=(10, 10), mode='bilinear', align_corners=False, antialias=True)
    torch.testing.assert_close(x, big[..., 1:9, 1:9])


# ------------------------------------------------------------------------------------ up-front refusals
def test_off_mode_with_subnets_is_refused(capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', '/nonexistent', '--stim-mode', 'off', '--stim-subnets', '2'])
    assert e.value.code == 2 and '--stim-mode st or stpp' in capsys.readouterr().err


@needs_cifar
def test_timm_loader_batch_larger_than_dataset_is_refused(tmp_path, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(BASE[:-1] + ['16', '-b', '32', '--no-fast-data', '--workers', '0', '--epochs', '1',
                          '--output', str(tmp_path)])
    assert e.value.code == 2 and 'lower --batch-size' in capsys.readouterr().err
    assert not list(tmp_path.rglob('*.pth.tar'))


# ------------------------------------------------------------------------------------ bfloat16 on CPU
@needs_cifar
def test_bfloat16_run_resumes_to_identical_weights(tmp_path):
    """--amp --amp-dtype bfloat16 on CPU through training, sub-networks, BN re-estimation (model and EMA),
    evaluation and checkpoints; stopping after epoch 0 and resuming gives the weights of a straight run."""
    from timm_stim.train import main
    run = BASE + ['--val-subset', '32', '--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-min-scale', '0.5',
                  '--stim-bn-recalib', '64', '--model-ema', '--amp', '--amp-dtype', 'bfloat16', '--channels-last',
                  '--output', str(tmp_path)]
    main(run + ['--epochs', '2', '--experiment', 'straight'])
    main(run + ['--epochs', '1', '--experiment', 'split'])
    a = _load(tmp_path / 'split' / 'last.pth.tar')
    assert a['state_dict']['conv1.weight'].dtype == torch.float32  # autocast: weights stay float32
    res = main(run + ['--epochs', '2', '--experiment', 'split', '--resume', str(tmp_path / 'split')])
    assert res['results'][-1]['validation']['top1'] >= 0
    a, b = _load(tmp_path / 'split' / 'last.pth.tar'), _load(tmp_path / 'straight' / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        for k in b[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    from timm_stim.bf16_conv import cpu_name
    from timm_stim.summary import precision_launches
    launches = precision_launches(tmp_path / 'split')  # each launch: from where, in which precision, on which CPU
    assert [line.split(' ', 2)[2] for line in launches] == [f'epoch {e}: bfloat16 on {cpu_name()}' for e in (0, 1)]
    i = run.index('--amp')
    main(run[:i] + run[i + 3:] + ['--epochs', '1', '--experiment', 'f32'])
    assert precision_launches(tmp_path / 'f32')[0].endswith(f'epoch 0: float32 on {cpu_name()}')


def test_bfloat16_autocast_on_a_cpu_without_bfloat16_instructions_warns(monkeypatch, caplog):
    """An AVX2 CPU emulates bfloat16 (a CIFAR ResNet trains ~16x slower than in float32): say so, name --no-amp."""
    import timm_stim.train as T
    args = argparse.Namespace(amp=True, amp_dtype='bfloat16')
    for native in (True, False):
        monkeypatch.setattr(T, 'native_cpu_bfloat16', lambda native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='train'):
            autocast, scaler = T._amp(args, torch.device('cpu'))
        assert scaler is None and autocast().fast_dtype == torch.bfloat16  # the flag is still obeyed
        assert ('no bfloat16 instructions' in caplog.text and '--no-amp' in caplog.text) is not native


# ------------------------------------------------------------------------------------- timm version
def test_declared_minimum_timm_matches_the_package():
    from timm_stim.version import MIN_TIMM
    text = (REPO / 'pyproject.toml').read_text()
    assert f'"timm>={MIN_TIMM},<2"' in text


@pytest.mark.slow
def test_older_timm_gets_a_clear_error_and_the_minimum_imports(tmp_path):
    """timm 1.0.30 (the release before the declared minimum) lacks what timm_stim imports: a clear ImportError."""
    from timm_stim.version import MIN_TIMM
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}', PIP_DISABLE_PIP_VERSION_CHECK='1')
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(tmp_path),
                        'timm==1.0.30'], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f'cannot fetch timm 1.0.30 from the package index: {r.stderr.strip()[-200:]}')
    r = subprocess.run([sys.executable, '-c', 'import timm_stim'], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and f'timm-stim needs timm>={MIN_TIMM}, found timm 1.0.30' in r.stderr
