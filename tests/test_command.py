"""`timm-stim-train`'s up-front errors (one line, exit 2, before the model is built and the data decoded), a full
disk during a checkpoint write, and resuming checkpoints written by the code before the command was reshaped."""
import argparse
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cifar10_path

REPO = Path(__file__).resolve().parents[1]
CIFAR = cifar10_path()  # $TIMM_STIM_CIFAR10, else ../shared/data/cifar10 (conftest)
needs_cifar = pytest.mark.skipif(not (CIFAR / 'train').is_dir(), reason=f'CIFAR-10 not at {CIFAR}')
BASE = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '-b', '32', '--warmup-epochs', '0', '--lr', '0.05',
        '--log-interval', '2', '--seed', '1', '--no-plot', '--train-subset', '128']
# the last commit whose train.py wrote checkpoints with the pre-reshape code (long runs were started with it)
PRE_RESHAPE_COMMIT = '32c1e11'


pytestmark = pytest.mark.usefixtures('stim_cache')  # tests/conftest.py: a fresh decoded-image cache


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _error(argv, capsys) -> str:
    """Run timm-stim-train expecting exit 2; the single error line it printed."""
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def no_model_build(monkeypatch):
    """Fail the test if the real model is built (the meta-device skeleton of the up-front check is allowed)."""
    import timm_stim.train as train_mod
    real = train_mod.create_model

    def guarded(*args, **kwargs):
        if torch.empty(0).device.type != 'meta':
            raise AssertionError('the model was built before the error')
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, 'create_model', guarded)


# ------------------------------------------------------------------------------------------ flags and files
def test_pretrained_path_without_pretrained_is_refused(tmp_path, capsys):
    weights = tmp_path / 'w.pth'
    torch.save({}, weights)
    err = _error(['--data-dir', str(tmp_path), '--pretrained-path', str(weights)], capsys)
    assert '--pretrained-path' in err and 'add --pretrained' in err


def test_missing_pretrained_path_is_refused(tmp_path, capsys):
    err = _error(['--data-dir', str(tmp_path), '--pretrained', '--pretrained-path', str(tmp_path / 'nope.pth')],
                 capsys)
    assert f'--pretrained-path {tmp_path / "nope.pth"}: no such file' in err


def test_missing_initial_checkpoint_names_the_file(tmp_path, capsys):
    err = _error(['--data-dir', str(tmp_path), '--initial-checkpoint', str(tmp_path / 'gone.pth.tar')], capsys)
    assert f'--initial-checkpoint {tmp_path / "gone.pth.tar"}: no such file' in err


# ------------------------------------------------------------------------------- before the model is built
def test_unknown_model_is_refused_with_close_names(tmp_path, capsys, no_model_build):
    err = _error(['--data-dir', str(tmp_path), '--model', 'cifar_resnet2O', '--output', str(tmp_path)], capsys)
    assert "unknown model 'cifar_resnet2O'" in err and 'did you mean' in err and 'cifar_resnet20' in err


def test_unsupported_family_is_refused_before_building(tmp_path, capsys, no_model_build):
    err = _error(['--data-dir', str(tmp_path), '--model', 'vgg11', '--stim-mode', 'stpp', '--output', str(tmp_path)],
                 capsys)
    assert 'VGG is not a supported residual network' in err and '--stim-mode off' in err


@needs_cifar
def test_read_only_output_directory_is_refused(tmp_path, capsys, monkeypatch, no_model_build):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    real_access = os.access
    if os.geteuid() == 0:  # root writes through mode bits: make the folder read-only as a read-only mount would
        monkeypatch.setattr(os, 'access', lambda p, m: False if Path(p) == ro else real_access(p, m))
    err = _error(['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--output', str(ro / 'runs')], capsys)
    assert f'{ro} is read-only' in err and '--output' in err
    (tmp_path / 'file').write_text('x')
    err = _error(['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--output', str(tmp_path / 'file' / 'runs')],
                 capsys)
    assert f'{tmp_path / "file"} is not a directory' in err


def test_empty_data_directory_is_refused(tmp_path, capsys, no_model_build):
    (tmp_path / 'data' / 'train').mkdir(parents=True)
    err = _error(['--data-dir', str(tmp_path / 'data'), '--model', 'cifar_resnet20', '--output', str(tmp_path)],
                 capsys)
    assert 'holds no files' in err and '--data-dir' in err
    assert list(tmp_path.iterdir()) == [tmp_path / 'data']  # no run directory was made


# ------------------------------------------------------------------------------------------------ full disk
@needs_cifar
def test_full_disk_names_the_file_removes_it_and_keeps_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    """The epoch-1 checkpoint write fails with ENOSPC half-way: one line naming the file, no partial tmp file,
    the epoch-0 checkpoints intact and resumable."""
    import builtins
    import timm_stim.checkpoint as ckpt_mod
    real_open, calls = builtins.open, []

    class HalfWritten:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_after_one(path, mode='r', *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        calls.append(path)
        return HalfWritten(f) if len(calls) > 1 else f

    monkeypatch.setattr(ckpt_mod, 'open', full_after_one, raising=False)
    run = BASE + ['--val-split', '', '--epochs', '2', '--stim-mode', 'off', '--stim-bn-recalib', '32',
                  '--output', str(tmp_path), '--experiment', 'full']
    err = _error(run, capsys)
    out = tmp_path / 'full'
    assert 'no space left on device' in err and str(out / 'tmp.pth.tar') in err and '--resume' in err
    assert not (out / 'tmp.pth.tar').exists()
    assert _load(out / 'last.pth.tar')['epoch'] == 0 and (out / 'checkpoint-0.pth.tar').is_file()


# ------------------------------------------------------------------------------ checkpoints of the old code
@pytest.mark.slow
@needs_cifar
def test_checkpoint_of_the_pre_reshape_code_resumes_bit_identically(tmp_path):
    """A run of the code before the reshape (kept as a git archive of that commit): the current code resumed from
    its mid-epoch recovery checkpoint ends with its weights, and a fresh current run gives the same weights too."""
    old = tmp_path / 'old'
    old.mkdir()
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', PRE_RESHAPE_COMMIT, 'timm_stim'],
                             capture_output=True)
    if archive.returncode or shutil.which('tar') is None:
        pytest.skip(f'commit {PRE_RESHAPE_COMMIT} not in this checkout: {archive.stderr.decode()[-200:]}')
    subprocess.run(['tar', '-x', '-C', str(old)], input=archive.stdout, check=True)
    run = BASE + ['--val-subset', '32', '--epochs', '2', '--stim-mode', 'stpp', '--stim-subnets', '1',
                  '--stim-min-scale', '0.85', '--stim-bn-recalib', '64', '--model-ema', '--mixup', '0.2',
                  '--recovery-interval', '1', '--output', str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(old), OMP_NUM_THREADS=str(torch.get_num_threads()))
    subprocess.run([sys.executable, '-m', 'timm_stim.train'] + run + ['--experiment', 'old'], env=env, check=True,
                   cwd=str(old), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recovery = sorted((tmp_path / 'old').glob('recovery-1-*.pth.tar'))
    assert recovery, 'the old run wrote no mid-epoch checkpoint'
    from timm_stim.train import main
    main(run + ['--experiment', 'resumed', '--resume', str(recovery[-1])])
    main(run + ['--experiment', 'new'])
    ref = _load(tmp_path / 'old' / 'last.pth.tar')
    for name in ('resumed', 'new'):
        got = _load(tmp_path / name / 'last.pth.tar')
        # what checkpoints gained since: the resolved train / eval data configs (--eval-img-size)
        assert set(got.keys()) - set(ref.keys()) == {'data_config'} and set(ref.keys()) <= set(got.keys()), name
        assert got['global_step'] == ref['global_step'] and got['loader'] == ref['loader']
        for key in ('state_dict', 'state_dict_ema'):
            for k in ref[key]:
                assert torch.equal(got[key][k], ref[key][k]), (name, key, k)


@needs_cifar
def test_output_that_cannot_be_created_is_refused(capsys, no_model_build):
    """Root passes os.access everywhere; a folder under /proc still cannot be made: one line, before any work."""
    from timm_stim.train import main
    if not os.path.isdir('/proc/self'):
        pytest.skip('no /proc here')
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(CIFAR), '--model', 'cifar_resnet20', '--output', '/proc/timm_stim_out'])
    assert e.value.code == 2
    assert '--output /proc/timm_stim_out: cannot create it' in capsys.readouterr().err
