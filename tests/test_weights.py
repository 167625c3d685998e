"""Weights manifest, sha256 check, local-file-then-Hub resolution and offline `pretrained=True`.

The tests make a tiny checkpoint (a seeded `cifar_resnet20_stim`) and a manifest in a temporary weights
directory (`TIMM_STIM_WEIGHTS_DIR`), then import timm_stim in a fresh interpreter so that the manifest entry
becomes a registered pretrained tag, exactly as a committed file + manifest entry would.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import PretrainedCfg

from timm_stim.models import weights as W
from timm_stim.models.weights import WeightsEntry

ROOT = Path(__file__).resolve().parents[1]
MODEL, TAG = 'cifar_resnet20_stim', 'unit_cifar10'


def _checkpoint(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    sd = {k: v.contiguous() for k, v in timm.create_model('cifar_resnet20').state_dict().items()}
    save_file(sd, str(path))
    return sd


@pytest.fixture()
def wdir(tmp_path):
    """A weights directory with one tiny checkpoint listed in its manifest."""
    d = tmp_path / 'weights'
    src = tmp_path / 'trained.safetensors'
    _checkpoint(src)
    W.add_weights(src, MODEL, TAG, num_classes=10, directory=d, dataset='cifar10', recipe='tests/test_weights.py',
                  command='pytest tests/test_weights.py', metrics={'top1': 10.0})
    return d


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, HF_HUB_OFFLINE='1', **env)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_committed_manifest_is_valid_and_matches_registry():
    entries = W.read_manifest(ROOT / 'weights')
    for e in entries:  # every committed file is present and intact; a clone holds weights/hub/ files as parts
        local = ROOT / 'weights' / e.file
        assert local.is_file() or W.part_files(local), f'{e.name}: neither {local} nor its parts are committed'
        assert W.sha256_file(W.resolve_file(e, ROOT / 'weights')) == e.sha256  # joined from parts where needed
    if W.weights_dir().resolve() == (ROOT / 'weights').resolve():
        names = {e.name for e in entries}  # _stim tags, and baseline tags of the CIFAR base names
        assert set(timm.list_pretrained('*_stim*')) == {n for n in names if '_stim' in n}
        assert names <= set(timm.list_pretrained())
    # untagged names carry no weights, so they are not listed as pretrained
    assert not [n for n in timm.list_pretrained('*_stim*') if '.' not in n]


def test_add_weights_writes_manifest(wdir):
    data = json.loads((wdir / 'manifest.json').read_text())
    (item,) = data['weights']
    assert item['model'] == MODEL and item['tag'] == TAG and item['file'] == f'{MODEL}.{TAG}.safetensors'
    assert item['sha256'] == W.sha256_file(wdir / item['file']) and item['size'] == (wdir / item['file']).stat().st_size
    (entry,) = W.read_manifest(wdir)
    assert entry.hub_id == f'timm-stim/{MODEL}.{TAG}'
    assert 'pytest tests/test_weights.py' in entry.describe() and 'top1 10.0' in entry.describe()
    cfgs = W.pretrained_tag_cfgs({MODEL: dict(num_classes=1000, input_size=(3, 32, 32))}, wdir)
    assert cfgs[entry.name]['num_classes'] == 10 and cfgs[entry.name]['hf_hub_id'] == entry.hub_id


def test_tag_order_sets_the_default_and_rereleases_keep_their_place(wdir, tmp_path):
    """A new tag goes after the model's others (the first stays the default), re-releasing a tag keeps its place,
    and `default=True` (timm-stim-release --default) makes a tag the model's first, hence timm's default."""
    src = tmp_path / 'trained.safetensors'
    for tag in ('second', 'third'):
        W.add_weights(src, MODEL, tag, num_classes=10, directory=wdir)
    W.add_weights(src, 'cifar_resnet20', 'base', num_classes=10, directory=wdir)
    order = lambda: [e.name for e in W.read_manifest(wdir)]  # noqa: E731
    assert order() == [f'{MODEL}.{TAG}', f'{MODEL}.second', f'{MODEL}.third', 'cifar_resnet20.base']
    W.add_weights(src, MODEL, 'second', num_classes=10, directory=wdir, metrics={'top1': 11.0})
    assert order()[1] == f'{MODEL}.second' and W.read_manifest(wdir)[1].metrics == {'top1': 11.0}
    W.add_weights(src, MODEL, 'third', num_classes=10, directory=wdir, default=True)
    assert order() == [f'{MODEL}.third', f'{MODEL}.{TAG}', f'{MODEL}.second', 'cifar_resnet20.base']
    cfgs = W.tagged_default_cfgs({MODEL: dict(num_classes=1000, input_size=(3, 32, 32))}, directory=wdir)
    assert next(iter(k for k in cfgs if k.startswith(MODEL))) == f'{MODEL}.third'


def test_a_tag_trained_at_32_px_states_its_size_pool_and_how_to_fine_tune(wdir, tmp_path):
    """An ImageNet-layout model released from CIFAR-10 (32 px): its tag's cfg says 32x32 and a 1x1 final feature map
    (not the base cfg's 224 / 7x7), 10 classes, and that fine-tuning to other sizes and classes works as in timm."""
    W.add_weights(tmp_path / 'trained.safetensors', MODEL, 'small', num_classes=10, directory=wdir,
                  input_size=[3, 32, 32], dataset='cifar10')
    base = {MODEL: dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7))}
    cfg = W.pretrained_tag_cfgs(base, wdir)[f'{MODEL}.small']
    assert cfg['input_size'] == (3, 32, 32) and cfg['pool_size'] == (1, 1) and cfg['num_classes'] == 10
    assert 'Input 32x32 px, 10 classes; fine-tune to other sizes and class counts' in cfg['description']
    assert W.pretrained_tag_cfgs(base, wdir)[f'{MODEL}.{TAG}']['pool_size'] == (7, 7)  # no size recorded: as base


def test_sha256_mismatch_refused(wdir):
    (entry,) = W.read_manifest(wdir)
    path = wdir / entry.file
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='sha256') as e:
        W.resolve_file(entry, wdir)
    assert str(path) in str(e.value)


def test_truncated_file_refused(wdir):
    (entry,) = W.read_manifest(wdir)
    path = wdir / entry.file
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match='truncated') as e:
        W.resolve_file(entry, wdir)
    assert str(path) in str(e.value)
    # without a recorded size the sha256 check still refuses it
    with pytest.raises(ValueError, match='sha256'):
        W.verify_file(path, WeightsEntry(**{**entry.__dict__, 'size': None}))


def test_large_weights_are_committed_as_parts_that_a_clone_joins(tmp_path, monkeypatch):
    """A file above the wheel limit goes to weights/hub/ (git-ignored) and is written again as byte parts that git
    holds; a clone without the file joins the parts on first use and checks the sha256 of the whole; damaged or
    missing parts are refused with a clear error; pretrained=True then loads offline."""
    monkeypatch.setattr(W, 'WHEEL_MAX_MB', 0.5)  # the 1.1 MB ResNet-20 counts as large
    monkeypatch.setattr(W, 'GIT_PART_MB', 0.4)
    d, src = tmp_path / 'weights', tmp_path / 'trained.safetensors'
    sd = _checkpoint(src)
    entry = W.add_weights(src, MODEL, 'big', num_classes=10, directory=d)
    full = d / entry.file
    assert entry.file == f'hub/{MODEL}.big.safetensors'
    parts = W.part_files(full)
    assert [p.name[len(full.name):] for p in parts] == ['.part1of3', '.part2of3', '.part3of3']
    assert max(p.stat().st_size for p in parts) <= 0.4 * 2 ** 20
    assert b''.join(p.read_bytes() for p in parts) == full.read_bytes()
    ignored = (ROOT / 'weights' / '.gitignore').read_text().split()
    assert 'hub/*.safetensors' in ignored and 'hub/' not in ignored  # git keeps the parts, not the file
    good = [p.read_bytes() for p in parts]
    full.unlink()  # as in a fresh clone
    assert W.resolve_file(entry, d) == full and W.sha256_file(full) == entry.sha256
    raw = bytearray(parts[1].read_bytes())
    raw[10] ^= 0xFF
    parts[1].write_bytes(bytes(raw))
    full.unlink()
    with pytest.raises(ValueError, match='sha256'):
        W.resolve_file(entry, d)
    parts[1].unlink()
    with pytest.raises(ValueError, match='incomplete'):
        W.resolve_file(entry, d)
    for p, data in zip(parts, good):  # the good parts again, and no joined file
        p.write_bytes(data)
    (d / entry.file).unlink(missing_ok=True)
    torch.save(sd['fc.weight'], tmp_path / 'fc.pt')
    out = _run(f"""
        import timm, timm_stim, torch
        m = timm.create_model('{MODEL}.big', pretrained=True)
        print('OK', torch.equal(m.fc.weight, torch.load({str(tmp_path / 'fc.pt')!r})))
        """, dict(TIMM_STIM_WEIGHTS_DIR=str(d)))
    assert out.returncode == 0 and 'OK True' in out.stdout, out.stderr[-2000:]


def test_wheel_budget_refuses_and_out_of_wheel_tags_move_both_ways(tmp_path, monkeypatch):
    """The wheel's weights stay within WHEEL_BUDGET_MB: one more in-wheel file is refused before anything is
    written, naming the way out; `out_of_wheel` stores a small tag under hub/ (with parts); `move_weights` moves a
    stored tag either side with its bytes and sha256 unchanged; a re-release on the other side leaves no stale
    copy."""
    monkeypatch.setattr(W, 'WHEEL_BUDGET_MB', 1.5)  # room for one 1.1 MB ResNet-20 file
    monkeypatch.setattr(W, 'GIT_PART_MB', 0.4)
    d, src = tmp_path / 'weights', tmp_path / 'trained.safetensors'
    _checkpoint(src)
    first = W.add_weights(src, MODEL, 'first', num_classes=10, directory=d)
    before = (d / W.MANIFEST_NAME).read_bytes()
    with pytest.raises(ValueError, match=r'over the 1.5 MB budget.*out_of_wheel=True.*move_weights'):
        W.add_weights(src, MODEL, 'second', num_classes=10, directory=d)
    assert (d / W.MANIFEST_NAME).read_bytes() == before and not (d / f'{MODEL}.second.safetensors').exists()
    second = W.add_weights(src, MODEL, 'second', num_classes=10, directory=d, out_of_wheel=True)
    assert second.file == f'hub/{MODEL}.second.safetensors' and len(W.part_files(d / second.file)) == 3
    replaced = W.add_weights(src, MODEL, 'first', num_classes=10, directory=d)  # replacing it fits the budget
    assert replaced.file == first.file and replaced.sha256 == first.sha256  # same weights, same bytes
    with pytest.raises(ValueError, match='over the 1.5 MB budget'):
        W.move_weights(second.name, out_of_wheel=False, directory=d)
    moved = W.move_weights(first.name, directory=d)
    assert moved.file == f'hub/{MODEL}.first.safetensors' and moved.sha256 == first.sha256
    assert not (d / first.file).exists() and W.find_entry(MODEL, 'first', d).file == moved.file
    (d / second.file).unlink()  # as in a clone: only the parts; moving back joins and checks them
    back = W.move_weights(second.name, out_of_wheel=False, directory=d)
    assert back.file == f'{MODEL}.second.safetensors' and W.sha256_file(d / back.file) == second.sha256
    assert not list((d / 'hub').glob(f'{MODEL}.second.*'))
    assert [e.tag for e in W.read_manifest(d)] == ['first', 'second']  # order (the default tag) unchanged
    again = W.add_weights(src, MODEL, 'second', num_classes=10, directory=d, out_of_wheel=True)
    assert again.file.startswith('hub/') and not (d / back.file).exists()
    with pytest.raises(ValueError, match='no weights'):
        W.move_weights(f'{MODEL}.nope', directory=d)


def test_missing_local_and_hub_offline_is_clear(wdir, monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    (entry,) = W.read_manifest(wdir)
    (wdir / entry.file).unlink()
    with pytest.raises(FileNotFoundError, match='no local file') as e:
        W.resolve_file(entry, wdir, cache_dir=tmp_path / 'empty_cache')
    assert entry.hub_id in str(e.value)


def test_bad_manifests(tmp_path):
    (tmp_path / 'manifest.json').write_text('{"weights": [{"model": "x"}]}')
    with pytest.raises(ValueError, match='lacks'):
        W.read_manifest(tmp_path)
    (tmp_path / 'manifest.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'):
        W.read_manifest(tmp_path)
    bad = dict(model='m', tag='t', file='m.t.safetensors', sha256='xyz', num_classes=1)
    (tmp_path / 'manifest.json').write_text(json.dumps([bad]))
    with pytest.raises(ValueError, match='64 hex'):
        W.read_manifest(tmp_path)
    (tmp_path / 'manifest.json').write_text(json.dumps({'weights': [dict(bad, sha256='0' * 64)]}))
    with pytest.warns(UserWarning, match='unknown model'):
        assert W.pretrained_tag_cfgs({'other': {}}, tmp_path, others=()) == {}
    assert W.read_manifest(tmp_path / 'nowhere') == []


def test_no_weights_refused():
    names = {e.model for e in W.read_manifest()}
    free = [n for n in timm.list_models('*_stim') if n not in names]
    if not free:
        pytest.skip('every *_stim model has weights')
    with pytest.raises(RuntimeError, match='has no pretrained weights'):
        timm.create_model(free[0], pretrained=True)


def test_user_file_overlay_loads_without_manifest(tmp_path):
    """timm's own `pretrained_cfg_overlay=dict(file=...)` path still works for user checkpoints."""
    sd = _checkpoint(tmp_path / 'mine.safetensors', seed=3)
    model = timm.create_model('cifar_resnet20_stim', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'mine.safetensors')))
    assert torch.equal(model.conv1.weight, sd['conv1.weight'])


def test_resolve_pretrained_cfg_points_at_verified_file(wdir):
    cfg = PretrainedCfg(architecture=MODEL, tag=TAG, hf_hub_id=f'timm-stim/{MODEL}.{TAG}')
    assert W.resolve_pretrained_cfg(cfg, wdir).file == str(wdir / f'{MODEL}.{TAG}.safetensors')
    with pytest.raises(RuntimeError, match='has no pretrained weights'):
        W.resolve_pretrained_cfg(PretrainedCfg(architecture=MODEL, tag='other'), wdir)
    hub_only = PretrainedCfg(architecture=MODEL, hf_hub_id='someone/else')  # e.g. hf-hub: ids: timm's business
    assert W.resolve_pretrained_cfg(hub_only, wdir) is hub_only


PRETRAINED_SCRIPT = '''
    import json, os, shutil, sys
    import timm, torch
    import timm_stim
    from safetensors.torch import load_file
    wdir, cache, name = WDIR, CACHE, NAME
    ref = {k: v.clone() for k, v in load_file(os.path.join(wdir, name)).items()}  # not a view of the file
    good = open(os.path.join(wdir, name), 'rb').read()
    snap = os.path.join(cache, 'models--timm-stim--' + name[:-len('.safetensors')], 'snapshots', '0' * 40)

    def load(**kw):
        m = timm.create_model('cifar_resnet20_stim.unit_cifar10', pretrained=True, **kw)
        sd = m.state_dict()
        return m, all(torch.equal(sd[k], ref[k]) for k in sd if not k.startswith('fc.'))

    def error():
        try:
            load()
        except Exception as e:
            return [type(e).__name__, str(e)]

    res = {'listed': timm.list_pretrained('*_stim*')}
    m, res['equal'] = load()
    res['fc_equal'] = torch.equal(m.fc.weight, ref['fc.weight'])
    res['cfg'] = {k: m.pretrained_cfg.get(k) for k in ('hf_hub_id', 'num_classes', 'description', 'paper_ids')}
    d = timm.create_model('cifar_resnet20_stim', pretrained=True)  # the default tag is the one with weights
    res['default_equal'] = all(torch.equal(v, ref[k]) for k, v in d.state_dict().items())
    res['set_depth'] = d.set_depth((1, 2, 3)).stim_depths == (1, 2, 3)
    f, rest = load(num_classes=3)
    res['finetune'] = [list(f.fc.weight.shape), rest]
    feats = timm.create_model('cifar_resnet20_stim.unit_cifar10', pretrained=True, features_only=True)
    res['features'] = torch.equal(feats.state_dict()['conv1.weight'], ref['conv1.weight'])

    raw = bytearray(good)  # a corrupt local file is refused with its name
    raw[len(raw) // 2] ^= 0xFF
    open(os.path.join(wdir, name), 'wb').write(bytes(raw))
    res['corrupt'] = error()

    os.remove(os.path.join(wdir, name))  # no local file, Hub offline and not cached
    res['absent'] = error()

    os.makedirs(snap)  # the Hub copy, from an HF cache seeded by hand (HF_HUB_OFFLINE=1)
    os.makedirs(os.path.join(snap, '..', '..', 'refs'))
    open(os.path.join(snap, '..', '..', 'refs', 'main'), 'w').write('0' * 40)
    open(os.path.join(snap, 'model.safetensors'), 'wb').write(good)
    f, res['hub_equal'] = load(num_classes=3)
    open(os.path.join(snap, 'model.safetensors'), 'wb').write(good[:len(good) // 2])
    res['hub_truncated'] = error()
    print('RESULT' + json.dumps(res))
'''


@pytest.mark.slow
def test_pretrained_offline_local_then_hub(wdir, tmp_path):
    """End to end in a fresh interpreter: manifest entry -> registered tag -> verified local file, then Hub copy."""
    name = f'{MODEL}.{TAG}.safetensors'
    code = (PRETRAINED_SCRIPT.replace('WDIR', repr(str(wdir))).replace('CACHE', repr(str(tmp_path / 'hf')))
            .replace('NAME', repr(name)))
    out = _run(code, dict(TIMM_STIM_WEIGHTS_DIR=str(wdir), HF_HUB_CACHE=str(tmp_path / 'hf')))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads([l for l in out.stdout.splitlines() if l.startswith('RESULT')][-1][len('RESULT'):])

    assert res['listed'] == [f'{MODEL}.{TAG}']  # the tag is listed, the bare name and weightless names are not
    assert res['equal'] and res['fc_equal'] and res['default_equal'] and res['set_depth'] and res['features']
    assert res['cfg']['hf_hub_id'] == f'timm-stim/{MODEL}.{TAG}' and res['cfg']['num_classes'] == 10
    assert res['cfg']['paper_ids'] == 'arXiv:2305.02507' and 'pytest' in res['cfg']['description']
    assert res['finetune'] == [[3, 64], True]  # num_classes=N resets the classifier, keeps the rest
    assert res['corrupt'][0] == 'ValueError' and str(wdir / name) in res['corrupt'][1]
    assert 'sha256' in res['corrupt'][1]
    assert res['absent'][0] == 'FileNotFoundError' and f'timm-stim/{MODEL}.{TAG}' in res['absent'][1]
    assert res['hub_equal']
    assert res['hub_truncated'][0] == 'ValueError' and 'truncated' in res['hub_truncated'][1]
    assert 'model.safetensors' in res['hub_truncated'][1]


@pytest.mark.slow
def test_weights_ship_in_non_editable_install(tmp_path):
    """`pip install .` (non-editable) carries weights/ as timm_stim/_weights and pretrained=True finds it there."""
    pytest.importorskip('setuptools', minversion='77')  # builds wheels without the 'wheel' package
    src = tmp_path / 'src'
    shutil.copytree(ROOT / 'timm_stim', src / 'timm_stim', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('pyproject.toml', 'README.md'):
        shutil.copyfile(ROOT / f, src / f)
    ckpt = tmp_path / 'trained.safetensors'
    sd = _checkpoint(ckpt, seed=5)
    W.add_weights(ckpt, MODEL, TAG, num_classes=10, directory=src / 'weights')
    target = tmp_path / 'site'
    out = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                          '--no-index', '--target', str(target), str(src)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (target / 'timm_stim' / '_weights' / 'manifest.json').is_file()
    code = f'''
        import timm, timm_stim, torch
        from timm_stim.models.weights import weights_dir
        assert str(weights_dir()).startswith({str(target)!r}), weights_dir()
        m = timm.create_model('{MODEL}.{TAG}', pretrained=True)
        print('OK', float(m.conv1.weight.sum()))
    '''
    env = {k: v for k, v in os.environ.items() if k != W.ENV_WEIGHTS_DIR}
    res = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(env, PYTHONPATH=str(target), HF_HUB_OFFLINE='1'), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[0] == 'OK'
    assert abs(float(res.stdout.split()[1]) - float(sd['conv1.weight'].sum())) < 1e-4


def test_broken_manifest_entry_never_breaks_import(tmp_path):
    """Unknown model, malformed entry, bad sha256: `import timm_stim` warns naming the manifest and skips them."""
    good = tmp_path / 'good'
    _checkpoint(tmp_path / 'ok.safetensors')
    W.add_weights(tmp_path / 'ok.safetensors', MODEL, TAG, num_classes=10, directory=good)
    items = json.loads((good / 'manifest.json').read_text())['weights']
    items += [dict(items[0], model='resnet20_stim_typo'), {'model': 'x'}, dict(items[0], tag='t2', sha256='zz')]
    (good / 'manifest.json').write_text(json.dumps({'weights': items}))
    code = '''
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            import timm, timm_stim
        print([str(x.message) for x in w if 'manifest' in str(x.message)])
        print(timm.list_pretrained('*_stim*'))
    '''
    out = _run(code, dict(TIMM_STIM_WEIGHTS_DIR=str(good)))
    assert out.returncode == 0, out.stderr[-3000:]
    warned, listed = out.stdout.strip().splitlines()
    assert warned.count(str(good / 'manifest.json')) == 3 and 'resnet20_stim_typo' in warned
    assert listed == f"['{MODEL}.{TAG}']"
    (good / 'manifest.json').write_text('{not json')
    out = _run(code, dict(TIMM_STIM_WEIGHTS_DIR=str(good)))
    assert out.returncode == 0 and 'not valid JSON' in out.stdout


def test_hub_fallback_honours_hf_hub_offline_env(wdir, monkeypatch, tmp_path):
    """HF_HUB_OFFLINE set after huggingface_hub was imported still means: local cache only, fail at once."""
    import time
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    (entry,) = W.read_manifest(wdir)
    (wdir / entry.file).unlink()
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match='HF_HUB_OFFLINE is set') as e:
        W.resolve_file(entry, wdir, cache_dir=tmp_path / 'empty_cache')
    assert time.time() - t0 < 5 and entry.hub_id in str(e.value)
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')  # online (the Hub answers): the error says how to avoid the retries
    monkeypatch.setattr(W, 'hub_unreachable', lambda: None)
    monkeypatch.setattr('huggingface_hub.hf_hub_download', lambda *a, **k: (_ for _ in ()).throw(OSError('no net')))
    with pytest.raises(FileNotFoundError, match='HF_HUB_OFFLINE=1 makes this fail at once'):
        W.resolve_file(entry, wdir, cache_dir=tmp_path / 'empty_cache')
