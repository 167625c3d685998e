"""`timm-stim-demo`: fine-tune a released `_stim` tag on Fashion-MNIST and measure a few elastic depths.

The end-to-end test makes a placeholder tag (a freshly initialised `cifar_resnet20_stim`, written with the weights
machinery into a temporary weights directory, `TIMM_STIM_WEIGHTS_DIR`) and runs the demo in a fresh interpreter,
so that the tag is the model's default pretrained tag as `import timm_stim` registers it, on a tiny class-balanced
subset. Bad inputs (no dataset, unknown model or tag, bad depths, no released tag) must give one clear line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from timm_stim import demo
from timm_stim.models import weights as W

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path(demo.FASHION_MNIST_DIR)
needs_fmnist = pytest.mark.skipif(not all((FMNIST / f).is_file() for f in demo.FILES),
                                  reason='Debian package dataset-fashion-mnist not installed')
MODEL, TAG = 'cifar_resnet20_stim', 'demo_cifar10'
COMMAND = ('timm-stim-train -c benchmarks/recipes/cifar10.yaml --data-dir ../shared/data/cifar10 --model '
           'cifar_resnet20_stim --epochs 30 --stim-mode stpp --stim-subnets 1 --stim-space st --stim-min-scale 0.75')


def _state_dict(seed: int = 0):
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(MODEL).state_dict().items()}


@pytest.fixture(scope='module')
def tagged(tmp_path_factory):
    """A weights directory whose only `_stim` tag is a freshly initialised cifar_resnet20_stim (CIFAR-10 head)."""
    d = tmp_path_factory.mktemp('weights')
    sd = _state_dict()
    W.write_weights(sd, MODEL, TAG, 10, directory=d, dataset='cifar10', command=COMMAND, metrics={'top1': 10.0})
    return d, sd


def _demo(weights_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIMM_STIM_WEIGHTS_DIR=str(weights_dir), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1',
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'timm_stim.demo', '--threads', '1', *args], capture_output=True,
                          text=True, env=env, cwd=str(cwd), timeout=600)


def _error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_dataset_is_one_line(tmp_path, capsys):
    err = _error_line(capsys, ['--data-dir', str(tmp_path / 'nowhere'), '--output', str(tmp_path / 'out')])
    assert err.startswith('timm-stim-demo: error: Fashion-MNIST not found')
    assert 'apt-get install dataset-fashion-mnist' in err and '--data-dir' in err
    assert not (tmp_path / 'out').exists()


@needs_fmnist
@pytest.mark.parametrize('argv, message', [
    (['--model', 'cifar_resnet21_stim'], "unknown model 'cifar_resnet21_stim': did you mean"),
    (['--model', 'cifar_resnet20_stim.nope'], 'cifar_resnet20_stim.nope: no such pretrained tag'),
    (['--model', 'cifar_resnet20_stim', '--from-scratch', '--depths', '3,3,3', '4,3,3'],
     'stage layer1 can keep 1..3 blocks, not 4'),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    err = _error_line(capsys, argv + ['--output', str(tmp_path / 'out')])
    assert message in err, err


def test_in_chans_1_sums_the_pretrained_first_conv(tagged):
    """timm's adaptation (the cfg names `first_conv`): the 1-channel conv is the pretrained one summed over RGB,
    the 10-class head is kept (same class count)."""
    d, sd = tagged
    assert timm.models.get_pretrained_cfg(MODEL).first_conv == 'conv1'
    m = timm.create_model(MODEL, pretrained=True, in_chans=1, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(d / f'{MODEL}.{TAG}.safetensors')))
    assert m.conv1.weight.shape == (16, 1, 3, 3)
    torch.testing.assert_close(m.conv1.weight, sd['conv1.weight'].sum(1, keepdim=True))
    assert torch.equal(m.fc.weight, sd['fc.weight']) and torch.equal(m.layer2[0].conv1.weight,
                                                                     sd['layer2.0.conv1.weight'])


def test_pick_depths_spans_the_flops_range():
    m = timm.create_model(MODEL, num_classes=10, in_chans=1)
    picks = demo.pick_depths(m, demo.INPUT_SIZE)
    assert len(picks) == 5 and picks[0] == (3, 3, 3) and picks[-1] == (1, 1, 1)
    flops = {tuple(p['depths']): p['flops'] for p in m.depth_profile(demo.INPUT_SIZE)}
    assert all(flops[a] > flops[b] for a, b in zip(picks, picks[1:]))
    assert (2, 2, 2) in picks  # the middle of the range: the balanced configuration


def test_picked_depths_stay_in_the_space_the_fine_tune_trains():
    """ST++'s stpp space on ResNet-20 holds only (3,2,3) besides the full network: the demo measures those, not
    depths nobody trained; the st space (every prefix) gives the whole FLOPs range."""
    m = timm.create_model(MODEL, num_classes=10, in_chans=1)
    stpp = demo.trained_space(m, ['--stim-mode', 'stpp'])
    assert stpp == [[3], [2, 3], [3]]
    assert demo.pick_depths(m, demo.INPUT_SIZE, space=stpp) == [(3, 3, 3), (3, 2, 3)]
    st = demo.trained_space(m, ['--stim-mode', 'stpp', '--stim-space', 'st'])
    assert demo.pick_depths(m, demo.INPUT_SIZE, space=st) == demo.pick_depths(m, demo.INPUT_SIZE)


def test_precision_follows_how_the_weights_were_trained():
    """MobileNetV3 trains in float32 here (bfloat16 is 2.2x slower for it): its tags fine-tune in float32."""
    entry = lambda **a: W.WeightsEntry(model=MODEL, tag='t', file='f', sha256='0' * 64, num_classes=10,  # noqa: E731
                                       train_args=a)
    assert demo.trained_in_low_precision(entry(stim_mode='stpp', amp=True, amp_dtype='bfloat16'))
    assert not demo.trained_in_low_precision(entry(stim_mode='stpp'))  # no --amp recorded: float32
    assert demo.trained_in_low_precision(None) and demo.trained_in_low_precision(entry())  # no record: default


def test_stim_flags_from_the_weights_record():
    entry = W.WeightsEntry(model=MODEL, tag='t', file='f', sha256='0' * 64, num_classes=10, command=COMMAND)
    flags, where = demo.stim_flags(entry)  # parsed from the command
    assert flags == ['--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st', '--stim-min-scale', '0.75']
    assert 'command' in where
    recorded = W.WeightsEntry(model=MODEL, tag='t', file='f', sha256='0' * 64, num_classes=10, command='x',
                              train_args=dict(stim_mode='st', stim_subnets=2, epochs=30))
    assert demo.stim_flags(recorded)[0] == ['--stim-mode', 'st', '--stim-subnets', '2']
    baseline = W.WeightsEntry(model=MODEL, tag='t', file='f', sha256='0' * 64, num_classes=10,
                              train_args=dict(stim_mode='off'))
    assert demo.stim_flags(baseline) == (list(demo.DEFAULT_STIM), 'the demo default (baseline weights)')
    assert demo.stim_flags(None)[0] == list(demo.DEFAULT_STIM)


@pytest.mark.slow
@needs_fmnist
def test_no_released_tag_is_one_line(tmp_path):
    """A manifest without any `_stim` tag (here: only a baseline of the base name): one line naming the way on."""
    d = tmp_path / 'weights'
    W.write_weights(_state_dict(), 'cifar_resnet20', 'base', 10, directory=d)
    res = _demo(d, '--output', str(tmp_path / 'out'), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith('timm-stim-demo: error: no released weights for cifar_resnet20_stim yet')
    assert '--model MODEL.TAG' in line and '--from-scratch' in line


@pytest.mark.slow
@needs_fmnist
def test_demo_end_to_end_on_a_placeholder_tag(tagged, tmp_path):
    d, _ = tagged
    out = tmp_path / 'demo'
    res = _demo(d, '--train-subset', '256', '--test-subset', '200', '--output', str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'Converted input conv conv1 pretrained weights from 3 to 1 channel' in res.stderr  # timm's adaptation
    result = json.loads((out / 'demo.json').read_text())
    assert result['model'] == f'{MODEL}.{TAG}' and not result['from_scratch']  # the default tag, not hard-coded
    assert result['pretrained']['sha256'] == W.read_manifest(d)[0].sha256
    assert result['stim'] == ['--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st',
                              '--stim-min-scale', '0.75']  # from the tag's recorded command
    assert '--pretrained' in result['train_command'] and '--input-size 1 28 28' in result['train_command']
    assert result['train_images'] == 256 and result['test_images'] == 200 and result['bn_images'] == 256
    rows = result['results']
    assert [tuple(r['depths']) for r in rows][0] == (3, 3, 3) and rows[0]['full'] and len(rows) == 5
    assert all(a['flops'] > b['flops'] for a, b in zip(rows, rows[1:]))
    assert all(0 <= r['top1'] <= 100 for r in rows)
    # the printed table: one line per configuration, with its MFLOPs and top-1
    for r in rows:
        label = ','.join(map(str, r['depths'])) + (' (full)' if r['full'] else '')
        (line,) = [l for l in res.stdout.splitlines() if l.strip().startswith(label + ' ')]
        assert f'{r["flops"] / 1e6:.2f}' in line and f'{r["top1"]:.2f}' in line
    assert f'Numbers: {out / "demo.json"}' in res.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert 'no plot' in res.stdout
    else:
        assert (out / 'demo.png').stat().st_size > 0 and f'Plot:    {out / "demo.png"}' in res.stdout


@needs_fmnist
@pytest.mark.parametrize('model, depths', [(MODEL, ['3,3,3', '1,1,1']),
                                           ('mobilenetv3_large_100_stim', ['1,1,1,1,1,1,1'])])
def test_from_scratch_same_schedule_in_process(tmp_path, model, depths):
    """`--from-scratch` (the benchmark's comparison): random init, no pretrained load, same flags otherwise;
    `zero_init_last=False` only where the architecture has it (MobileNetV3 has not)."""
    opts = demo.build_parser().parse_args(['--model', model, '--from-scratch', '--train-subset', '128',
                                           '--test-subset', '100', '--depths', *depths, '--threads', '1',
                                           '--output', str(tmp_path)])
    threads = torch.get_num_threads()
    try:
        result = demo.run(opts, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert result['from_scratch'] and '--pretrained' not in result['train_command'].split()
    assert [','.join(map(str, r['depths'])) for r in result['results']] == depths
    assert ('zero_init_last=False' in result['train_command']) == (model == MODEL)
    assert Path(result['checkpoint']).is_file()


def test_progress_rewrites_one_line_on_a_terminal():
    import io
    import logging

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, tty in ((Tty(), True), (io.StringIO(), False)):
        h = demo._ProgressHandler(stream)
        for msg in ('Model created', 'Train: 0 [ 0/9]', 'Train: 0 [ 1/9]', 'Epoch 0 done'):
            h.emit(logging.LogRecord('train', logging.INFO, __file__, 1, msg, None, None))
        if tty:
            assert stream.getvalue() == ('Model created\n\rTrain: 0 [ 0/9]\x1b[K\rTrain: 0 [ 1/9]\x1b[K\n'
                                         'Epoch 0 done\n')
        else:
            assert stream.getvalue().splitlines() == ['Model created', 'Train: 0 [ 0/9]', 'Train: 0 [ 1/9]',
                                                      'Epoch 0 done']
    line = ('Train: 0 [  46/468 ( 10%)]  Loss: 1.945  main: 1.892  KL: 0.0531    505.1 img/s  LR: 1.951e-02  '
            'ETA: 0:02:29 epoch, 0:02:29 run')
    assert demo._fit(line, 200) == ' '.join(line.split())
    assert demo._fit(line, 90) == 'Train: 0 [ 46/468 ( 10%)] Loss: 1.945 505.1 img/s ETA: 0:02:29 epoch, 0:02:29 run'

