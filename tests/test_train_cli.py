"""Short real runs of `timm-stim-train` / `timm-stim-validate` / the upstream launcher on a CIFAR-10 subset."""
import argparse
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cifar10_path

REPO = Path(__file__).resolve().parents[1]
CIFAR = cifar10_path()  # $TIMM_STIM_CIFAR10, else ../shared/data/cifar10 (conftest)
# a clone of huggingface/pytorch-image-models (a checkout, or a bare repository read at the installed timm's tag)
UPSTREAM = Path(os.environ['TIMM_UPSTREAM_DIR']) if os.environ.get('TIMM_UPSTREAM_DIR') else None

needs_cifar = pytest.mark.skipif(not (CIFAR / 'train').is_dir(), reason=f'CIFAR-10 not at {CIFAR}')

# cifar_resnet20, 64-160 images, batch 32: each run is a few seconds. ST++ runs use --stim-min-scale 0.85 (inputs
# 27..32 px): every new input size costs oneDNN a one-off kernel set-up, which dominates runs this short.
BASE = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '-b', '32', '--warmup-epochs', '0', '--lr', '0.05',
        '--log-interval', '2', '--seed', '1']


pytestmark = pytest.mark.usefixtures('stim_cache')  # tests/conftest.py: a fresh decoded-image cache


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _env():
    # same thread count as this process: CPU results are bit-identical only for equal thread counts
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                OMP_NUM_THREADS=str(torch.get_num_threads()))


def _train(*argv):
    from timm_stim.train import main
    return main(BASE + list(argv))


@pytest.fixture(scope='module')
def stpp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('stpp')
    res = _train('--train-subset', '128', '--val-subset', '64', '--epochs', '2', '--stim-mode', 'stpp',
                 '--stim-subnets', '1', '--stim-min-scale', '0.85', '--stim-bn-recalib', '64', '--output', str(out), '--experiment', 'run')
    return Path(res['output_dir']), res


# ------------------------------------------------------------------------------------------ real runs
@pytest.mark.slow
@needs_cifar
def test_stpp_writes_checkpoint_summary_plot(stpp_run):
    out, res = stpp_run
    for name in ('last.pth.tar', 'checkpoint-1.pth.tar', 'model_best.pth.tar', 'summary.csv', 'curves.png',
                 'args.yaml'):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / 'summary.csv')))
    assert [int(r['epoch']) for r in rows] == [0, 1]
    assert all(float(r['train_loss_kl']) > 0 for r in rows)  # the sub-network term is really trained
    assert all(0 <= float(r['eval_top1']) <= 100 for r in rows)
    ckpt = _load(out / 'last.pth.tar')
    assert 'stim_sampler' in ckpt['task_state'] and ckpt['loader'] == {'epoch': 2, 'batch': 0}
    assert ckpt['global_step'] == 8 and ckpt['scheduler'] is not None and len(ckpt['rng']) == 1
    # timm reads our checkpoint as any train checkpoint
    import timm
    m = timm.create_model('cifar_resnet20', checkpoint_path=str(out / 'last.pth.tar'))
    assert torch.equal(m.fc.weight, ckpt['state_dict']['fc.weight'])


@needs_cifar
def test_baseline_trains_without_kl(tmp_path):
    res = _train('--train-subset', '128', '--val-subset', '64', '--epochs', '1', '--stim-mode', 'off',
                 '--output', str(tmp_path), '--experiment', 'base')
    out = Path(res['output_dir'])
    assert (out / 'last.pth.tar').is_file() and (out / 'curves.png').is_file()
    rows = list(csv.DictReader(open(out / 'summary.csv')))
    assert len(rows) == 1 and float(rows[0]['train_loss_kl']) == 0.0
    assert float(rows[0]['train_loss']) == pytest.approx(float(rows[0]['train_loss_main']))


@pytest.mark.slow
@needs_cifar
def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    """Kill -9 mid-epoch after a step checkpoint, resume from the run directory: same final weights."""
    args = BASE + ['--train-subset', '128', '--val-split', '', '--epochs', '2', '--stim-mode', 'stpp',
                   '--stim-subnets', '1', '--stim-min-scale', '0.85', '--stim-bn-recalib', '64', '--model-ema', '--drop-path', '0.05',
                   '--mixup', '0.2', '--recovery-interval', '1', '--no-plot', '--output', str(tmp_path)]
    cmd = [sys.executable, '-m', 'timm_stim.train'] + args
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(cmd + ['--experiment', 'killed'], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list(killed.glob('recovery-1-*.pth.tar')):  # mid-epoch 1, after a step checkpoint
            break
        time.sleep(0.02)
    assert proc.poll() is None, f'run ended before it could be killed: {proc.stderr.read()[-2000:]}'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / 'checkpoint-1.pth.tar').exists()
    subprocess.run(cmd + ['--experiment', 'killed', '--resume', str(killed)], env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from timm_stim.train import main
    main(args + ['--experiment', 'straight'])
    a, b = _load(killed / 'last.pth.tar'), _load(tmp_path / 'straight' / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a['global_step'] == b['global_step'] == 8


@needs_cifar
def test_timm_loader_path_trains(tmp_path):
    """--no-fast-data: timm's create_dataset / create_loader (PIL transforms, prefetcher), capped batches."""
    res = _train('--train-subset', '64', '--val-subset', '32', '--epochs', '1', '-b', '16', '--no-fast-data',
                 '--workers', '0', '--train-batches-per-epoch', '2', '--stim-mode', 'st', '--stim-bn-recalib', '32',
                 '--no-plot', '--output', str(tmp_path), '--experiment', 'timm')
    assert _load(Path(res['output_dir']) / 'last.pth.tar')['global_step'] == 2
    assert res['results'][0]['validation']['top1'] >= 0


@pytest.mark.skipif(not os.path.isdir('/usr/share/datasets/fashion-mnist'),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_trains_one_channel(tmp_path):
    from timm_stim.train import main
    res = main(['--dataset', 'fashion-mnist', '--model', 'cifar_resnet20', '--in-chans', '1', '--img-size', '28',
                '-b', '32', '--train-subset', '64', '--val-subset', '64', '--epochs', '1', '--lr', '0.05',
                '--warmup-epochs', '0', '--stim-mode', 'stpp', '--stim-subnets', '1', '--no-plot',
                '--output', str(tmp_path), '--experiment', 'fm'])
    ckpt = _load(Path(res['output_dir']) / 'last.pth.tar')
    assert ckpt['state_dict']['conv1.weight'].shape[1] == 1 and ckpt['global_step'] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_cifar
def test_ddp_two_processes_equal_one_process(tmp_path):
    """torchrun, 2 gloo processes x batch 8 == 1 process x batch 16 (a GroupNorm ResNet-20: BatchNorm statistics
    are per process by design, so a BN model cannot match bit-for-bit)."""
    common = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--model-kwargs', 'norm_layer=groupnorm1',
              '--train-subset', '64', '--train-batches-per-epoch', '3', '--val-split', '', '--epochs', '1',
              '--warmup-epochs', '0', '--lr', '0.1', '--stim-mode', 'stpp', '--stim-subnets', '2', '--stim-min-scale', '0.85', '--no-plot',
              '--smoothing', '0.1', '--seed', '3', '--output', str(tmp_path)]
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                    '--master_port', str(_free_port()), '-m', 'timm_stim.train', '-b', '8', '--experiment', 'ddp']
                   + common, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from timm_stim.train import main
    main(common + ['-b', '16', '--experiment', 'single'])  # in-process: 1 x 16
    a, b = _load(tmp_path / 'ddp' / 'last.pth.tar'), _load(tmp_path / 'single' / 'last.pth.tar')
    assert a['world_size'] == 2 and b['world_size'] == 1 and len(a['rng']) == 2
    init = __import__('timm').create_model('cifar_resnet20', norm_layer='groupnorm1')  # same seed-independent check
    moved = 0
    for k, v in b['state_dict'].items():
        # float32 sums in another order (all-reduce of two half-batches) drift by up to ~1e-4 of a tensor's scale
        # after a few steps at lr 0.1, depending on thread counts; a wrong gradient average is off by far more
        if v.is_floating_point():
            err, scale = (a['state_dict'][k] - v).abs().max().item(), max(v.abs().max().item(), 1e-2)
            assert err < 5e-3 * scale, (k, err, scale)
        moved += int(k in init.state_dict() and not torch.equal(v, init.state_dict()[k]))
    assert moved > 0


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('bad', [
    ['--stim-mode', 'bogus'], ['--stim-loss', 'l2'], ['--stim-min-scale', '0'], ['--stim-min-scale', '1.5'],
    ['--batch-size', '0'], ['--stim-subnets', '-1'], ['--epochs', 'x'], ['--stim-temp', '0'],
    ['--grad-checkpointing'], ['--fast-data', '--aa', 'rand-m9'],
])
def test_bad_flags_are_argparse_errors(bad, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', '/nonexistent'] + bad)
    assert e.value.code == 2
    assert 'error:' in capsys.readouterr().err


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(tmp_path / 'nope'), '--model', 'cifar_resnet20', '--output', str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'does not exist' in err and '--data-dir' in err


@needs_cifar
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(BASE[:-6] + ['--train-subset', '128', '--val-split', '', '--epochs', '1', '--stim-mode', 'off',
                          '--lr', '1e30', '--smoothing', '0', '--recovery-interval', '1',
                          '--warmup-epochs', '0', '--no-plot', '--output', str(tmp_path), '--experiment', 'nan'])
    assert e.value.code == 3
    good = sorted((tmp_path / 'nan').glob('recovery-*.pth.tar'))
    assert good, 'the last good checkpoint must remain'
    ckpt = _load(good[-1])
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------ validate
@pytest.mark.slow
@needs_cifar
def test_validate_full_subnetwork_and_robustness(stpp_run, tmp_path, capsys):
    from timm_stim.validate import main
    out, _ = stpp_run
    common = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--checkpoint', str(out / 'last.pth.tar'),
              '--val-subset', '64', '-b', '64']
    full = main(common)['results'][0]
    assert full['full'] and full['depths'] == [3, 3, 3] and 0 <= full['top1'] <= 100
    sub = main(common + ['--depths', '3,2,3', '--bn-recalib', '64'])['results'][0]
    assert sub['depths'] == [3, 2, 3] and sub['flops'] < full['flops']
    main(common + ['--robustness', 'random', '--robustness-samples', '3', '--bn-recalib', '64',
                   '--results-file', str(tmp_path / 'rob.json')])
    data = json.load(open(tmp_path / 'rob.json'))
    assert len(data['results']) == 4 and data['results'][-1]['full'] and data['bn_recalib'] == 64
    assert (tmp_path / 'rob.png').is_file()
    flops = [r['flops'] for r in data['results']]
    assert max(flops) == flops[-1]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # bad depths: one line naming the stage, exit code 2
        main(common + ['--depths', '9,9,9'])
    assert exit_info.value.code == 2 and 'stage layer1 can keep 1..3 blocks, not 9' in capsys.readouterr().err


def _tiny_folder(data, per_class=8):
    """A 2-class image folder (train/ and val/) of links into the shared CIFAR-10 (nothing copied)."""
    for split in ('train', 'val'):
        for cls in ('airplane', 'cat'):
            (data / split / cls).mkdir(parents=True)
            for f in sorted((CIFAR / split / cls).iterdir())[:per_class]:
                (data / split / cls / f.name).symlink_to(f.resolve())
    return data


@needs_cifar
def test_validate_reports_true_bn_image_count(tmp_path, caplog):
    """--bn-recalib larger than the training split: the JSON, the rows and the log give the images really used."""
    from timm_stim.validate import main
    data = _tiny_folder(tmp_path / 'data')
    res = main(['--data-dir', str(data), '--model', 'cifar_resnet20', '--num-classes', '2', '-b', '8',
                '--robustness', 'random', '--robustness-samples', '1', '--bn-recalib', '2000',
                '--results-file', str(tmp_path / 'rob.json')])
    saved = json.load(open(tmp_path / 'rob.json'))
    assert res['bn_recalib'] == saved['bn_recalib'] == 16
    assert [r['bn_images'] for r in saved['results']] == [16, 16]
    assert 'has only 16 images' in caplog.text and '2000 training images' not in caplog.text


# ------------------------------------------------------------------------------------------ launcher
def test_launcher_splits_stim_flags():
    from timm_stim.launch_upstream import split_stim_args, stim_task_class
    stim, rest = split_stim_args(['--model', 'x', '--stim-mode', 'st', '-b', '4', '--stim-subnets', '2'])
    assert stim.mode == 'st' and stim.subnets == 2 and rest == ['--model', 'x', '-b', '4']
    stim, rest = split_stim_args(['--stim-loss', 'kl', '--', '--model', 'x'])
    assert rest == ['--model', 'x'] and stim.mode == 'stpp' and stim.loss == 'kl' and stim.subnets == 6
    with pytest.raises(SystemExit):
        split_stim_args(['--stim-bogus', '1'])
    import timm
    task = stim_task_class(dict(mode='st', subnets=1))(timm.create_model('resnet18', num_classes=4),
                                                       criterion=torch.nn.CrossEntropyLoss())
    assert task.stim.mode == 'st' and task.stim.subnets == 1


def test_launcher_stim_flag_after_separator_says_where_it_goes(capsys):
    from timm_stim.launch_upstream import split_stim_args
    with pytest.raises(SystemExit) as e:
        split_stim_args(['--stim-mode', 'st', '--', '--model', 'x', '--stim-subnets', '2'])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert '--stim-subnets after "--": --stim-* flags go before "--"' in err and 'unknown' not in err
    with pytest.raises(SystemExit):
        split_stim_args(['--stim-bogus', '1', '--', '--model', 'x'])
    err = capsys.readouterr().err
    assert 'unknown flag(s) --stim-bogus' in err and '--stim-subnets' in err


def test_launcher_refuses_bad_knobs_and_missing_script(tmp_path, capsys):
    from timm_stim.launch_upstream import main
    for argv, message in [([str(tmp_path / 'train.py')], 'upstream script not found'),
                          ([__file__, '--stim-weight', '-1'], 'argument --stim-weight: must be >= 0')]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_launcher_warns_that_kd_model_name_runs_no_st(tmp_path, capsys):
    """Upstream train.py with --kd-model-name builds its own distillation task: one warning line, the run goes on."""
    from timm_stim.launch_upstream import kd_warning, main
    assert kd_warning(['--stim-mode', 'st', '--', '--model', 'x']) is None
    warning = kd_warning(['--stim-mode', 'st', '--stim-subnets=2', '--', '--kd-model-name', 'resnet50'])
    assert 'WITHOUT ST (--stim-mode, --stim-subnets ignored)' in warning and '\n' not in warning
    assert 'the --stim-* defaults ignored' in kd_warning(['--', '--kd-model=resnet50'])  # argparse's prefix too
    script = tmp_path / 'train.py'
    script.write_text('import sys\nprint("ran", sys.argv[1:])\n')
    main([str(script), '--stim-mode', 'st', '--', '--kd-model-name', 'resnet50'])
    out, err = capsys.readouterr()
    assert "ran ['--kd-model-name', 'resnet50']" in out
    assert err.count('\n') == 1 and err.startswith('timm-stim-launch-upstream: warning: --kd-model-name makes')


def _upstream_script(name, tmp_path):
    """Upstream `name` from $TIMM_UPSTREAM_DIR: the checked-out file, or `git show v<installed timm>:name`."""
    if UPSTREAM is None or not UPSTREAM.is_dir():
        pytest.skip('set TIMM_UPSTREAM_DIR to a clone of huggingface/pytorch-image-models to test upstream scripts')
    if (UPSTREAM / name).is_file():
        return UPSTREAM / name
    import timm
    for rev in (f'v{timm.__version__}', 'HEAD'):
        src = subprocess.run(['git', '-C', str(UPSTREAM), 'show', f'{rev}:{name}'], capture_output=True, text=True)
        if src.returncode == 0:
            (tmp_path / name).write_text(src.stdout)
            return tmp_path / name
    pytest.skip(f'cannot read {name} from {UPSTREAM}: {src.stderr.strip()}')


def _launch(script, *argv):
    r = subprocess.run([sys.executable, '-m', 'timm_stim.launch_upstream', str(script), *argv], env=_env(),
                       capture_output=True, text=True, timeout=300)
    if r.returncode and ('ImportError' in r.stderr or 'cannot import name' in r.stderr):
        pytest.skip(f'upstream {script.name} needs a newer timm: {r.stderr.strip().splitlines()[-1]}')
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope='module')
def upstream_run(tmp_path_factory):
    """Upstream train.py, one epoch of cifar_resnet20_stim with ST++ (K=1) on 2 classes x 8 images."""
    if not (CIFAR / 'train').is_dir():
        pytest.skip(f'CIFAR-10 not at {CIFAR}')
    tmp_path = tmp_path_factory.mktemp('upstream')
    script = _upstream_script('train.py', tmp_path)
    data = _tiny_folder(tmp_path / 'data')
    r = _launch(script, '--stim-mode', 'stpp', '--stim-subnets', '1', '--', '--data-dir', str(data), '--model',
                'cifar_resnet20_stim', '--num-classes', '2', '-b', '8', '--epochs', '1', '--device', 'cpu',
                '--workers', '0', '--no-prefetcher', '--lr', '0.05', '--warmup-epochs', '0', '--output',
                str(tmp_path), '--experiment', 'up')
    return tmp_path, data, r, script


@pytest.mark.slow
def test_launcher_runs_upstream_train_py(upstream_run):
    out, _, r, script = upstream_run
    assert 'StimulativeTrainer' in r.stderr + r.stdout
    ckpt = _load(out / 'up' / 'last.pth.tar')
    if re.search(r'CheckpointSaver\([^)]*task=', script.read_text()):  # upstream >= v1.0.27 gives it the task
        assert 'stim_sampler' in ckpt['task_state']  # ... which stored our sampler state


@pytest.mark.slow
def test_launcher_runs_upstream_validate_py(upstream_run):
    """Upstream validate.py has no --device-modules: through the launcher it loads a `*_stim` checkpoint."""
    out, data, _, _ = upstream_run
    script = _upstream_script('validate.py', out)
    r = _launch(script, '--', '--data-dir', str(data), '--model', 'cifar_resnet20_stim', '--num-classes', '2',
                '--checkpoint', str(out / 'up' / 'last.pth.tar'), '-b', '8', '--device', 'cpu', '--workers', '0',
                '--no-prefetcher')
    result = json.loads(r.stdout.split('--result', 1)[1])
    assert result['model'] == 'cifar_resnet20_stim' and 0 <= result['top1'] <= 100


def test_console_scripts_exit_zero(monkeypatch):
    """The console scripts (`sys.exit(entry())`) must not pass main()'s result dict to sys.exit (exit code 1)."""
    from importlib.metadata import entry_points
    import timm_stim.train as train_mod
    import timm_stim.validate as validate_mod
    scripts = {ep.name: ep for ep in entry_points(group='console_scripts') if ep.name.startswith('timm-stim-')}
    assert {'timm-stim-train', 'timm-stim-validate', 'timm-stim-launch-upstream'} <= set(scripts)
    for mod in (train_mod, validate_mod):
        monkeypatch.setattr(mod, 'main', lambda argv=None: {'results': []})
    for name in ('timm-stim-train', 'timm-stim-validate'):
        with pytest.raises(SystemExit) as exc:
            raise SystemExit(scripts[name].load()())
        assert exc.value.code is None


@needs_cifar
def test_holdout_trains_without_the_heldout_images_and_validates_on_them(tmp_path, caplog):
    """--holdout N: the seeded held-out images (timm_stim.heldout) leave training and become the validation set."""
    import logging
    from timm_stim.heldout import split_heldout
    from timm_stim.train import main as main_train
    data = _tiny_folder(tmp_path / 'data', per_class=24)
    caplog.set_level(logging.INFO)
    res = main_train(['--data-dir', str(data), '--model', 'cifar_resnet20', '--num-classes', '2', '-b', '8',
                      '--epochs', '1', '--stim-mode', 'off', '--holdout', '16', '--stim-bn-recalib', '8',
                      '--output', str(tmp_path), '--experiment', 'held'])
    assert 'Held out 16 of 48 training images' in caplog.text and 'training on 32' in caplog.text
    rows = list(csv.DictReader(open(Path(res['output_dir']) / 'summary.csv')))
    assert len(rows) == 1
    rest, held = split_heldout(48, 16)
    assert len(rest) == 32 and not set(rest.tolist()) & set(held.tolist())
