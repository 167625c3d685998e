"""Train at one size, evaluate at another (`--eval-img-size` / `--eval-input-size`, the released ImageNet protocol:
train crop 200, test Resize 240 + CenterCrop 224): what the model sees on both data paths, what the run records,
what `timm-stim-release` re-measures, and the refusals of values that cannot describe an evaluation input."""
import argparse
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.usefixtures('stim_cache')  # tests/conftest.py: a fresh decoded-image cache

TRAIN, EVAL = 48, 56  # from 64-px images


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """An ImageFolder of 64-px PNGs: 2 classes, 8 training and 4 validation images each."""
    from PIL import Image
    root = tmp_path_factory.mktemp('img64')
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', 8), ('val', 4)):
        for c, cls in enumerate(('a', 'b')):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                px = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8) // 2 + 100 * c
                Image.fromarray(px.numpy()).save(d / f'{i}.png')
    return root


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _train_seeing_shapes(monkeypatch, argv):
    """Run timm-stim-train; the (training mode, H, W) of every batch the model was called on."""
    import timm_stim.train as train_mod
    seen, real = [], train_mod.create_model

    def create_model(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, *inp[0].shape[-2:])))
        return model

    monkeypatch.setattr(train_mod, 'create_model', create_model)
    return train_mod.main(argv), seen


def _argv(folder, out, *extra):
    return ['--data-dir', str(folder), '--model', 'cifar_resnet20', '--num-classes', '2', '-b', '8', '--epochs', '1',
            '--warmup-epochs', '0', '--lr', '0.05', '--stim-mode', 'off', '--stim-bn-recalib', '16', '--seed', '1',
            '--img-size', str(TRAIN), '--eval-img-size', str(EVAL), '--crop-pct', '0.875', '--no-plot',
            '--output', str(out), *extra]


@pytest.mark.parametrize('path', ['tensor', 'timm'])
def test_train_at_48_evaluate_at_56_and_record_it(folder, tmp_path, monkeypatch, path):
    extra = ['--fast-data'] if path == 'tensor' else ['--no-fast-data', '--workers', '0']
    res, seen = _train_seeing_shapes(monkeypatch, _argv(folder, tmp_path, '--experiment', path, *extra))
    train_shapes = {s[1:] for s in seen if s[0]}
    eval_shapes = {s[1:] for s in seen if not s[0]}
    # training steps and BN re-estimation (train mode) at the training size; evaluation at the other
    assert train_shapes == {(TRAIN, TRAIN)} and eval_shapes == {(EVAL, EVAL)}
    assert sum(1 for s in seen if not s[0]) == 1  # the 8 validation images, one batch
    run = Path(res['output_dir'])
    recorded = yaml.safe_load(open(run / 'args.yaml'))
    assert recorded['img_size'] == TRAIN and recorded['eval_img_size'] == EVAL
    assert recorded['data_config']['train']['input_size'] == [3, TRAIN, TRAIN]
    assert recorded['data_config']['eval']['input_size'] == [3, EVAL, EVAL]
    assert recorded['data_config']['eval']['crop_pct'] == 0.875
    ckpt = _load(run / 'last.pth.tar')
    assert ckpt['args'].eval_img_size == EVAL and ckpt['data_config'] == res['data_config'] == \
        recorded['data_config']


def test_release_remeasures_at_the_evaluation_size(folder, tmp_path, monkeypatch):
    """timm-stim-release evaluates at the run's eval size (and matches its logged top-1) and re-estimates BN for
    the depth sweep on training-augmented images at the training size."""
    import timm_stim.release as release
    res, _ = _train_seeing_shapes(monkeypatch, _argv(folder, tmp_path, '--experiment', 'rel'))
    calls, real = [], release.create_split_loader

    def spy(args, data_config, split, subset, shuffle, device, augment=False):
        calls.append((split, tuple(data_config['input_size']), augment, data_config['crop_pct']))
        return real(args, data_config, split, subset, shuffle, device, augment=augment)

    monkeypatch.setattr(release, 'create_split_loader', spy)
    entry = release.main([res['output_dir'], '--tag', 'unit', '--model', 'cifar_resnet20', '--bn-recalib', '16',
                          '--robustness', 'random', '--robustness-samples', '1', '-b', '8',
                          '--weights-dir', str(tmp_path / 'w')])
    assert ('validation', (3, EVAL, EVAL), False, 0.875) in calls
    assert ('train', (3, TRAIN, TRAIN), True, 0.875) in calls
    assert entry.input_size == [3, EVAL, EVAL] and entry.crop_pct == 0.875
    assert entry.metrics['top1'] == pytest.approx(entry.evaluation['logged_top1'], abs=1e-6)
    assert '--eval-img-size 56' in entry.command and entry.train_args['eval_img_size'] == EVAL


def test_validate_a_training_checkpoint_at_the_size_its_run_evaluated(folder, tmp_path, monkeypatch):
    """timm-stim-validate --checkpoint <run>/last.pth.tar without data flags evaluates as the run did (eval size,
    its crop_pct, its class count, BN re-estimated at the training size); a data flag given on the command line
    wins."""
    import timm_stim.validate as validate
    res, _ = _train_seeing_shapes(monkeypatch, _argv(folder, tmp_path, '--experiment', 'val'))
    ckpt = str(Path(res['output_dir']) / 'last.pth.tar')
    base = ['--data-dir', str(folder), '--model', 'cifar_resnet20', '--checkpoint', ckpt,  # 2 classes: recorded
            '-b', '8', '--workers', '0']
    out = validate.main(base + ['--depths', '2,2,2', '--bn-recalib', '16'])
    assert out['input_size'] == [3, EVAL, EVAL] and out['bn_recalib_input_size'] == [3, TRAIN, TRAIN]
    full = validate.main(base + ['--bn-recalib', '0'])  # the full network with its stored BN: the run's own number
    assert full['input_size'] == [3, EVAL, EVAL]
    assert full['results'][0]['top1'] == pytest.approx(res['results'][-1]['validation']['top1'], abs=1e-6)
    assert validate.main(base + ['--img-size', '40'])['input_size'] == [3, 40, 40]


@pytest.mark.parametrize('bad, says', [
    (['--eval-img-size', '0'], 'must be a positive integer'),
    (['--eval-img-size', 'big'], "invalid _positive_int value: 'big'"),
    (['--eval-input-size', '3', '224'], 'expected 3 arguments'),
    (['--eval-input-size', '3', '-1', '224'], 'must be a positive integer'),
    (['--eval-img-size', '224', '--eval-input-size', '3', '224', '224'], 'are exclusive'),
    (['--eval-input-size', '1', '224', '224'], 'evaluation changes the image size only'),
    (['--crop-pct', '0'], '--crop-pct 0.0: must be in (0, 1]'),
    (['--crop-pct', '1.2'], '--crop-pct 1.2: must be in (0, 1]'),
])
def test_nonsense_eval_sizes_are_refused_in_one_line(bad, says, capsys):
    from timm_stim.train import main
    with pytest.raises(SystemExit) as e:
        main(['--data-dir', '/nonexistent'] + bad)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and says in errors[0], errors
