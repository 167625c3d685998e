"""Issue 29: releases that never lose or corrupt a tag, and errors a user can read.

Tiny synthetic checkpoints (a seeded `cifar_resnet20`, no training) and a tiny PNG image folder keep these fast;
the concurrency and kill tests start subprocesses and are marked slow. One test per item of the issue:
1 tag grammar, 2 manifest lock, 3 all-or-nothing release (and the sidecar files an entry owns), 4 export into a
non-empty folder, 5 a listed tag without its file offline, 6 one-line errors (exit 2), 7 silent wrong data,
8 push without network, 9 file modes, 10 no checkpoints in git, 11 the Hub card from the manifest entry alone.
"""
import argparse
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch

from timm_stim.models import weights as W

ROOT = Path(__file__).resolve().parents[1]
MODEL, TAG = 'cifar_resnet20', 'unit'
NAME = f'{MODEL}.{TAG}'


def _state_dict(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(MODEL).state_dict().items()}


def _train_checkpoint(path: Path, model: str = MODEL, seed: int = 0) -> Path:
    """What timm-stim-train writes, as far as a resume or a validate reads it."""
    torch.manual_seed(seed)
    torch.save({'epoch': 0, 'arch': model, 'args': argparse.Namespace(model=model, num_classes=10),
                'state_dict': timm.create_model(model).state_dict()}, path)
    return path


@pytest.fixture()
def wdir(tmp_path):
    d = tmp_path / 'weights'
    W.write_weights(_state_dict(0), MODEL, TAG, 10, d, dataset='cifar10')
    return d


@pytest.fixture()
def images(tmp_path):
    """A 3-class image folder (train/ and val/, 4 PNGs of 32x32 per class)."""
    from PIL import Image
    root = tmp_path / 'data'
    for split in ('train', 'val'):
        for c, cls in enumerate(('a', 'b', 'c')):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new('RGB', (32, 32), (40 * i, 80 * c, 0)).save(root / split / cls / f'{i}.png')
    return root


def _python(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def _one_line_error(capsys, prog: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err and err[-1].startswith(f'{prog}: error: '), err[-5:]
    assert 'Traceback' not in '\n'.join(err) and 'weights_only=False' not in err[-1]
    return err[-1]


# ------------------------------------------------------------------------------------------ 1 tag grammar
@pytest.mark.parametrize('tag', ['sub/../../../../escaped2', 'a/b', '..', 'has space', 'a.b', ''])
def test_tag_grammar_is_checked_before_anything_is_read(tag, tmp_path, capsys):
    from timm_stim.release import main
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / 'no_such_run'), '--tag', tag, '--weights-dir', str(tmp_path / 'w')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'not a timm tag name' in err and 'no such run' not in err  # refused before the run was looked at
    assert not (tmp_path / 'w').exists() and not list(tmp_path.parent.glob('escaped2*'))
    with pytest.raises(ValueError, match='not a timm tag name'):
        W.write_weights(_state_dict(), MODEL, tag, 10, tmp_path / 'w')
    assert not (tmp_path / 'w').exists()


def test_a_manifest_naming_a_path_outside_the_weights_folder_is_skipped(tmp_path):
    good = dict(model=MODEL, tag='t', file=f'{MODEL}.t.safetensors', sha256='0' * 64, num_classes=10)
    for bad in (dict(tag='../x'), dict(file='../../etc/passwd.safetensors'), dict(file='/abs.safetensors')):
        (tmp_path / 'manifest.json').write_text(json.dumps({'weights': [dict(good, **bad)]}))
        with pytest.raises(ValueError):
            W.read_manifest(tmp_path)
        with pytest.warns(UserWarning):
            assert W.read_manifest(tmp_path, strict=False) == []


# ------------------------------------------------------------------------------------------- 2 the lock
def test_the_manifest_lock_makes_a_second_writer_wait(wdir):
    code = f'''
        import time
        from timm_stim.models import weights as W
        with W.manifest_lock({str(wdir)!r}):
            print('locked', flush=True)
            time.sleep(4)
    '''
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                              cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == 'locked'
        t0 = time.time()
        W.write_weights(_state_dict(1), MODEL, 'second', 10, wdir)
        assert time.time() - t0 > 1.5  # it waited for the other process's read-modify-write
    finally:
        holder.wait(timeout=60)
    assert [e.tag for e in W.read_manifest(wdir)] == [TAG, 'second']


@pytest.mark.slow
def test_two_releases_at_once_both_land(tmp_path):
    d = tmp_path / 'weights'
    code = '''
        import sys, timm, torch
        from timm_stim.models import weights as W
        sd = timm.create_model('cifar_resnet20').state_dict()
        print('ready', flush=True)
        sys.stdin.readline()
        for i in range(6):
            W.write_weights(sd, 'cifar_resnet20', f'{sys.argv[1]}{i}', 10, sys.argv[2])
    '''
    procs = [subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), who, str(d)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                              env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')) for who in 'ab']
    for p in procs:
        assert p.stdout.readline().strip() == 'ready'
    for p in procs:  # start both together
        p.stdin.write('go\n')
        p.stdin.flush()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    entries = W.read_manifest(d)
    assert sorted(e.tag for e in entries) == sorted(f'{w}{i}' for w in 'ab' for i in range(6))
    assert sorted(p.name for p in d.glob('*.safetensors')) == sorted(e.file for e in entries)  # none orphaned


# ------------------------------------------------------------------------------------ 3 all or nothing
def _check_loadable(d: Path, name: str = NAME) -> W.WeightsEntry:
    entry = next(e for e in W.read_manifest(d) if e.name == name)
    for stored in entry.stored():
        W.resolve_file(entry, d, stored=stored)  # size and sha256 checked
    assert not list(d.rglob('*.tmp'))
    return entry


def test_a_rerelease_that_dies_before_the_switch_leaves_the_old_tag(wdir, monkeypatch):
    old = _check_loadable(wdir)
    monkeypatch.setattr(W, 'write_manifest', lambda *a, **k: (_ for _ in ()).throw(OSError('killed here')))
    with pytest.raises(OSError, match='killed here'):
        W.write_weights(_state_dict(1), MODEL, TAG, 10, wdir)
    assert _check_loadable(wdir) == old  # the old bytes were never written over
    monkeypatch.undo()
    new = W.write_weights(_state_dict(1), MODEL, TAG, 10, wdir)  # the next release sweeps the orphan
    assert new.file != old.file and new.sha256 != old.sha256 and _check_loadable(wdir) == new
    assert sorted(p.name for p in wdir.iterdir() if p.suffix == '.safetensors') == [new.file]
    again = W.write_weights(_state_dict(1), MODEL, TAG, 10, wdir)  # the same weights again: nothing changes
    assert again.file == new.file and again.sha256 == new.sha256


def test_an_entry_owns_all_its_files(wdir, monkeypatch):
    """The per-depth BN statistics (`depth_stats`) are written, replaced, moved, exported and removed with the
    weights: a re-release replaces both, one without them drops the old sidecar, a removed entry takes both."""
    stats = ({'layer1.0.bn1.running_mean': torch.zeros(16)}, {'configs': [[1, 1, 1]]})
    first = W.write_weights(_state_dict(0), MODEL, TAG, 10, wdir, depth_stats=stats)
    assert first.files() == [f'{NAME}.safetensors', f'{NAME}.depths.safetensors']
    assert all(stat.S_IMODE((wdir / f).stat().st_mode) == 0o644 for f in first.files())
    assert first.depth_stats['configs'] == [[1, 1, 1]] and first.depth_stats['hf_hub_filename'] == \
        'depth_stats.safetensors' and W.resolve_depth_stats(first, wdir) == wdir / first.files()[1]
    second = W.write_weights(_state_dict(0), MODEL, TAG, 10, wdir,
                             depth_stats=({'layer1.0.bn1.running_mean': torch.ones(16)}, {'configs': []}))
    assert second.file == first.file and second.depth_stats['file'] != first.depth_stats['file']
    assert not (wdir / first.depth_stats['file']).exists() and _check_loadable(wdir) == second
    monkeypatch.setattr(W, 'GIT_PART_MB', 0.4)
    moved = W.move_weights(NAME, directory=wdir)  # the weights go to hub/, the sidecar stays in the wheel
    assert moved.file.startswith('hub/') and W.part_files(wdir / moved.file) and not (wdir / second.file).exists()
    assert moved.depth_stats == second.depth_stats and _check_loadable(wdir) == moved
    plain = W.write_weights(_state_dict(0), MODEL, TAG, 10, wdir, out_of_wheel=True)
    assert plain.depth_stats == {} and not list(wdir.rglob('*.depths.*'))
    from safetensors.torch import save
    swapped = W.set_depth_stats(NAME, save({'x': torch.ones(3)}), {'configs': [[2, 2, 2]]}, wdir, depths=[{'a': 1}])
    assert swapped.file == plain.file and swapped.depths == [{'a': 1}] and _check_loadable(wdir) == swapped
    assert W.set_depth_stats(NAME, None, directory=wdir).depth_stats == {} and not list(wdir.rglob('*.depths.*'))
    other = W.write_weights(_state_dict(2), MODEL, 'other', 10, wdir, depth_stats=stats)
    assert all((wdir / f).is_file() for f in other.files())
    W.update_manifest(lambda entries: ([e for e in entries if e.tag != 'other'], {}), wdir)  # removed: both go
    assert not list(wdir.rglob(f'{MODEL}.other.*')) and _check_loadable(wdir).file == plain.file


_RERELEASE = '''
import sys, timm, torch
from timm_stim.models import weights as W
sd = timm.create_model('cifar_resnet20').state_dict()
print('ready', flush=True)
for i in range(1000):
    sd['fc.bias'] += 1  # new bytes every time
    W.write_weights(sd, 'cifar_resnet20', 'unit', 10, sys.argv[1], out_of_wheel=i % 2 == 1,
                    depth_stats=({'x': torch.full((4,), float(i))}, {'configs': []}) if i % 3 else None)
'''


@pytest.mark.slow
def test_kill_9_at_any_point_of_a_rerelease_leaves_the_old_tag_loadable_and_no_tmp(wdir):
    rng, seen = random.Random(0), set()
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, '-c', _RERELEASE, str(wdir)], stdout=subprocess.PIPE, text=True,
                                cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1'))
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(rng.uniform(0.05, 1.5))
        assert proc.poll() is None, 'the release loop ended before the kill'
        proc.send_signal(signal.SIGKILL)  # the release process this test started
        assert proc.wait(timeout=60) == -signal.SIGKILL
        seen.add(_check_loadable(wdir).sha256)
    assert len(seen) > 1  # the kills landed while tags were being re-released


# --------------------------------------------------------------------------------- 4 export: non-empty
def test_export_refuses_a_folder_with_files_unless_overwrite(wdir, tmp_path, capsys):
    from timm_stim.hub import export_cli
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'README.md').write_text('mine')
    with pytest.raises(SystemExit) as e:
        export_cli([NAME, str(out), '--weights-dir', str(wdir)])
    assert e.value.code == 2 and 'not empty' in _one_line_error(capsys, 'timm-stim-export')
    assert [p.name for p in out.iterdir()] == ['README.md'] and (out / 'README.md').read_text() == 'mine'
    export_cli([NAME, str(out), '--weights-dir', str(wdir), '--overwrite'])
    assert (out / 'README.md').read_text().startswith('---\n') and (out / 'model.safetensors').is_file()
    assert not (out / 'depth_stats.safetensors').exists()
    W.write_weights(_state_dict(0), MODEL, TAG, 10, wdir, depth_stats=({'x': torch.zeros(2)}, {'configs': []}))
    export_cli([NAME, str(out), '--weights-dir', str(wdir), '--overwrite'])  # the sidecar goes along
    assert W.sha256_file(out / 'depth_stats.safetensors') == W.find_entry(MODEL, TAG, wdir).depth_stats['sha256']
    assert stat.S_IMODE((out / 'depth_stats.safetensors').stat().st_mode) == 0o644


# ------------------------------------------------------------------------- 5 a listed tag without its file
def test_a_listed_tag_without_its_file_fails_offline_in_seconds_in_one_line(wdir):
    (wdir / f'{NAME}.safetensors').unlink()  # as an installed wheel holds a weights/hub/ tag: listed, no file
    res = _python(f'''
        import time, timm, timm_stim
        t0 = time.time()
        try:
            timm.create_model({NAME!r}, pretrained=True)
        except FileNotFoundError as e:
            print(round(time.time() - t0, 1)); print(e)
    ''', TIMM_STIM_WEIGHTS_DIR=str(wdir), HF_HUB_OFFLINE='', HF_ENDPOINT='http://timm-stim-test.invalid',
        HF_HUB_CACHE=str(wdir.parent / 'hf'))
    seconds, message = res.stdout.strip().split('\n', 1)
    assert float(seconds) < 10 and '\n' not in message, res.stdout + res.stderr[-2000:]
    assert str(wdir / f'{NAME}.safetensors') in message and 'cannot resolve timm-stim-test.invalid' in message
    assert 'git clone --depth 1' in message and 'weights/hub/' in message


# ---------------------------------------------------------------------------------- 6 one-line errors
@pytest.mark.parametrize('case', ['truncated', 'other_model', 'pickle'])
def test_resume_errors_are_one_line_exit_2(case, images, tmp_path, capsys):
    from timm_stim.train import main
    ckpt = _train_checkpoint(tmp_path / 'last.pth.tar')
    model = MODEL
    if case == 'truncated':
        ckpt.write_bytes(ckpt.read_bytes()[:100000])
    elif case == 'other_model':
        model = 'cifar_resnet32'
    else:
        torch.save({'state_dict': {}, 'x': _Payload(tmp_path / 'ran')}, ckpt)
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(images), '--model', model, '--num-classes', '10', '-b', '4', '--epochs', '1',
              '--resume', str(ckpt), '--output', str(tmp_path / 'out')])
    assert e.value.code == 2
    line = _one_line_error(capsys, 'timm-stim-train')
    expected = {'truncated': 'is truncated or not a PyTorch checkpoint',
                'other_model': f'is a checkpoint of {MODEL}, which does not fit --model cifar_resnet32',
                'pickle': 'refused to load it'}[case]
    assert expected in line and str(ckpt) in line and not (tmp_path / 'ran').exists()


class _Payload:
    """A pickle that would write a file when loaded (the refused-pickle case)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_validate_with_another_architectures_checkpoint_is_one_line(images, tmp_path, capsys):
    from timm_stim.validate import main
    ckpt = _train_checkpoint(tmp_path / 'last.pth.tar', 'cifar_resnet32')
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(images), '--model', MODEL, '--checkpoint', str(ckpt), '-b', '4'])
    assert e.value.code == 2
    line = _one_line_error(capsys, 'timm-stim-validate')
    assert 'a checkpoint of cifar_resnet32, which does not fit --model cifar_resnet20' in line


def test_robustness_of_an_unsupported_model_is_one_line(images, capsys):
    from timm_stim.validate import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(images), '--model', 'densenet121', '--num-classes', '3', '--robustness', '-b', '4'])
    assert e.value.code == 2
    assert 'DenseNet is not a supported residual network' in _one_line_error(capsys, 'timm-stim-validate')


def test_export_into_a_read_only_folder_is_one_line(wdir, tmp_path, capsys):
    from timm_stim.hub import export_cli
    target = tmp_path / 'ro'
    if os.geteuid() == 0:  # root writes through a 0555 folder; a pseudo file system still refuses
        target = Path('/sys/timm_stim_export_test')
        if not Path('/sys').is_dir():
            pytest.skip('no /sys')
    else:
        target.mkdir(mode=0o555)
    with pytest.raises(SystemExit) as e:
        export_cli([NAME, str(target), '--weights-dir', str(wdir)])
    assert e.value.code == 2 and f'cannot write into {target}' in _one_line_error(capsys, 'timm-stim-export')


# -------------------------------------------------------------------------------- 7 silent wrong data
def test_an_empty_class_folder_is_refused_and_one_class_warned(images, tmp_path, capsys, caplog):
    from timm_stim.loaders import check_class_folders
    from timm_stim.train import main
    for f in (images / 'train' / 'a').iterdir():
        f.unlink()  # 'a' is empty in train/ only: b, c would be classes 0, 1 in train and 1, 2 in val
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', str(images), '--model', MODEL, '-b', '4', '--epochs', '1', '--output', str(tmp_path)])
    assert e.value.code == 2
    assert "class folder a under" in _one_line_error(capsys, 'timm-stim-train')
    one = tmp_path / 'one' / 'train' / 'cat'
    one.mkdir(parents=True)
    (images / 'train' / 'b' / '0.png').rename(one / '0.png')
    check_class_folders(str(tmp_path / 'one'), 'train')
    assert 'holds one class folder (cat)' in caplog.text


def test_a_non_finite_stim_weight_is_refused_at_parse_time(capsys):
    from timm_stim.train import _parse_args
    for value in ('inf', 'nan'):
        with pytest.raises(SystemExit) as e:
            _parse_args(['--data-dir', '/nonexistent', '--stim-weight', value])
        assert e.value.code == 2 and '--stim-weight' in capsys.readouterr().err


# ------------------------------------------------------------------------------- 8 push without network
def test_push_without_network_names_dns(wdir, monkeypatch):
    import huggingface_hub.constants
    from timm_stim.hub import PushError, push
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', 'http://timm-stim-test.invalid')
    before = (wdir / 'manifest.json').read_bytes()
    with pytest.raises(PushError) as e:  # the real Hub client against a host that does not resolve
        push(NAME, repo_id='org/c20', token='tok', directory=wdir)
    assert 'cannot resolve timm-stim-test.invalid' in str(e.value) and 'rejected' not in str(e.value)
    assert '\n' not in str(e.value) and (wdir / 'manifest.json').read_bytes() == before


def test_a_dns_failure_is_named_without_a_probe(monkeypatch):
    from timm_stim import hub
    monkeypatch.setattr(hub, 'hub_unreachable', lambda: None)  # the network came back meanwhile
    ConnectError = type('ConnectError', (Exception,), {})  # httpx's name, with the socket error as its cause
    try:
        try:
            raise socket.gaierror(-2, 'Name or service not known')
        except socket.gaierror as cause:
            raise ConnectError('[Errno -2] Name or service not known') from cause
    except ConnectError as error:
        assert hub._why(error) == 'no network: DNS lookup failed ([Errno -2] Name or service not known)'


# ---------------------------------------------------------------------------------------- 9 file modes
def test_released_and_exported_files_are_0644(tmp_path, monkeypatch):
    from timm_stim.hub import export
    monkeypatch.setattr(W, 'GIT_PART_MB', 0.4)
    os.umask(0o077)  # a private umask must not make released files private either
    try:
        d = tmp_path / 'weights'
        W.write_weights(_state_dict(), MODEL, TAG, 10, d)
        W.write_weights(_state_dict(), MODEL, 'big', 10, d, out_of_wheel=True)
        files = export(NAME, tmp_path / 'out', d)
    finally:
        os.umask(0o022)
    released = [p for p in d.rglob('*') if p.is_file() and p.name != '.manifest.lock']
    assert len(released) == 6  # the manifest, unit's weights, big's file and its 3 git parts
    for path in released + files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert 'model.safetensors' in {p.name for p in files}


# ------------------------------------------------------------------------------ 10 no checkpoints in git
def test_no_checkpoints_in_git_and_no_stash():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        import cifar10
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    assert not hasattr(cifar10, 'stash')
    with pytest.raises(SystemExit):
        cifar10.main(['stash'])
    tracked = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert not [f for f in tracked if f.startswith('benchmarks/checkpoints/') or f.endswith('.pth.tar')]
    ignored = subprocess.run(['git', 'check-ignore', '-q', 'benchmarks/checkpoints/run/last.pth.tar'], cwd=ROOT)
    assert ignored.returncode == 0
    assert 'git clone --depth 1' in (ROOT / 'README.md').read_text()
