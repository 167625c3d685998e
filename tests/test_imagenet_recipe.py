"""The released ST++ ImageNet recipe as a file (`benchmarks/recipes/imagenet_resnet50_stpp.yaml`): what it parses
to (no training), and a tiny end-to-end `torchrun ... -c <recipe>` run on CPU (gloo) with fake 256-px JPEGs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'benchmarks' / 'recipes' / 'imagenet_resnet50_stpp.yaml'


@pytest.fixture(scope='module')
def args():
    from timm_stim.train import _parse_args
    return _parse_args(['-c', str(RECIPE), '--data-dir', '/path/to/imagenet'])


def test_recipe_parses_to_the_released_settings(args):
    assert args.model == 'resnet50_stim' and args.num_classes == 1000 and args.epochs == 200
    assert args.model_kwargs == {'zero_init_last': False}
    # optimiser and schedule: SGD nesterov 0.9, WD 1e-4 on every parameter, cosine per step to 0, no warm-up
    assert (args.opt, args.momentum, args.weight_decay, args.filter_bias_and_bn) == ('sgd', 0.9, 1e-4, False)
    assert (args.sched, args.sched_on_updates, args.min_lr, args.warmup_epochs) == ('cosine', True, 0.0, 0)
    # data: RandomResizedCrop 200 + flip + ColorJitter 0.4, test Resize 240 + CenterCrop 224, bilinear
    assert (args.img_size, args.eval_img_size, round(224 / args.crop_pct, 6)) == (200, 224, 240)
    assert args.scale == [0.08, 1.0] and args.hflip == 0.5 and args.color_jitter == 0.4 and args.aa is None
    assert args.train_interpolation == args.interpolation == 'bilinear'
    assert args.smoothing == 0 and args.mixup == 0 and args.cutmix == 0 and args.reprob == 0
    assert not args.model_ema and not args.amp
    # ST++ final: K = 6, KL- with A = 1, T = 1, main loss on normalised logits, min scale 0.43, BN re-est.
    assert (args.stim_mode, args.stim_subnets, args.stim_space, args.stim_loss) == ('stpp', 6, 'stpp', 'kl-')
    assert (args.stim_amplitude, args.stim_temp, args.stim_weight, args.stim_min_scale) == (1.0, 1.0, 1.0, 0.43)
    assert args.stim_main_normalized and args.stim_bn_recalib == 2000 and args.stim_bn_recalib_aug


def test_recipe_lr_is_0_2_at_global_batch_512_and_decays_every_parameter(args):
    """8 processes x 64 = 512 images per step: lr 0.2; one parameter group with weight decay (BN and bias too);
    the cosine starts at 0.2 without warm-up and ends at 0."""
    import argparse
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm_stim.train import _create_optimizer
    a = argparse.Namespace(**vars(args))
    a.world_size, a.rank = 8, 0
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = _create_optimizer(a, model)
    assert a.lr == pytest.approx(0.2) and len(opt.param_groups) == 1
    assert opt.param_groups[0]['weight_decay'] == 1e-4 and opt.param_groups[0]['nesterov']
    sched, epochs = create_scheduler_v2(opt, **scheduler_kwargs(a), updates_per_epoch=10)
    assert epochs == 200 and opt.param_groups[0]['lr'] == pytest.approx(0.2)
    sched.step_update(num_updates=200 * 10)
    assert opt.param_groups[0]['lr'] == pytest.approx(0.0, abs=1e-12)
    a.world_size, a.lr = 4, None  # 4 x 64 = 256: the rate scales linearly
    _create_optimizer(a, model)
    assert a.lr == pytest.approx(0.1)


def test_recipe_transforms_are_the_released_ones(args):
    import timm
    import timm_stim  # noqa: F401
    from timm.data import create_transform, resolve_data_config
    from timm_stim.data import data_config_at
    with torch.device('meta'):
        model = timm.create_model(args.model)
    train_cfg = resolve_data_config(vars(args), model=model)
    eval_cfg = data_config_at(train_cfg, args.eval_img_size, args.eval_input_size)
    train_tf = create_transform(train_cfg['input_size'], is_training=True, scale=args.scale, ratio=args.ratio,
                                hflip=args.hflip, color_jitter=args.color_jitter,
                                interpolation=args.train_interpolation).transforms
    assert train_tf[0].size == (200, 200) and train_tf[0].scale == (0.08, 1.0)
    assert type(train_tf[1]).__name__ == 'RandomHorizontalFlip'
    jitter = train_tf[2]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.6, 1.4),) * 3 + (None,)
    eval_tf = create_transform(eval_cfg['input_size'], crop_pct=eval_cfg['crop_pct'],
                               interpolation=eval_cfg['interpolation']).transforms
    assert eval_tf[0].size == 240 and eval_tf[1].size == (224, 224)
    assert str(eval_tf[0].interpolation) == 'InterpolationMode.BILINEAR'


@pytest.mark.slow
def test_recipe_runs_end_to_end_under_torchrun(tmp_path):
    """The real command on CPU (gloo): `torchrun --nproc_per_node=1 -m timm_stim.train -c <recipe>` with a small
    model, batch and subset; about 20 s."""
    from PIL import Image
    data = tmp_path / 'imagenet'
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', 4), ('val', 2)):
        for c, cls in enumerate(('n01440764', 'n01443537')):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                px = torch.randint(0, 128, (256, 288, 3), generator=g, dtype=torch.uint8) + 100 * c
                Image.fromarray(px.numpy()).save(data / split / cls / f'{i}.JPEG', quality=85)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', '-m', 'timm_stim.train',
           '-c', str(RECIPE), '--data-dir', str(data), '--model', 'resnet18_stim', '-b', '4', '-j', '0',
           '--epochs', '1', '--train-batches-per-epoch', '2', '--stim-bn-recalib', '8', '--no-plot',
           '--output', str(tmp_path / 'out'), '--experiment', 'tiny']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'train 200x200 px (BN re-estimation too), eval 224x224 px (crop_pct 0.9333: resize 240x240' \
        in proc.stderr
    recorded = yaml.safe_load(open(tmp_path / 'out' / 'tiny' / 'args.yaml'))
    assert recorded['config'] == str(RECIPE) and recorded['stim_subnets'] == 6
    assert recorded['data_config']['eval']['input_size'] == [3, 224, 224]
    assert recorded['lr'] == pytest.approx(0.2 * 4 / 512)  # lr_base scaled to the global batch of 4
    assert (tmp_path / 'out' / 'tiny' / 'last.pth.tar').is_file()
