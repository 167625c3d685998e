#!/usr/bin/env python3
"""`timm-stim-train`: timm's train.py flags, with the training step of `StimulativeTrainer` (ST / ST++).

    timm-stim-train --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim --stim-mode stpp ...
    torchrun --nproc_per_node=2 -m timm_stim.train ...          # DDP (gloo on CPU, nccl on GPU)

Flags keep the names and meanings of timm's train.py (model, data, optimizer, schedule, augmentation, EMA, AMP,
checkpointing); `--stim-*` flags set the ST / ST++ knobs and `--stim-mode off` is the plain baseline. The command
composes small pieces, as timm's script does: `timm_stim.loaders` (train / eval / BN re-estimation batches),
`timm_stim.evaluation` (the evaluator `timm-stim-validate` shares), `timm_stim.checkpoint` (what a checkpoint holds
and a resume restores), `timm_stim.summary` (the run directory's records) and timm's create_model, Mixup,
create_classification_loss, create_optimizer_v2, create_scheduler_v2, ModelEmaV3 (task.setup_ema),
init_distributed_device / distribute_bn / reduce_tensor. `RunState` names what the run holds between epochs;
`run_epoch` tells one epoch top to bottom.

Resume without loss: a checkpoint at every epoch end and every `--recovery-interval` updates, written atomically;
it holds model, optimizer, scheduler, EMA, AMP scaler, the sub-network sampler (task state), every rank's RNG
states, the data position (epoch, batch) and the running epoch meters, so `--resume` continues a killed run to
bit-identical weights (CPU, seeded). A non-finite loss stops the run before it touches the weights. Settings that
can be checked before the model is built and the data decoded (model name and family, files, output and data
directories) are refused up front with one line.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import yaml

from timm import utils
from timm.layers import convert_sync_batchnorm
from timm.loss import create_classification_loss
from timm.models import create_model, is_model, list_models, safe_model_name, split_model_name_tag
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import evaluation_sample_limit
from timm.utils import NativeScaler
from timm.utils.model import unwrap_model

import timm_stim  # noqa: F401  (registers the *_stim models)
from .bf16_conv import auto_precision, cpu_name, native_cpu_bfloat16
from .checkpoint import (CKPT_EXT, CheckpointWriteError, Progress, StimCheckpointSaver, checkpoint_misfit,
                         find_resume_checkpoint, gather_rng_states, restore_progress, restore_rng, restore_saver,
                         resume_checkpoint)
from .data import run_data_configs
from .depth import compile_blocks, find_stages
from .evaluation import evaluate
from .guards import NonFiniteLossError, any_rank, nonfinite_tensors, recovery_advice
from .loaders import Loaders, check_data_dir, create_train_loaders, recalib_batches
from .summary import plot_curves, record_launch, truncate_summary, write_args_yaml
from .trainer import StimConfig, StimulativeTrainer, add_stim_args

__all__ = ['build_parser', 'main', 'RunState', 'run_epoch', 'train_one_epoch', 'NonFiniteLossError', 'plot_curves',
           'compile_blocks', 'find_resume_checkpoint', 'nonfinite_tensors', 'fast_path_conflicts']

_logger = logging.getLogger('train')


# ------------------------------------------------------------------------------------------------- flags
def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return v


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's dataset parameters."""
    g = parser.add_argument_group('Dataset parameters')
    g.add_argument('--data-dir', metavar='DIR', help='dataset root (image folder with train/ and val/)')
    g.add_argument('--dataset', metavar='NAME', default='',
                   help='dataset type: "" (image folder), torch/cifar10, torch/fashion_mnist, fashion-mnist (Debian '
                        'package files), or any timm dataset name (timm loader path)')
    g.add_argument('--train-split', metavar='NAME', default='train')
    g.add_argument('--val-split', metavar='NAME', default='validation', help='"" disables validation')
    g.add_argument('--dataset-download', action='store_true', help='download torch/ datasets (online users)')
    g.add_argument('--class-map', default='', metavar='FILENAME')
    g.add_argument('--train-subset', type=_positive_int, default=None, metavar='N',
                   help='[timm-stim] train on a class-balanced subset of N images')
    g.add_argument('--val-subset', type=_positive_int, default=None, metavar='N',
                   help='[timm-stim] validate on a class-balanced subset of N images')
    g.add_argument('--holdout', type=_positive_int, default=None, metavar='N',
                   help='[timm-stim] hold out N seeded training images (timm_stim.heldout; CIFAR-10: 5000) and '
                        'validate on them instead of --val-split: how runs that choose arms or settings train')
    g.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=_positive_int, default=None,
                   metavar='N', help='cap on loader batches per epoch')
    g.add_argument('--fast-data', action=argparse.BooleanOptionalAction, default=None,
                   help='[timm-stim] in-memory uint8 tensor path with batch augmentation (crop with padding, flip); '
                        'default: on for small images (<= 64 px) without --aa / --reprob')
    g.add_argument('--data-cache-dir', default=None, metavar='DIR',
                   help='[timm-stim] decoded-image cache (default $TIMM_STIM_CACHE or ~/.cache/timm_stim)')
    g.add_argument('--crop-padding', type=_non_negative_int, default=4, metavar='PX',
                   help='[timm-stim] fast path: zero padding of the random crop')


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's model parameters."""
    g = parser.add_argument_group('Model parameters')
    g.add_argument('--model', default='resnet50', metavar='MODEL')
    g.add_argument('--pretrained', action='store_true')
    g.add_argument('--pretrained-path', default=None, metavar='PATH',
                   help='load this checkpoint as the pretrained weights (with head adaptation)')
    g.add_argument('--initial-checkpoint', default='', metavar='PATH')
    g.add_argument('--resume', default='', metavar='PATH',
                   help='resume everything from a checkpoint file, or the newest checkpoint in a run directory')
    g.add_argument('--no-resume-opt', action='store_true', help='do not restore the optimizer state')
    g.add_argument('--num-classes', type=_positive_int, default=None, metavar='N')
    g.add_argument('--gp', default=None, metavar='POOL')
    g.add_argument('--img-size', type=_positive_int, default=None, metavar='N')
    g.add_argument('--in-chans', type=_positive_int, default=None, metavar='N')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N',
                   help='evaluation crop: resize to size / crop_pct, centre-crop size (e.g. 0.9333: 240 -> 224)')
    g.add_argument('--eval-img-size', type=_positive_int, default=None, metavar='N',
                   help='[timm-stim] evaluate at N x N (default: the training size, as timm); training and BN '
                        're-estimation stay at --img-size (train 200, test 224: --img-size 200 --eval-img-size 224 '
                        '--crop-pct 0.9333)')
    g.add_argument('--eval-input-size', default=None, nargs=3, type=_positive_int, metavar='N',
                   help='[timm-stim] evaluation input dimensions (C H W), exclusive with --eval-img-size')
    g.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    g.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    g.add_argument('--interpolation', default='', metavar='NAME')
    g.add_argument('-b', '--batch-size', type=_positive_int, default=128, metavar='N', help='per-process batch')
    g.add_argument('-vb', '--validation-batch-size', type=_positive_int, default=None, metavar='N')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--grad-accum-steps', type=_positive_int, default=1, metavar='N')
    g.add_argument('--grad-checkpointing', action='store_true',
                   help='gradient checkpointing (refused with --stim-mode st/stpp: it bypasses block skipping)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    g.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                   help='torch.compile each residual block in place (a whole-model compile would recompile for '
                        'every sub-network)')
    g.add_argument('--torchcompile-mode', type=str, default=None)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's device parameters."""
    g = parser.add_argument_group('Device parameters')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                   help='mixed precision (autocast with --amp-dtype); --no-amp overrides a config file that sets it')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16', 'auto'),
                   help='the autocast dtype of --amp; auto: bfloat16 on a CPU with bfloat16 instructions (AVX-512 '
                        'BF16 or AMX), float32 (no autocast) on one without, bfloat16 else float16 on CUDA '
                        '(logged, and recorded as `precision` in args.yaml and in precision.txt)')
    g.add_argument('--no-ddp-bb', action='store_true', help='no DDP buffer broadcast')
    g.add_argument('--local_rank', '--local-rank', default=0, type=int)
    g.add_argument('--device-modules', default=None, type=str, nargs='+')


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's optimizer parameters."""
    g = parser.add_argument_group('Optimizer parameters')
    g.add_argument('--opt', default='sgd', metavar='OPTIMIZER')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    g.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M')
    g.add_argument('--weight-decay', type=float, default=2e-5)
    g.add_argument('--filter-bias-and-bn', action=argparse.BooleanOptionalAction, default=True,
                   help='[timm-stim] exempt BN / bias / 1-d parameters from weight decay (timm default); '
                        '--no-filter-bias-and-bn decays every parameter, as the released ST++ code and the '
                        'classic CIFAR recipes do')
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'))
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)


def add_schedule_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's learning rate schedule parameters."""
    g = parser.add_argument_group('Learning rate schedule parameters')
    g.add_argument('--sched', default='cosine', metavar='SCHEDULER')
    g.add_argument('--sched-on-updates', action='store_true')
    g.add_argument('--lr', type=float, default=None, metavar='LR')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='DIV')
    g.add_argument('--lr-base-scale', default='', metavar='SCALE')
    g.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    g.add_argument('--lr-noise-pct', type=float, default=0.67)
    g.add_argument('--lr-noise-std', type=float, default=1.0)
    g.add_argument('--lr-cycle-mul', type=float, default=1.0)
    g.add_argument('--lr-cycle-decay', type=float, default=0.5)
    g.add_argument('--lr-cycle-limit', type=int, default=1)
    g.add_argument('--lr-k-decay', type=float, default=1.0)
    g.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    g.add_argument('--min-lr', type=float, default=0, metavar='LR')
    g.add_argument('--epochs', type=_positive_int, default=300, metavar='N')
    g.add_argument('--start-epoch', default=None, type=int, metavar='N')
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
    g.add_argument('--decay-epochs', type=float, default=90)
    g.add_argument('--warmup-epochs', type=_non_negative_int, default=5)
    g.add_argument('--warmup-prefix', action='store_true')
    g.add_argument('--cooldown-epochs', type=_non_negative_int, default=0)
    g.add_argument('--patience-epochs', type=int, default=10)
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1)


def add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's augmentation and regularization parameters."""
    g = parser.add_argument_group('Augmentation and regularization parameters')
    g.add_argument('--no-aug', action='store_true')
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT')
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO')
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='timm loader path only')
    g.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy (timm loader path)')
    g.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erase prob (timm loader path)')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'))
    g.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N')
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--bce-loss', action='store_true')
    g.add_argument('--train-interpolation', default='random')
    g.add_argument('--drop', type=float, default=0.0, metavar='PCT')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT')
    g.add_argument('--drop-block', type=float, default=None, metavar='PCT')


def add_batchnorm_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's batch norm parameters."""
    g = parser.add_argument_group('Batch norm parameters')
    g.add_argument('--bn-momentum', type=float, default=None)
    g.add_argument('--bn-eps', type=float, default=None)
    g.add_argument('--sync-bn', action='store_true')
    g.add_argument('--dist-bn', default='reduce', choices=('broadcast', 'reduce', ''))


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's model exponential moving average parameters."""
    g = parser.add_argument_group('Model exponential moving average parameters')
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-force-cpu', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true')


def add_misc_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's miscellaneous parameters."""
    g = parser.add_argument_group('Miscellaneous parameters')
    g.add_argument('--seed', type=int, default=42, metavar='S')
    g.add_argument('--log-interval', type=_positive_int, default=50, metavar='N')
    g.add_argument('--val-interval', type=_positive_int, default=1, metavar='N')
    g.add_argument('--recovery-interval', '--checkpoint-steps', type=_non_negative_int, default=0, metavar='N',
                   help='write a (resumable, atomic) recovery checkpoint every N updates; 0 = epoch ends only')
    g.add_argument('--checkpoint-hist', type=_positive_int, default=10, metavar='N')
    g.add_argument('-j', '--workers', type=_non_negative_int, default=2, metavar='N', help='timm loader path only')
    g.add_argument('--pin-mem', action='store_true')
    g.add_argument('--no-prefetcher', action='store_true')
    g.add_argument('--output', default='', metavar='PATH')
    g.add_argument('--experiment', default='', metavar='NAME')
    g.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'))
    g.add_argument('--no-plot', action='store_true', help='[timm-stim] skip the loss / accuracy PNG')


def add_stim_train_args(parser: argparse.ArgumentParser) -> None:
    """The `StimConfig` knobs (shared with every command) and the BN re-estimation protocol of training."""
    g = add_stim_args(parser)
    g.add_argument('--stim-bn-recalib', type=_non_negative_int, default=2000, metavar='N',
                   help='re-estimate BN (model and EMA) with the full network on N training images after each '
                        'epoch, for every mode including the baseline (as the released code); 0 = off')
    g.add_argument('--stim-bn-recalib-aug', action=argparse.BooleanOptionalAction, default=True,
                   help='re-estimate BN on training-augmented images at the training resolution (as released); '
                        '--no-stim-bn-recalib-aug uses un-augmented training images')


ARG_GROUPS = (add_dataset_args, add_model_args, add_device_args, add_optimizer_args, add_schedule_args,
              add_augmentation_args, add_batchnorm_args, add_ema_args, add_misc_args, add_stim_train_args)


def build_parser() -> argparse.ArgumentParser:
    """timm train.py flags (same names and meanings) plus the --stim-* knobs and the fast-data / resume extras."""
    parser = argparse.ArgumentParser(
        prog='timm-stim-train', description='Train a timm model with Stimulative Training (ST / ST++).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-c', '--config', default='', metavar='FILE',
                        help='YAML file whose keys override the defaults below (as in timm)')
    parser.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (deprecated, use --data-dir)')
    for add_args in ARG_GROUPS:
        add_args(parser)
    return parser


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        if not os.path.isfile(pre.config):
            parser.error(f'config file {pre.config} does not exist')
        with open(pre.config) as f:
            parser.set_defaults(**(yaml.safe_load(f) or {}))
    args = parser.parse_args(argv)
    args.argv = argv
    if args.data and not args.data_dir:
        args.data_dir = args.data
    _check_flag_combinations(parser, args)
    if args.fast_data:
        _check_fast_data_flags(parser, args)
    args.prefetcher = not args.no_prefetcher
    return args


def _check_flag_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other or name files that do not exist (argparse errors, exit 2)."""
    if args.resume and args.initial_checkpoint:
        parser.error('--resume and --initial-checkpoint are exclusive')
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        parser.error(f'--initial-checkpoint {args.initial_checkpoint}: no such file')
    if args.pretrained_path and not args.pretrained:
        parser.error(f'--pretrained-path {args.pretrained_path} is read only with --pretrained (as in timm): add '
                     f'--pretrained to start from it, or use --initial-checkpoint for a plain weights load')
    if args.pretrained_path and not os.path.isfile(args.pretrained_path):
        parser.error(f'--pretrained-path {args.pretrained_path}: no such file')
    _check_eval_size(parser, args)
    if args.stim_mode != 'off' and args.grad_checkpointing:
        parser.error('--grad-checkpointing bypasses block skipping: use it only with --stim-mode off')
    if args.stim_mode == 'off' and args.stim_subnets:
        parser.error(f'--stim-subnets {args.stim_subnets} needs sub-networks: use --stim-mode st or stpp (off is the '
                     f'baseline, no sub-network)')
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        parser.error('mixup / cutmix need an even --batch-size')
    for flag in ('stim_weight', 'stim_temp', 'stim_amplitude', 'stim_min_scale'):
        value = getattr(args, flag, None)
        if value is not None and not math.isfinite(value):
            parser.error(f'--{flag.replace("_", "-")} {value}: must be a finite number')


def _check_eval_size(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--eval-img-size / --eval-input-size / --crop-pct that cannot describe an evaluation input (argparse errors)."""
    if args.eval_img_size is not None and args.eval_input_size is not None:
        parser.error(f'--eval-img-size {args.eval_img_size} and --eval-input-size '
                     f'{" ".join(map(str, args.eval_input_size))} are exclusive: give one')
    if args.eval_input_size is not None and args.eval_input_size[0] != _in_chans(args):
        parser.error(f'--eval-input-size {" ".join(map(str, args.eval_input_size))}: {args.eval_input_size[0]} '
                     f'channels, but the model takes {_in_chans(args)} (--in-chans / --input-size): evaluation '
                     f'changes the image size only')
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        parser.error(f'--crop-pct {args.crop_pct}: must be in (0, 1] (the evaluation centre crop is crop_pct of the '
                     f'resized image, e.g. 224 / 240 = 0.9333)')


# timm loader flags the fast path does not implement: (flag, attribute); it crops with padding and flips instead
FAST_PATH_IGNORES = (('--scale', 'scale'), ('--ratio', 'ratio'), ('--color-jitter', 'color_jitter'),
                     ('--train-interpolation', 'train_interpolation'), ('--aa', 'aa'), ('--reprob', 'reprob'))


def fast_path_conflicts(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
    """timm augmentation flags set away from their defaults, which the fast tensor path would not honour."""
    parser = parser or build_parser()
    return [flag for flag, attr in FAST_PATH_IGNORES if getattr(args, attr) != parser.get_default(attr)]


def _check_fast_data_flags(parser: argparse.ArgumentParser, args) -> None:
    conflicts = fast_path_conflicts(args, parser)
    if conflicts:
        parser.error(f'--fast-data augments with a padded random crop (--crop-padding) and flips (--hflip, --vflip) '
                     f'only; {", ".join(conflicts)} are honoured by timm\'s loader: add --no-fast-data')


# ---------------------------------------------------------------------------------------- up-front checks
def check_before_building(args: argparse.Namespace) -> None:
    """What can be refused before the model is built and the data decoded: the model name and family, the output
    and data directories (`ValueError` / `FileNotFoundError`, one line each)."""
    _check_model(args)
    check_data_dir(args)
    if utils.is_primary(args):  # last: it creates the (empty) output folder
        _check_output_dir(args.output or './output/train')


def _check_model(args: argparse.Namespace) -> None:
    if args.model.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        return  # the architecture is read from the config: checked when the model is built (before any data)
    arch = split_model_name_tag(args.model)[0]
    if not is_model(arch):
        close = difflib.get_close_matches(arch, list_models(), n=3, cutoff=0.75)
        hint = f'did you mean {", ".join(close)}? ' if close else ''
        raise ValueError(f'unknown model {args.model!r}: {hint}timm.list_models("*{arch[:6]}*") lists the names '
                         f'(a plugin\'s models need --device-modules PLUGIN).')
    if args.stim_mode == 'off':
        return
    try:  # a weightless skeleton on the meta device: its class is all the family check needs
        with torch.device('meta'):
            skeleton = create_model(args.model, num_classes=args.num_classes, in_chans=_in_chans(args),
                                    **args.model_kwargs)
    except Exception:  # noqa: BLE001  (whatever fails here fails again, with timm's message, in the real build)
        return
    _check_family(skeleton, args)


def _check_family(model: nn.Module, args: argparse.Namespace) -> None:
    try:
        find_stages(model)
    except TypeError as e:
        raise ValueError(f'--model {args.model} with --stim-mode {args.stim_mode}: {e} (--stim-mode off trains it '
                         f'as a plain baseline)') from None


def _check_output_dir(path: str) -> None:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f'--output {path}: {probe} is not a directory.')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f'--output {path}: {probe} is read-only (cannot create the run directory there): pass '
                         f'--output pointing at a writable folder.')
    try:  # root passes os.access everywhere; a pseudo file system (/proc, /sys) still refuses
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f'--output {path}: cannot create it ({e.strerror}): pass --output pointing at a writable '
                         f'folder.') from e


def _in_chans(args: argparse.Namespace) -> int:
    return args.input_size[0] if args.input_size else (args.in_chans or 3)


# ---------------------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """What one run holds between epochs (timm's train.py keeps these as locals of `main`).

    `model` is the unwrapped trained model (what is evaluated and checked); `task.get_trainable_module()` is what
    trains (DDP-wrapped in a distributed run). `progress` is the position a resume restores; `last_checkpoint`
    the newest file with finite weights (named by the recovery advice); `pending` the data position and RNG
    states the next checkpoint records.
    """
    args: argparse.Namespace
    device: torch.device
    task: StimulativeTrainer
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loaders: Loaders
    amp_autocast: Callable = nullcontext
    loss_scaler: Optional[NativeScaler] = None
    lr_scheduler: Any = None
    num_epochs: int = 0
    updates_per_epoch: int = 0
    eval_metric: str = 'top1'
    progress: Progress = field(default_factory=Progress)
    data_config: Dict[str, Any] = field(default_factory=dict)  # {'train': ..., 'eval': ...} resolved, as recorded
    saver: Optional[StimCheckpointSaver] = None
    output_dir: Optional[str] = None
    last_checkpoint: Optional[str] = None
    pending: Optional[Dict[str, Any]] = None
    updates_at_epoch_start: int = 0

    def checkpoint_extras(self) -> Dict[str, Any]:
        """The resume state a checkpoint adds to timm's (see `timm_stim.checkpoint`)."""
        return dict(scheduler=self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                    global_step=self.progress.num_updates, world_size=self.args.world_size,
                    stim=vars(self.task.stim), data_path=self.loaders.path, data_config=self.data_config,
                    **(self.pending or {}))


def recorded_data_config(data_config: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved timm data config as plain YAML / checkpoint values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}


def _create_model(args: argparse.Namespace, device: torch.device):
    """The model (timm's create_model and flags), on the device, with its resolved data configs: training (and BN
    re-estimation) and evaluation (`--eval-img-size`, else the training one)."""
    factory_kwargs = {}
    if args.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    model = create_model(
        args.model, pretrained=args.pretrained, in_chans=_in_chans(args), num_classes=args.num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, checkpoint_path=args.initial_checkpoint,
        **factory_kwargs, **args.model_kwargs)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    data_config, eval_config = run_data_configs(vars(args), model, _in_chans(args), verbose=utils.is_primary(args))
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)  # timm's: keeps BatchNormAct2d's activation (torch's drops it)
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')
    return model, data_config, eval_config


def _precision(args: argparse.Namespace) -> str:
    """The precision the training step runs in: float32, or the autocast dtype (the one reading of --amp flags);
    after `_amp`, `--amp-dtype auto` reads as what it chose (`args.precision`)."""
    return 'float32' if not args.amp else getattr(args, 'precision', None) or args.amp_dtype


def _amp(args: argparse.Namespace, device: torch.device):
    """timm's AMP set-up: an autocast context, and a loss scaler for float16 on CUDA. `--amp-dtype auto` chooses by
    device (`auto_precision`) and logs why; the precision is kept as `args.precision` (args.yaml records it)."""
    precision = args.amp_dtype if args.amp else 'float32'
    if precision == 'auto':
        precision, why = auto_precision(device)
        if getattr(args, 'rank', 0) == 0:
            _logger.info(f'Precision: {precision} (--amp-dtype auto: {why}).')
    args.precision = precision
    if precision == 'float32':
        return nullcontext, None
    amp_dtype = torch.bfloat16 if precision == 'bfloat16' else torch.float16
    if device.type == 'cpu' and amp_dtype == torch.bfloat16 and not native_cpu_bfloat16():
        _logger.warning(f'--amp-dtype bfloat16 on {cpu_name()}: this CPU has no bfloat16 instructions (AVX-512 BF16 '
                        f'or AMX), so autocast emulates them and trains many times slower than float32. Pass '
                        f'--no-amp, or --amp-dtype auto to choose by CPU (it changes the speed, not the recipe).')
    scaler = NativeScaler(device=device.type) if device.type == 'cuda' and amp_dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=amp_dtype), scaler


def _device_name(device: torch.device) -> str:
    """The CPU's model and ISA (`cpu_name`), or the accelerator's name."""
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name() if device.type == 'cpu' \
        else str(device)


def _create_task(args: argparse.Namespace, model: nn.Module, device: torch.device) -> StimulativeTrainer:
    """timm's classification loss inside the ST / ST++ task (refuses an unsupported family, before any data)."""
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    train_loss_fn = create_classification_loss(
        loss_type='bce' if args.bce_loss else None, smoothing=0. if mixup_active else args.smoothing,
        soft_targets=mixup_active).to(device)
    if args.stim_mode != 'off':
        _check_family(model, args)
    return StimulativeTrainer(model, criterion=train_loss_fn, stim=StimConfig.from_args(args), device=device,
                              verbose=utils.is_primary(args))


def _create_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer; without --lr, the rate scales --lr-base by the global batch (as timm's train.py)."""
    if not args.lr:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        if not args.lr_base_scale:
            args.lr_base_scale = 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'
        args.lr = args.lr_base * (ratio ** 0.5 if args.lr_base_scale == 'sqrt' else ratio)
        if utils.is_primary(args):
            _logger.info(f'Learning rate {args.lr:g} from --lr-base {args.lr_base} and global batch {global_batch}.')
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args), filter_bias_and_bn=args.filter_bias_and_bn,
                               **args.opt_kwargs)


def _prepare_model(args: argparse.Namespace, task: StimulativeTrainer, model: nn.Module, device: torch.device,
                   ckpt: Optional[Dict[str, Any]]) -> nn.Module:
    """EMA (restored from `ckpt`), per-block compile and DDP, in timm's order; returns the unwrapped model."""
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
        if ckpt is not None and ckpt.get('state_dict_ema') is not None:
            task.load_checkpoint_state(ckpt['state_dict_ema'], ckpt.get('task_state_ema'), ema=True)
    if args.torchcompile:
        n = compile_blocks(model, backend=args.torchcompile, mode=args.torchcompile_mode)
        if utils.is_primary(args):
            _logger.info(f'Compiled {n} blocks with {args.torchcompile}.')
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)
    return unwrap_model(task.get_trainable_module())


def _open_output(state: RunState, ckpt, resume_path: Optional[str]) -> None:
    """Rank 0: the run directory, its checkpoint saver (history continued on resume), args.yaml, summary.csv and
    this launch's line in precision.txt."""
    args = state.args
    if not utils.is_primary(args):
        return
    exp_name = args.experiment or '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                                            args.stim_mode, str(state.data_config['train']['input_size'][-1])])
    state.output_dir = utils.get_outdir(args.output or './output/train', exp_name)
    state.saver = StimCheckpointSaver(
        model=state.task.get_trainable_module(), optimizer=state.optimizer, args=args, amp_scaler=state.loss_scaler,
        checkpoint_dir=state.output_dir, recovery_dir=state.output_dir, decreasing=state.eval_metric == 'loss',
        max_history=args.checkpoint_hist, task=state.task, extra_state=state.checkpoint_extras)
    restore_saver(state.saver, ckpt, resume_path, state.output_dir)
    write_args_yaml(state.output_dir, args, args.argv, data_config=state.data_config)
    truncate_summary(os.path.join(state.output_dir, 'summary.csv'), state.progress.epoch)
    record_launch(state.output_dir, state.progress.epoch, state.progress.batch, _precision(args),
                  _device_name(state.device), note='--amp-dtype auto' if args.amp and args.amp_dtype == 'auto' else '')


def build_run(args: argparse.Namespace) -> RunState:
    """Compose a run from timm's pieces, checking what can be checked first; on --resume restore everything (the
    RNG states last, so that nothing consumes random numbers after them)."""
    for module in args.device_modules or []:
        importlib.import_module(module)
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Distributed training: process {args.rank} of {args.world_size}, device {args.device}.')
    check_before_building(args)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    utils.random_seed(args.seed, args.rank)

    model, data_config, eval_config = _create_model(args, device)
    resume_path = find_resume_checkpoint(args.resume) if args.resume else None
    problem = checkpoint_misfit(resume_path, model, args.model, '--resume') if resume_path else None
    if problem:  # before any data is read; a truncated file or a refused pickle raised already
        raise ValueError(problem)
    amp_autocast, loss_scaler = _amp(args, device)
    task = _create_task(args, model, device)
    conflicts = fast_path_conflicts(args) if args.fast_data is None else []
    loaders = create_train_loaders(args, data_config, device, conflicts, eval_config=eval_config)
    if utils.is_primary(args):
        _logger.info(f'Data: {loaders.path} path, {len(loaders.train)} batches/epoch of {args.batch_size} x '
                     f'{args.world_size} process(es); {_sizes_text(data_config, eval_config)}.')
    optimizer = _create_optimizer(args, model)
    ckpt = resume_checkpoint(resume_path, task, model, optimizer, loss_scaler, args) if resume_path else None
    eval_model = _prepare_model(args, task, model, device, ckpt)

    updates_per_epoch = (len(loaders.train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    eval_metric = args.eval_metric if loaders.eval is not None else 'loss'
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    state = RunState(args=args, device=device, task=task, model=eval_model, optimizer=optimizer, loaders=loaders,
                     amp_autocast=amp_autocast, loss_scaler=loss_scaler, lr_scheduler=lr_scheduler,
                     num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, eval_metric=eval_metric,
                     progress=restore_progress(ckpt, args, lr_scheduler, updates_per_epoch),
                     last_checkpoint=resume_path,
                     data_config=dict(train=recorded_data_config(data_config), eval=recorded_data_config(eval_config)))
    _open_output(state, ckpt, resume_path)
    if ckpt is not None:
        restore_rng(ckpt, args, state.progress.epoch)
    if utils.is_primary(args):
        _logger.info(f'Scheduled epochs: {num_epochs}, starting at epoch {state.progress.epoch} batch '
                     f'{state.progress.batch}; output {state.output_dir}.')
    return state


def _sizes_text(data_config: Dict[str, Any], eval_config: Dict[str, Any]) -> str:
    """'train 200x200 px (BN re-estimation too), eval 224x224 px (crop_pct 0.933: resize 240)'."""
    def hw(cfg):
        return 'x'.join(str(v) for v in cfg['input_size'][-2:])
    resize = 'x'.join(str(int(v / eval_config['crop_pct'])) for v in eval_config['input_size'][-2:])
    return (f'train {hw(data_config)} px (BN re-estimation too), eval {hw(eval_config)} px (crop_pct '
            f'{eval_config["crop_pct"]:.4g}: resize {resize}, centre crop)')


# --------------------------------------------------------------------------------------------- the loops
class _Meters:
    """Running sums of the epoch (resumable: saved in mid-epoch checkpoints)."""

    def __init__(self, state: Optional[Dict[str, float]] = None):
        self.s = dict(loss=0., loss_main=0., loss_kl=0., n=0., time=0., images=0.)
        if state:
            self.s.update(state)

    def update(self, n: int, **vals: float) -> None:
        for k, v in vals.items():
            self.s[k] += v * n
        self.s['n'] += n

    def avg(self, k: str) -> float:
        return self.s[k] / max(self.s['n'], 1)


def _fmt_td(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


def run_epoch(state: RunState, epoch: int) -> Dict[str, Any]:
    """One epoch, top to bottom: train (ST / ST++ steps), re-estimate BN of model and EMA on training images (ST,
    arXiv:2210.04153), evaluate, check the weights, record, step the schedule, save a checkpoint."""
    args = state.args
    state.loaders.train.set_epoch(epoch)
    resumed_updates = state.progress.batch // args.grad_accum_steps
    state.updates_at_epoch_start = state.progress.num_updates - resumed_updates
    train_metrics = train_one_epoch(state, epoch)
    state.progress.batch = 0
    _recalibrate_bn(state, epoch)
    _distribute_bn(state, state.model)
    eval_metrics = _evaluate_epoch(state, epoch)
    metric = (eval_metrics or train_metrics).get(state.eval_metric)
    _check_weights(state, state.model, f'after epoch {epoch}')
    state.pending = dict(loader={'epoch': epoch + 1, 'batch': 0}, rng=gather_rng_states(args))
    if state.output_dir is not None:
        lrs = [g['lr'] for g in state.optimizer.param_groups]
        utils.update_summary(epoch, train_metrics, eval_metrics, os.path.join(state.output_dir, 'summary.csv'),
                             lr=sum(lrs) / len(lrs))
    if state.lr_scheduler is not None:
        state.lr_scheduler.step(epoch + 1, metric)
    best = (None, None)
    if state.saver is not None:
        best = state.saver.save_checkpoint(epoch, metric=metric if eval_metrics else None)
        state.last_checkpoint = os.path.join(state.output_dir, 'last' + CKPT_EXT)
    state.pending = None
    return dict(epoch=epoch, train=train_metrics, validation=eval_metrics, metric=metric, best=best)


def _recalibrate_bn(state: RunState, epoch: int) -> None:
    """`--stim-bn-recalib N`: BN statistics of the model (and EMA) re-estimated with the full network on N training
    images, in the precision the model trains in."""
    args = state.args
    if not args.stim_bn_recalib or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                           for m in state.model.modules()):
        return
    per_rank = -(-args.stim_bn_recalib // args.world_size)
    with state.amp_autocast():
        seen = state.task.recalibrate_bn(recalib_batches(state.loaders.recalib, epoch), per_rank)
    if utils.is_primary(args):
        _logger.info(f'Re-estimated BN statistics{" (model and EMA)" if state.task.has_ema() else ""} on '
                     f'{seen * args.world_size} training images.')


def _distribute_bn(state: RunState, model: nn.Module) -> None:
    args = state.args
    if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
        utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')


def _evaluate_epoch(state: RunState, epoch: int) -> Optional[Dict[str, float]]:
    """Every --val-interval epochs and after the last: the model, then the EMA (its metrics are the run's)."""
    args = state.args
    last_epoch = epoch + 1 == state.num_epochs
    if state.loaders.eval is None or not ((epoch + 1) % args.val_interval == 0 or last_epoch):
        return None
    metrics = _evaluate_logged(state, state.model)
    if state.task.has_ema() and not args.model_ema_force_cpu:
        ema = unwrap_model(state.task.get_eval_model(ema=True))
        _distribute_bn(state, ema)
        metrics = _evaluate_logged(state, ema, ' (EMA)')
    return metrics


def _evaluate_logged(state: RunState, model: nn.Module, log_suffix: str = '') -> Dict[str, float]:
    args, loader = state.args, state.loaders.eval
    metrics = evaluate(model, loader, state.device, state.amp_autocast, args.channels_last, args.distributed,
                       evaluator=state.task.create_evaluator(max_samples=evaluation_sample_limit(loader)))
    if utils.is_primary(args):
        _logger.info(f'Test{log_suffix}: loss {metrics["loss"]:.4f}  Acc@1 {metrics["top1"]:.3f}  '
                     f'Acc@5 {metrics["top5"]:.3f}')
    return metrics


def train_one_epoch(state: RunState, epoch: int) -> OrderedDict:
    """One epoch from `state.progress.batch`: forward through the task, NaN check, backward, step, logs."""
    args, loader, optimizer = state.args, state.loaders.train, state.optimizer
    _switch_mixup(state, epoch)
    meters, start_batch = _Meters(state.progress.meters), state.progress.batch
    state.progress.meters = None
    accum, n_batches = args.grad_accum_steps, len(loader)
    loader.skip_to(start_batch)
    state.task.get_trainable_module().train()
    optimizer.zero_grad()
    t_update, images = time.time(), 0
    for batch_idx, (input, target) in enumerate(loader, start=start_batch):
        last_batch = batch_idx == n_batches - 1
        need_update = last_batch or (batch_idx + 1) % accum == 0
        steps_in_update = accum if batch_idx < (n_batches // accum) * accum else n_batches % accum or accum
        out, bs = _train_step(state, input, target, need_update, steps_in_update, f'epoch {epoch}, batch {batch_idx}')
        meters.update(bs, loss=out['loss'].item(), loss_main=out['loss_main'].item(),
                      loss_kl=float(out['loss_kl'].sum()) if out['loss_kl'].numel() else 0.)
        images += bs * args.world_size
        if not need_update:
            continue
        optimizer.zero_grad()
        state.progress.num_updates += 1
        state.task.update_ema(step=state.progress.num_updates)
        if state.device.type == 'cuda':
            torch.cuda.synchronize()
        now = time.time()
        dt, t_update = now - t_update, now
        _after_update(state, epoch, batch_idx, meters, images, dt, last_batch)
        images = 0
    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    return _epoch_metrics(state, meters)


def _switch_mixup(state: RunState, epoch: int) -> None:
    """--mixup-off-epoch: mixup / cutmix end at that epoch (batch-level and in timm's collate)."""
    if not state.args.mixup_off_epoch or epoch < state.args.mixup_off_epoch:
        return
    if state.loaders.mixup_fn is not None:
        state.loaders.mixup_fn.mixup_enabled = False
    if hasattr(state.loaders.train, 'mixup_enabled'):
        state.loaders.train.mixup_enabled = False


def _train_step(state: RunState, input: torch.Tensor, target: torch.Tensor, need_update: bool,
                steps_in_update: int, where: str):
    """Forward through the task, stop on a non-finite loss, backward (gradients accumulate until `need_update`),
    clip and step. Returns the task's output dict and the batch size."""
    args, task, optimizer, loss_scaler = state.args, state.task, state.optimizer, state.loss_scaler
    if not args.prefetcher or state.loaders.path == 'tensor':
        input, target = input.to(state.device), target.to(state.device)
    if state.loaders.mixup_fn is not None:
        input, target = state.loaders.mixup_fn(input, target)
    if args.channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    with task.no_sync() if args.distributed and not need_update else nullcontext():
        with state.amp_autocast():
            out = task(input, target)
        loss = out['loss']
        _check_finite(state, loss, where)
        loss_b = loss / steps_in_update if steps_in_update > 1 else loss
        clip_params = partial(task.get_clip_parameters, exclude_head='agc' in args.clip_mode)
        if loss_scaler is not None:
            loss_scaler(loss_b, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                        parameters=clip_params(), need_update=need_update)
        else:
            loss_b.backward()
            if need_update:
                if args.clip_grad is not None:
                    utils.dispatch_clip_grad(clip_params(), value=args.clip_grad, mode=args.clip_mode)
                optimizer.step()
    return out, input.shape[0]


def _after_update(state: RunState, epoch: int, batch_idx: int, meters: _Meters, images: int, dt: float,
                  last_batch: bool) -> None:
    """Per update: time and images, the schedule's per-update step, weight check and log every --log-interval,
    a recovery checkpoint every --recovery-interval updates."""
    args = state.args
    meters.s['time'] += dt
    meters.s['images'] += images
    update_idx = batch_idx // args.grad_accum_steps
    if state.lr_scheduler is not None:
        state.lr_scheduler.step_update(num_updates=state.progress.num_updates, metric=meters.avg('loss'))
    if update_idx % args.log_interval == 0 or last_batch:
        _check_weights(state, state.task.get_trainable_module(), f'at epoch {epoch}, update {update_idx}')
        _log_progress(state, epoch, update_idx, meters, images / dt)
    if args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0 and not last_batch:
        _save_recovery(state, epoch, batch_idx + 1, update_idx, meters)


def _epoch_metrics(state: RunState, meters: _Meters) -> OrderedDict:
    """The epoch's mean losses (averaged over ranks) and its throughput."""
    metrics = OrderedDict(loss=meters.avg('loss'), loss_main=meters.avg('loss_main'), loss_kl=meters.avg('loss_kl'))
    if state.args.distributed:
        t = torch.tensor(list(metrics.values()), device=state.device, dtype=torch.float64)
        metrics = OrderedDict(zip(metrics, utils.reduce_tensor(t, state.args.world_size).tolist()))
    metrics['img_per_s'] = meters.s['images'] / max(meters.s['time'], 1e-9)
    return metrics


def _check_finite(state: RunState, loss: torch.Tensor, where: str) -> None:
    """Stop before the update when the loss is NaN / inf (every rank together)."""
    if any_rank(~torch.isfinite(loss.detach()).all(), state.args.distributed):
        raise NonFiniteLossError(recovery_advice(f'non-finite loss ({loss.item()}) at {where}: stopping before the '
                                                 f'update', state.last_checkpoint))


def _check_weights(state: RunState, model: nn.Module, where: str) -> None:
    """Stop when a parameter or BN buffer is NaN / inf (KL- keeps the loss finite while weights blow up), before
    anything is written: every checkpoint on disk has finite weights."""
    bad = nonfinite_tensors(model)
    if any_rank(torch.tensor(bool(bad)), state.args.distributed):
        raise NonFiniteLossError(recovery_advice(f'non-finite weights {bad[:3]} {where}: stopping without '
                                                 f'writing a checkpoint', state.last_checkpoint))


def _log_progress(state: RunState, epoch: int, update_idx: int, meters: _Meters, rate: float) -> None:
    if not utils.is_primary(state.args):
        return
    per_epoch = state.updates_per_epoch
    lrs = [g['lr'] for g in state.optimizer.param_groups]
    sec_per_update = meters.s['time'] / max(state.progress.num_updates - state.updates_at_epoch_start, 1)
    left_epoch = (per_epoch - update_idx - 1) * sec_per_update
    left_total = left_epoch + (state.num_epochs - epoch - 1) * per_epoch * sec_per_update
    kl = f'  KL: {meters.avg("loss_kl"):.4f}' if state.args.stim_mode != 'off' else ''
    _logger.info(
        f'Train: {epoch} [{update_idx:>4d}/{per_epoch} ({100. * (update_idx + 1) / per_epoch:>3.0f}%)]  '
        f'Loss: {meters.avg("loss"):#.4g}  main: {meters.avg("loss_main"):#.4g}{kl}  '
        f'{rate:>7.1f} img/s  LR: {sum(lrs) / len(lrs):.3e}  '
        f'ETA: {_fmt_td(left_epoch)} epoch, {_fmt_td(left_total)} run')


def _save_recovery(state: RunState, epoch: int, next_batch: int, update_idx: int, meters: _Meters) -> None:
    _check_weights(state, state.model, f'at epoch {epoch}, update {update_idx}')
    state.pending = dict(loader={'epoch': epoch, 'batch': next_batch}, meters=dict(meters.s),
                         rng=gather_rng_states(state.args))
    if state.saver is not None:
        state.saver.save_recovery(epoch, batch_idx=update_idx)
        state.last_checkpoint = state.saver.curr_recovery_file
        _logger.info(f'Saved recovery checkpoint {state.last_checkpoint}')
    state.pending = None


# -------------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    if not logging.getLogger().handlers:  # keep the caller's logging (tests, notebooks)
        utils.setup_default_logging()
    args = _parse_args(argv)
    try:
        return _run(args)
    except NonFiniteLossError as e:
        _logger.error(str(e))
        raise SystemExit(3)
    except (FileNotFoundError, ValueError, CheckpointWriteError) as e:  # bad data / settings / disk: one line
        if os.environ.get('TIMM_STIM_TRACEBACK'):
            raise
        print(f'timm-stim-train: error: {e} (TIMM_STIM_TRACEBACK=1 shows the traceback)', file=sys.stderr)
        raise SystemExit(2)
    finally:
        if getattr(args, 'distributed', False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace) -> Dict[str, Any]:
    state = build_run(args)
    start_epoch, results, best = state.progress.epoch, [], (None, None)
    t_run = time.time()
    for epoch in range(start_epoch, state.num_epochs):
        r = run_epoch(state, epoch)
        best = r['best']
        results.append({'epoch': epoch, 'train': r['train'], 'validation': r['validation']})
        if utils.is_primary(args):
            per_epoch = (time.time() - t_run) / (epoch + 1 - start_epoch)
            val = f', eval {state.eval_metric} {r["metric"]:.4g}' if r['validation'] else ''
            best_txt = f' (best {best[0]:.4g} @ {best[1]})' if best[0] is not None else ''
            _logger.info(f'Epoch {epoch} done: train loss {r["train"]["loss"]:.4g}, '
                         f'{r["train"]["img_per_s"]:.0f} img/s{val}{best_txt}; '
                         f'ETA {_fmt_td(per_epoch * (state.num_epochs - epoch - 1))}')
    return _finish(state, results, *best)


def _finish(state: RunState, results: List[Dict[str, Any]], best_metric, best_epoch) -> Dict[str, Any]:
    """The curves PNG and the best metric; the summary dict `main` returns."""
    output_dir = state.output_dir
    if output_dir is not None:
        if not state.args.no_plot and os.path.exists(os.path.join(output_dir, 'summary.csv')):
            png = plot_curves(os.path.join(output_dir, 'summary.csv'), os.path.join(output_dir, 'curves.png'))
            if png:
                _logger.info(f'Training curves: {png}')
        if best_metric is not None:
            _logger.info(f'*** Best {state.eval_metric}: {best_metric} (epoch {best_epoch})')
    return {'output_dir': output_dir, 'results': results, 'best_metric': best_metric, 'best_epoch': best_epoch,
            'data_config': state.data_config}


def cli() -> None:
    """Console-script entry point (`timm-stim-train`): run `main`, exit 0 (its returned dict is for Python callers)."""
    main()


if __name__ == '__main__':
    cli()
