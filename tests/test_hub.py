"""From a training run to a published checkpoint: release, export, Hub loading, push, cards, MODEL_CARD.md.

One short real ST++ run (cifar_resnet20_stim with EMA, 128 training / 64 validation CIFAR-10 images, a few seconds)
is released into a temporary weights directory (`TIMM_STIM_WEIGHTS_DIR`); fresh interpreters then load it as timm
users do (`pretrained=True`, `local-dir:`, `hf-hub:` from a hand-seeded cache with `HF_HUB_OFFLINE=1`). The push
runs against a stand-in Hub client that records its calls; a real push runs only with `HF_TOKEN`.
"""
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import cifar10_path

REPO = Path(__file__).resolve().parents[1]
CIFAR = cifar10_path()  # $TIMM_STIM_CIFAR10, else ../shared/data/cifar10 (conftest)
NAME = 'cifar_resnet20_stim.unit_cifar10'
needs_cifar = pytest.mark.skipif(not (CIFAR / 'train').is_dir(), reason=f'CIFAR-10 not at {CIFAR}')


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''), HF_HUB_OFFLINE='1')
    env.pop('TIMM_STIM_WEIGHTS_DIR', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _python(code: str, **env) -> dict:
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                         env=_env(**env), timeout=300, cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads([l for l in out.stdout.splitlines() if l.startswith('RESULT')][-1][len('RESULT'):])


def _listing(d: Path):
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob('*')) \
        if d.exists() else []


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, stim_cache):
    if not (CIFAR / 'train').is_dir():
        pytest.skip(f'CIFAR-10 not at {CIFAR}')
    from timm_stim.train import main
    out = tmp_path_factory.mktemp('run')
    res = main(['--data-dir', str(CIFAR), '--model', 'cifar_resnet20_stim', '-b', '32', '--warmup-epochs', '0',
                '--lr', '0.05', '--seed', '1', '--train-subset', '128', '--val-subset', '64', '--epochs', '1',
                '--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-min-scale', '0.85', '--stim-bn-recalib', '64',
                '--model-ema', '--model-ema-decay', '0.5', '--no-plot', '--output', str(out), '--experiment', 'run'])
    return Path(res['output_dir'])


RELEASE = ['--tag', 'unit_cifar10', '--bn-recalib', '64', '--robustness', 'random', '--robustness-samples', '3',
           '-b', '64']


@pytest.fixture(scope='module')
def released(run_dir, tmp_path_factory):
    from timm_stim.release import main
    wdir = tmp_path_factory.mktemp('weights')
    entry = main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir)])
    return wdir, entry


@pytest.fixture(scope='module')
def exported(released, run_dir, tmp_path_factory):
    from timm_stim.hub import export
    wdir, _ = released
    out = tmp_path_factory.mktemp('export') / NAME
    export(NAME, out, wdir)
    return out


# ------------------------------------------------------------------------------------------------ release
def test_release_records_measured_numbers(released, run_dir):
    wdir, entry = released
    (item,) = json.loads((wdir / 'manifest.json').read_text())['weights']
    from timm_stim.models.weights import sha256_file
    assert item['file'] == f'{NAME}.safetensors' and item['sha256'] == sha256_file(wdir / item['file'])
    ev = entry.evaluation
    assert ev['precision'] == 'float32' and ev['num_images'] == 64 and ev['split'] == 'validation'
    assert abs(entry.metrics['top1'] - ev['logged_top1']) <= 0.3  # the run's own number, within the tolerance
    assert entry.source.endswith('(state_dict_ema)')  # the run kept an EMA: its logged accuracy is the EMA's
    assert entry.command.startswith('timm-stim-train ') and '--model-ema' in entry.command
    assert entry.train_args['stim_mode'] == 'stpp' and entry.train_args['train_subset'] == 128
    assert yaml.safe_load(open(run_dir / 'args.yaml'))['epochs'] == entry.train_args['epochs']
    assert len(entry.depths) == 4 and entry.depths[-1]['full'] and entry.depths[-1]['flops'] == max(
        r['flops'] for r in entry.depths)
    assert entry.stats['params_m'] > 0.2 and entry.label_names[0] == 'airplane'
    assert entry.input_size == [3, 32, 32] and entry.storage_dtype == 'float32'
    from timm_stim.cards import depth_table
    assert ev['depth_configurations'] == 27  # ResNet-20: 3 x 3 x 3; the card says the sweep was a sample
    assert 'Over a seeded sample of 3 of the 26 sub-networks (the full network left out)' in depth_table(entry)


def test_released_command_leaves_out_how_the_run_was_resumed():
    """A run resumed after a stop records the resuming line; the tag's command is the run's, without --resume."""
    from timm_stim.release import train_command, without_resume
    line = 'timm-stim-train -c r.yaml --model m --resume /runs/m --epochs 30 --no-resume-opt --resume=/x --seed 1'
    assert without_resume(line) == 'timm-stim-train -c r.yaml --model m --epochs 30 --seed 1'
    command, changed = train_command(dict(model='m', epochs=30, resume='/runs/m', no_resume_opt=True))
    assert command == 'timm-stim-train --model m --epochs 30' and 'resume' not in changed


def test_pretrained_gives_reevaluated_top1(released):
    wdir, entry = released
    res = _python(f'''
        import json, timm, timm_stim
        from timm_stim.validate import main
        r = main(['--data-dir', {str(CIFAR)!r}, '--model', {NAME!r}, '--pretrained', '--val-subset', '64', '-b', '64'])
        print('RESULT' + json.dumps(dict(top1=r['results'][0]['top1'], listed=timm.list_pretrained('*_stim*'))))
    ''', TIMM_STIM_WEIGHTS_DIR=wdir)
    assert res['listed'] == [NAME]
    assert round(res['top1'], 3) == entry.metrics['top1']


def _copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns('checkpoint-*', 'model_best*'))
    return dst


@pytest.mark.parametrize('bad, message', [
    (['--model', 'resnet999'], 'unknown model'),
    (['--model', 'cifar_resnet32_stim'], 'does not match cifar_resnet32_stim'),
    (['--weights', 'plain'], 'logged no validation top-1'),  # the run logged its EMA's accuracy only
    (['--missed'], 'misses the logged'),
])
def test_bad_release_writes_nothing(run_dir, tmp_path, capsys, bad, message):
    from timm_stim.release import main
    run = _copy_run(run_dir, tmp_path / 'run')
    if bad == ['--missed']:  # the run logged 5 points more than its weights give
        rows = (run / 'summary.csv').read_text().splitlines()
        head, last = rows[0].split(','), rows[-1].split(',')
        i = head.index('eval_top1')
        last[i] = str(float(last[i]) + 5)
        (run / 'summary.csv').write_text('\n'.join(rows[:-1] + [','.join(last)]) + '\n')
        bad = []
    wdir = tmp_path / 'weights'
    wdir.mkdir()
    (wdir / 'manifest.json').write_text('{"weights": []}\n')
    before = _listing(wdir)
    with pytest.raises(SystemExit) as e:
        main([str(run)] + RELEASE + ['--weights-dir', str(wdir)] + bad)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert _listing(wdir) == before


def test_release_takes_a_checked_sweep_of_the_same_checkpoint(run_dir, released, tmp_path, capsys):
    """--robustness-from reuses `timm-stim-validate --results-file` (what benchmarks/cifar10.py collect measures)
    instead of sweeping again, only when it measured these very weights the way release would."""
    from timm_stim.release import main
    from timm_stim.validate import main as validate
    _, measured = released
    sweep = ['--data-dir', str(CIFAR), '--model', 'cifar_resnet20_stim', '--checkpoint', str(run_dir / 'last.pth.tar'),
             '--val-subset', '64', '--bn-recalib', '64', '--robustness', 'random', '--robustness-samples', '2', '-b', '64']
    validate(sweep + ['--use-ema', '--results-file', str(tmp_path / 'ema.json')])
    validate(sweep + ['--results-file', str(tmp_path / 'plain.json')])
    entry = main([str(run_dir)] + RELEASE + ['--weights-dir', str(tmp_path / 'w'), '--robustness-from',
                                             str(tmp_path / 'ema.json')])
    rows = json.loads((tmp_path / 'ema.json').read_text())['results']
    assert [r['top1'] for r in entry.depths] == [r['top1'] for r in rows] and len(rows) == 3
    assert entry.evaluation['robustness_from'] == str(tmp_path / 'ema.json')
    assert entry.metrics == measured.metrics  # the full network is still re-measured here
    (tmp_path / 'v').mkdir()
    with pytest.raises(SystemExit):  # the run logged its EMA: a sweep of the plain weights is not its sweep
        main([str(run_dir)] + RELEASE + ['--weights-dir', str(tmp_path / 'v'), '--robustness-from',
                                         str(tmp_path / 'plain.json')])
    assert 'use_ema differ' in capsys.readouterr().err and not any((tmp_path / 'v').iterdir())


def test_a_baseline_is_never_the_default_tag_of_a_stim_name(run_dir, tmp_path, capsys):
    from timm_stim.release import main
    run = _copy_run(run_dir, tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, stim_mode='off')))
    wdir = tmp_path / 'weights'
    wdir.mkdir()
    for extra in ([], ['--default']):
        with pytest.raises(SystemExit):
            main([str(run)] + RELEASE + ['--weights-dir', str(wdir)] + extra)
        assert 'release an ST++ run of cifar_resnet20_stim first' in capsys.readouterr().err
    assert not any(wdir.iterdir())


def test_release_over_the_wheel_budget_is_refused_before_evaluating_or_goes_out_of_wheel(run_dir, tmp_path,
                                                                                         capsys, monkeypatch):
    from timm_stim.models import weights as W
    from timm_stim.release import main
    monkeypatch.setattr(W, 'WHEEL_BUDGET_MB', 0.5)  # the 1.1 MB ResNet-20 no longer fits the wheel
    monkeypatch.setattr(W, 'GIT_PART_MB', 0.4)
    wdir = tmp_path / 'weights'
    wdir.mkdir()
    with pytest.raises(SystemExit):
        main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir), '--data-dir', str(tmp_path / 'no-data')])
    assert 'over the 0.5 MB budget' in capsys.readouterr().err and not any(wdir.iterdir())  # before reading data
    entry = main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir), '--out-of-wheel', '--robustness', 'none'])
    assert entry.file == 'hub/cifar_resnet20_stim.unit_cifar10.safetensors'
    assert len(W.part_files(wdir / entry.file)) == 3 and W.read_manifest(wdir) == [entry]


def test_release_too_large_to_publish_goes_float16_or_is_refused_before_evaluating(run_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    """A stored file over RELEASE_MAX_MB cannot land in one push: float32 is refused before any data is read, auto
    stores float16 (the 1.1 MB float32 ResNet-20 is 0.55 MB in float16), and a file too large even in float16 is
    refused; nothing is written when refused."""
    from timm_stim.models import weights as W
    from timm_stim.release import main
    monkeypatch.setattr(W, 'RELEASE_MAX_MB', 0.8)
    wdir = tmp_path / 'weights'
    wdir.mkdir()
    no_data = ['--data-dir', str(tmp_path / 'no-data')]
    with pytest.raises(SystemExit):
        main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir), '--storage', 'float32'] + no_data)
    assert 'over the 0.8 MB that one release may add' in capsys.readouterr().err and not any(wdir.iterdir())
    entry = main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir), '--robustness', 'none'])
    assert entry.storage_dtype == 'float16' and entry.size < 0.8 * 2 ** 20
    monkeypatch.setattr(W, 'RELEASE_MAX_MB', 0.3)
    with pytest.raises(ValueError, match='over the 0.3 MB'):  # the library writer holds the same limit
        W.write_weights(W.load_checkpoint_state_dict(run_dir / 'last.pth.tar'), 'cifar_resnet20_stim', 'x', 10, wdir)
    with pytest.raises(SystemExit):
        main([str(run_dir)] + RELEASE + ['--weights-dir', str(wdir), '--tag', 'other'] + no_data)
    assert 'over the 0.3 MB' in capsys.readouterr().err and W.read_manifest(wdir) == [entry]


@pytest.mark.parametrize('half_top1, mode, stored, top1', [
    (80.0, 'auto', 'float16', 80.0),      # the same top-1: float16, whatever the size
    (79.95, 'auto', 'float16', 79.95),    # too large for float32, within 0.1 pt: float16, with its own top-1
    (79.5, 'auto', None, None),           # too large for float32 and float16 loses 0.5 pt: refused
    (79.95, 'float16', 'float16', 79.95),
])
def test_choose_storage_above_the_release_limit(monkeypatch, half_top1, mode, stored, top1):
    import torch
    from timm_stim import release as R
    from timm_stim.models import weights as W
    monkeypatch.setattr(W, 'RELEASE_MAX_MB', 1e-4)  # a 2x64 linear layer (512 B in float32) is 'too large'
    model = torch.nn.Linear(64, 2)
    sd = model.state_dict()
    monkeypatch.setattr(R, '_top1', lambda *a, **k: dict(top1=half_top1, top5=100.0))
    monkeypatch.setattr(R, 'WHEEL_MAX_MB', 0)
    full = dict(top1=80.0, top5=100.0)
    if stored is None:
        with pytest.raises(R.ReleaseError, match='not the same and float32 is over'):
            R.choose_storage(model, sd, mode, full, [], torch.device('cpu'))
        return
    weights, measured = R.choose_storage(model, sd, mode, full, [], torch.device('cpu'))
    assert {v.dtype for v in weights.values()} == {torch.float16} and measured['top1'] == top1
    assert torch.equal(model.weight, sd['weight'])  # the model is given its float32 weights back


def test_add_weights_takes_train_checkpoint(run_dir, tmp_path):
    from timm_stim.models import weights as W
    entry = W.add_weights(run_dir / 'last.pth.tar', 'cifar_resnet20_stim', 'ema', 10, tmp_path, use_ema=True)
    plain = W.add_weights(run_dir / 'last.pth.tar', 'cifar_resnet20', 'plain', 10, tmp_path)  # a base CIFAR tag
    assert entry.source.endswith('(state_dict_ema)') and plain.file == 'cifar_resnet20.plain.safetensors'
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match='unknown model'):
        W.add_weights(run_dir / 'last.pth.tar', 'resnet20_stim_typo', 'x', 10, tmp_path)
    with pytest.raises(ValueError, match='does not match'):
        W.add_weights(run_dir / 'last.pth.tar', 'cifar_wrn16_4_stim', 'x', 10, tmp_path)
    with pytest.raises(ValueError, match='does not match'):
        W.add_weights(run_dir / 'last.pth.tar', 'cifar_resnet20_stim', 'x', 100, tmp_path)
    assert _listing(tmp_path) == before


# -------------------------------------------------------------------------------------------- export / load
LOAD = '''
    import json, os, timm, torch, timm_stim
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    out = {}
    ref = timm.create_model(NAME, pretrained=True).eval()
    for key, name in SOURCES.items():
        m = timm.create_model(name, pretrained=True).eval()  # as timm loads Hub models
        with torch.no_grad():
            out[key] = torch.equal(m(x), ref(x))
    out['labels'] = list(timm.create_model('local-dir:' + EXPORT, pretrained=True).pretrained_cfg['label_names'])[:2]
    print('RESULT' + json.dumps(out))
'''


def _seed_hf_cache(cache: Path, repo_id: str, folder: Path, revision: str) -> None:
    """A Hub download as huggingface_hub stores it (refs/main -> snapshots/<rev>/...), written by hand."""
    root = cache / ('models--' + repo_id.replace('/', '--'))
    shutil.copytree(folder, root / 'snapshots' / revision)
    (root / 'refs').mkdir(parents=True)
    (root / 'refs' / 'main').write_text(revision)


def test_export_loads_with_local_dir_and_hf_hub_offline(released, exported, tmp_path):
    wdir, entry = released
    names = sorted(p.name for p in exported.iterdir())
    assert names == ['README.md', 'args.yaml', 'config.json', 'depth_robustness.png', 'model.safetensors',
                     'robustness.json', 'summary.csv']
    from timm_stim.models.weights import sha256_file
    assert sha256_file(exported / 'model.safetensors') == entry.sha256  # the released bytes
    cfg = json.loads((exported / 'config.json').read_text())
    assert cfg['architecture'] == 'cifar_resnet20_stim' and cfg['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert 'timm-stim-train' in cfg['pretrained_cfg']['description'] and cfg['label_names'][0] == 'airplane'
    _seed_hf_cache(tmp_path / 'hf', 'someone/cifar_resnet20_stim-test', exported, 'a' * 40)
    code = (LOAD.replace('NAME', repr(NAME)).replace('EXPORT', repr(str(exported)))
            .replace('SOURCES', repr({'local-dir': f'local-dir:{exported}',
                                      'hf-hub': 'hf-hub:someone/cifar_resnet20_stim-test'})))
    res = _python(code, TIMM_STIM_WEIGHTS_DIR=wdir, HF_HUB_CACHE=tmp_path / 'hf')
    assert res == {'local-dir': True, 'hf-hub': True, 'labels': ['airplane', 'automobile']}


# ------------------------------------------------------------------------------------------------- push
class StandInHub:
    """Records the calls a push makes (and the files of the folder at upload time)."""

    def __init__(self, fail=None, exists=False):
        self.calls, self.fail, self.exists = [], fail, exists

    def repo_exists(self, repo_id, token=None):
        self.calls.append(('repo_exists', repo_id))
        return self.exists

    def create_repo(self, repo_id, token=None, private=False, exist_ok=False):
        self.calls.append(('create_repo', repo_id, private))

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None, token=None):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(('upload_folder', repo_id, files, commit_message, revision, token))
        if self.fail:
            raise self.fail
        return type('CommitInfo', (), {'oid': 'c' * 40})()

    def delete_repo(self, repo_id, token=None):
        self.calls.append(('delete_repo', repo_id))


def _weights_copy(released, tmp_path) -> Path:
    wdir = tmp_path / 'weights'
    shutil.copytree(released[0], wdir)
    return wdir


def test_push_one_commit_then_pinned_hub_copy_loads_offline(released, run_dir, tmp_path):
    from timm_stim.hub import push
    wdir, hub = _weights_copy(released, tmp_path), StandInHub()
    res = push(NAME, repo_id='org/c20', private=True, token='tok', directory=wdir, run_dir=run_dir, api=hub)
    uploads = [c for c in hub.calls if c[0] == 'upload_folder']
    assert len(uploads) == 1 and [c[0] for c in hub.calls] == ['repo_exists', 'create_repo', 'upload_folder']
    assert uploads[0][2] == ['README.md', 'args.yaml', 'config.json', 'depth_robustness.png', 'model.safetensors',
                             'robustness.json', 'summary.csv'] and uploads[0][5] == 'tok'
    assert hub.calls[1] == ('create_repo', 'org/c20', True)
    (item,) = json.loads((wdir / 'manifest.json').read_text())['weights']
    assert item['hf_hub_id'] == res['hf_hub_id'] == 'org/c20@' + 'c' * 40
    # a fresh clone without the file: the pinned revision is served from the HF cache, sha256 checked
    (wdir / item['file']).unlink()
    folder = tmp_path / 'snapshot'
    folder.mkdir()
    shutil.copyfile(released[0] / item['file'], folder / 'model.safetensors')
    _seed_hf_cache(tmp_path / 'hf', 'org/c20', folder, 'c' * 40)
    res = _python(f'''
        import json, timm, timm_stim
        m = timm.create_model({NAME!r}, pretrained=True)
        print('RESULT' + json.dumps(dict(hub_id=m.pretrained_cfg['hf_hub_id'], file=m.pretrained_cfg.get('file'))))
    ''', TIMM_STIM_WEIGHTS_DIR=wdir, HF_HUB_CACHE=tmp_path / 'hf')
    assert res['hub_id'] == 'org/c20@' + 'c' * 40 and ('c' * 40) in res['file']


@pytest.mark.parametrize('error, why', [(ConnectionError('Failed to resolve huggingface.co'), 'no network'),
                                        (RuntimeError('403 Forbidden'), 'rejected')])
def test_failed_push_publishes_and_changes_nothing(released, tmp_path, error, why):
    from timm_stim.hub import PushError, push
    wdir, hub = _weights_copy(released, tmp_path), StandInHub(fail=error)
    before = (wdir / 'manifest.json').read_bytes()
    with pytest.raises(PushError, match=why):
        push(NAME, repo_id='org/c20', token='tok', directory=wdir, api=hub)
    assert (wdir / 'manifest.json').read_bytes() == before
    assert hub.calls[-1] == ('delete_repo', 'org/c20')  # the repository this push created is gone again


def test_push_without_token_and_dry_run(released, tmp_path, monkeypatch, capsys):
    from timm_stim.hub import push_cli
    wdir = _weights_copy(released, tmp_path)
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'no_login'))  # no stored login token
    monkeypatch.setattr('huggingface_hub.get_token', lambda: None)
    before = (wdir / 'manifest.json').read_bytes()
    with pytest.raises(SystemExit) as e:
        push_cli([NAME, '--weights-dir', str(wdir)])
    assert e.value.code == 1 and 'no Hugging Face token' in capsys.readouterr().err
    push_cli([NAME, '--weights-dir', str(wdir), '--dry-run'])
    out = capsys.readouterr().out
    assert f'would upload timm-stim/{NAME}/model.safetensors' in out and 'README.md' in out
    assert (wdir / 'manifest.json').read_bytes() == before


@pytest.mark.skipif(not os.environ.get('HF_TOKEN'), reason='real Hub push needs HF_TOKEN (and network)')
def test_real_push(released, tmp_path):
    from huggingface_hub import HfApi
    from timm_stim.hub import push
    api = HfApi(token=os.environ['HF_TOKEN'])
    repo_id = f'{api.whoami()["name"]}/timm-stim-test-{uuid.uuid4().hex[:8]}'
    wdir = _weights_copy(released, tmp_path)
    try:
        res = push(NAME, repo_id=repo_id, private=True, directory=wdir)
        assert 'model.safetensors' in api.list_repo_files(repo_id, revision=res['commit'])
    finally:
        api.delete_repo(repo_id, missing_ok=True)


# ------------------------------------------------------------------------------------------------- cards
def _front_matter(text: str) -> dict:
    assert text.startswith('---\n')
    return yaml.safe_load(text.split('---\n')[1])


def test_card_front_matter_and_numbers_equal_results_json(released, exported, tmp_path):
    from huggingface_hub import ModelCard
    from timm_stim.cards import comparison_record, load_results, model_card
    _, entry = released
    runs = [dict(model='cifar_resnet20', dataset='cifar10', arm=arm, seed=s, epochs=1, top1=v)
            for arm, vals in (('off', [90.1, 90.5, 89.9]), ('stpp', [90.7, 91.2, 90.4])) for s, v in enumerate(vals)]
    runs.append(dict(model='cifar_resnet56', dataset='cifar10', arm='off', seed=0, epochs=1, top1=50.0))  # other arch
    (tmp_path / 'cifar10.json').write_text(json.dumps({'runs': runs}))

    def card(runs):  # the card of the entry as a release with these results would record it
        record = comparison_record(entry.model, entry.dataset, entry.train_args.get('epochs'), runs, tmp_path)
        return model_card(dataclasses.replace(entry, comparison=json.loads(json.dumps(record))))
    text = card(load_results(tmp_path))
    meta = _front_matter(text)
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0' and meta['datasets'] == ['cifar10']
    assert {'timm', 'image-classification'} <= set(meta['tags'])
    (result,) = meta['model-index'][0]['results']
    assert {m['name']: m['value'] for m in result['metrics']} == {'top-1 accuracy': entry.metrics['top1'],
                                                                  'top-5 accuracy': entry.metrics['top5']}
    assert ModelCard(text).data.eval_results[0].metric_value == entry.metrics['top1']  # the Hub's own parser
    for arm, vals in (('off', [90.1, 90.5, 89.9]), ('stpp', [90.7, 91.2, 90.4])):
        assert f'| {statistics.fmean(vals):.2f} | {statistics.stdev(vals):.2f} | {min(vals):.2f}-{max(vals):.2f} | 3 |' \
            in text
    assert f'stpp minus baseline: {statistics.fmean([90.7, 91.2, 90.4]) - statistics.fmean([90.1, 90.5, 89.9]):+.2f}' \
        in text and '50.00' not in text
    for r in entry.depths:
        assert f'| {r["top1"]:.2f} | {r["top5"]:.2f} | {r["flops"] / 1e6:.1f} |' in text
    blocks = text.split('```python\n')[1:]
    assert len(blocks) == 4 and all(b.startswith('import timm_stim\n') for b in blocks)
    assert 'CIFAR-10 images at 32x32' in text and 'not ImageNet' in text and '@inproceedings{ye2022' in text
    assert '![top-1 against FLOPs' in text and entry.command in text
    assert '--data-dir' in entry.command  # the training machine's path, and how to rerun it elsewhere:
    assert '`--dataset torch/cifar10 --dataset-download --data-dir DIR`' in text
    assert (exported / 'README.md').read_text().startswith('---\n')  # the exported card is the same generator's
    assert 'claims no gain' in card([])
    st_only = card([dict(r, results_file='cifar10.json') for r in runs if r['arm'] == 'stpp'])  # no baseline
    assert '| stpp | 90.77 |' in st_only and 'minus baseline' not in st_only
    assert 'No baseline of this architecture was trained with this schedule' in st_only


def test_a_card_exported_from_a_wheel_equals_one_from_a_clone(run_dir, tmp_path, monkeypatch):
    """The Hub card is built from the manifest entry alone: the release records what it needs from
    benchmarks/results/ (`comparison`), so an installed wheel, which has no benchmarks/ beside the package, exports
    the card a clone exports, ST++-versus-baseline numbers included."""
    import timm_stim.cards as cards
    from timm_stim.hub import export
    from timm_stim.release import main
    run = _copy_run(run_dir, tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, epochs=30)))  # a schedule the results JSON has runs of
    wdir = tmp_path / 'weights'
    entry = main([str(run), '--tag', 'card_cifar10', '--robustness', 'none', '-b', '64', '--weights-dir', str(wdir)])
    assert entry.comparison['arms'] and entry.comparison['files']  # recorded at release
    clone = export(entry.name, tmp_path / 'clone', wdir)
    monkeypatch.setattr(cards, 'ROOT', tmp_path / 'site-packages')  # as installed: no benchmarks/results/ to read
    assert cards.load_results() == []
    wheel = export(entry.name, tmp_path / 'wheel', wdir)
    card = (tmp_path / 'clone' / 'README.md').read_text()
    assert (tmp_path / 'wheel' / 'README.md').read_text() == card and [p.name for p in clone] == [p.name for p in wheel]
    assert 'minus baseline' in card and 'Source: `benchmarks/results/' in card and 'claims no gain' not in card


def test_wheel_budget_and_where_large_files_live():
    """Weights in the wheel fit it; a file above the per-file limit lives in weights/hub/, out of the wheel, in git
    as parts of at most GIT_PART_MB (under GitHub's 100 MB) that join into exactly the released file; no file is
    larger than one release may add (RELEASE_MAX_MB)."""
    from timm_stim.models.weights import (GIT_PART_MB, RELEASE_MAX_MB, WHEEL_BUDGET_MB, WHEEL_MAX_MB, part_files,
                                          read_manifest)
    entries = read_manifest(REPO / 'weights')
    assert RELEASE_MAX_MB <= 128 and all(e.size <= RELEASE_MAX_MB * 2 ** 20 for e in entries)
    shipped = [e for e in entries if not e.file.startswith('hub/')]
    assert all(e.size <= WHEEL_MAX_MB * 2 ** 20 for e in shipped)
    assert WHEEL_BUDGET_MB <= 80 and sum(e.size for e in shipped) <= WHEEL_BUDGET_MB * 2 ** 20  # room for the code
    for e in entries:
        if e.file.startswith('hub/'):
            parts = part_files(REPO / 'weights' / e.file)
            assert parts and sum(p.stat().st_size for p in parts) == e.size, f'{e.name}: its parts are not committed'
            assert all(p.stat().st_size <= GIT_PART_MB * 2 ** 20 for p in parts)
    assert 'hub/*.safetensors' in (REPO / 'weights' / '.gitignore').read_text().split()


def test_release_and_card_record_a_run_that_changed_precision(tmp_path):
    """A run resumed on a CPU without bfloat16 goes on in float32: the tag keeps each launch's precision
    (`precision.txt`) and its card says so, since the recorded command shows only the last launch's flags."""
    from timm_stim.cards import _training
    from timm_stim.models.weights import WeightsEntry
    from timm_stim.summary import precision_launches
    assert precision_launches(tmp_path) == [] and precision_launches(None) == []
    lines = ['2026-11-29 10:00:00 epoch 0: bfloat16 on Intel Xeon (AVX512)',
             '2026-11-30 12:39:26 epoch 20: float32 on AMD EPYC (AVX2)']
    (tmp_path / 'precision.txt').write_text('\n'.join(lines) + '\n')
    assert precision_launches(tmp_path) == lines
    entry = WeightsEntry(model='m', tag='t', file='m.t.safetensors', sha256='0' * 64, num_classes=10,
                         command='timm-stim-train --no-amp',
                         train_args=dict(stim_mode='stpp', precision_launches=lines))
    text = _training(entry)
    assert 'Precision of each launch' in text and all(f'`{x}`' in text for x in lines)
    assert 'Precision of each launch' not in _training(WeightsEntry(model='m', tag='t', file='f', sha256='0' * 64,
                                                                    num_classes=10))


def test_card_shows_sub_networks_against_the_same_networks_trained_alone(tmp_path):
    """A card of an architecture in trained_alone.json (issue 27) lists, at its epochs, each ST++ sub-network next to
    the same network trained alone, losses included; other architectures and schedules are left out."""
    from timm_stim.cards import comparison_record, comparison_text
    runs = [dict(model='cifar_resnet20', dataset='cifar10', arm=arm, seed=0, epochs=30, top1=v, results_file='c.json')
            for arm, v in (('baseline', 87.0), ('stpp_scale075', 86.5))]
    pair = dict(st_model='cifar_resnet20_stim', st_arm='stpp_scale075', trained_alone='cifar_resnet8',
                subnetwork=dict(mean=78.08, sd=0.18, n=3), alone=dict(mean=81.79, sd=0.45, n=3), minus=-3.72)
    pairs = [dict(pair, depths=[1, 1, 1], epochs=30), dict(pair, depths=[2, 2, 2], epochs=100, minus=-0.4),
             dict(pair, st_model='cifar_resnet56_stim', trained_alone='cifar_resnet20', depths=[3, 3, 3], epochs=30,
                  subnetwork=dict(mean=85.14, sd=None, n=1), minus=-1.93)]
    (tmp_path / 'trained_alone.json').write_text(json.dumps(dict(pairs=pairs, note='how both sides were measured')))
    record = json.loads(json.dumps(comparison_record('cifar_resnet20_stim', 'cifar10', 30, runs, tmp_path)))
    text = ' '.join(comparison_text(record).split())
    assert ('`cifar_resnet20_stim` (stpp_scale075, 30 epochs) at (1,1,1): 78.08 ± 0.18 (n=3) against `cifar_resnet8` '
            'trained alone 81.79 ± 0.45 (n=3): -3.72 pt') in text
    assert 'at (3,3,3): 85.14 (n=1) against `cifar_resnet20` trained alone' in text  # ResNet-20 as the one alone
    assert 'trained alone (how both sides were measured; a negative difference is a loss)' in text  # the file's note
    assert '-0.40' not in text and 'trained_alone.json' in text  # the 100-epoch pair is not this card's schedule
    other = comparison_record('mobilenetv3_large_100_stim', 'cifar10', 30, runs, tmp_path)
    assert other['trained_alone'] == [] and 'trained alone' not in comparison_text(other)
    assert comparison_record('cifar_resnet20_stim', 'fashion_mnist', 30, runs, tmp_path)['trained_alone'] == []
    (tmp_path / 'trained_alone.json').unlink()  # not measured: no claim
    assert 'trained alone' not in comparison_text(comparison_record('cifar_resnet20', 'cifar10', 30, runs, tmp_path))


def test_card_depth_table_says_how_it_was_measured_and_whether_held_out_numbers_are_clean():
    """A tag re-released with per-depth statistics: its table is measured exactly as a user runs it (shipped
    statistics, no data) and says so, with the held-out top-1 and, for a tag trained on all train images, that the
    held-out numbers are not clean; a tag without them says its numbers need re-estimated statistics. The sub-network
    min / mean leave the full network out, and the card's usage follows what the tag ships."""
    from timm_stim.cards import ST_PP_SUMMARY, depth_table, model_card, sub_mean
    from timm_stim.models.weights import WeightsEntry
    rows = [dict(depths=[1, 1, 1], full=False, top1=80.15, flops=25e6, params=1, flops_share=0.3063,
                 heldout_top1=81.2, bn='shipped'),
            dict(depths=[2, 2, 2], full=False, top1=87.0, flops=53e6, params=1, flops_share=0.653, heldout_top1=88.0,
                 bn='shipped'),
            dict(depths=[3, 3, 3], full=True, top1=88.22, flops=81e6, params=1, flops_share=1.0, heldout_top1=92.0,
                 bn='own')]
    stats = dict(file='m.t.depths.safetensors', bn_images=2000, heldout=dict(size=5000, of=50000))
    entry = WeightsEntry(model='cifar_resnet20_stim', tag='t', file='f', sha256='0' * 64, num_classes=10,
                         dataset='cifar10', depths=rows, depth_stats=stats, evaluation=dict(depth_configurations=27))
    text = ' '.join(depth_table(entry).split())
    assert '| 1,1,1 | 80.15 | 25.0 | 31% | 81.20 |' in text and 'top-5' not in text
    assert ("Measured exactly as a user runs the tag: `timm.create_model('cifar_resnet20_stim.t', "
            "pretrained=True)`") in text
    assert '`m.t.depths.safetensors`' in text and 'no data and no re-estimation' in text
    assert 'This tag was trained on all 50,000 train images, the held-out ones included, so its held-out numbers ' \
           'are not clean' in text
    assert sub_mean(rows) == (80.15 + 87.0) / 2
    assert (f'Over the shipped sub-networks (the full network left out) top-1 is 80.15 min, {sub_mean(rows):.2f} '
            f'mean') in text
    clean = dataclasses.replace(entry, train_args=dict(holdout=5000))
    assert 'not clean' not in depth_table(clean)
    card = model_card(entry)
    assert 'timm_stim.set_depth(model, budget=0.5)' in card
    assert 'recalibrate_bn(model, loader, depths=depths)' not in card
    old = dataclasses.replace(entry, depth_stats={}, evaluation=dict(bn_recalib=2000),
                              depths=[{k: v for k, v in r.items() if k not in ('bn', 'heldout_top1')} for r in rows])
    text = ' '.join(depth_table(old).split())
    assert 'BatchNorm statistics re-estimated on 2000 training images for each configuration' in text
    assert 'ships no per-depth statistics' in text and 'held-out' not in text
    assert 'recalibrate_bn(model, loader, depths=depths)' in model_card(old)
    assert 'A·LN(z)' in ST_PP_SUMMARY and 'is not trained as usual' in ST_PP_SUMMARY
