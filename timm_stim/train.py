#!/usr/bin/env python3
"""`timm-stim-train`: timm's train.py flags, with the training step of `StimulativeTrainer` (ST / ST++).

    timm-stim-train --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim --stim-mode stpp ...
    torchrun --nproc_per_node=2 -m timm_stim.train ...          # DDP (gloo on CPU, nccl on GPU)

Flags keep the names and meanings of timm's train.py (model, data, optimizer, schedule, augmentation, EMA, AMP,
checkpointing); `--stim-*` flags set the ST / ST++ knobs and `--stim-mode off` is the plain baseline. Built from
timm's own pieces: create_dataset / create_loader (or the in-memory tensor path of `timm_stim.data` for small
images), Mixup, create_classification_loss, create_optimizer_v2, create_scheduler_v2, ModelEmaV3 (task.setup_ema),
CheckpointSaver, update_summary, init_distributed_device / distribute_bn / reduce_tensor.

Resume without loss: a checkpoint at every epoch end and every `--recovery-interval` updates, written atomically;
it holds model, optimizer, scheduler, EMA, AMP scaler, the sub-network sampler (task state), every rank's RNG
states, the data position (epoch, batch) and the running epoch meters, so `--resume` continues a killed run to
bit-identical weights (CPU, seeded). A non-finite loss stops the run before it touches the weights.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import logging
import os
import random
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml

from timm import utils
from timm.data import Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm
from timm.loss import create_classification_loss
from timm.models import create_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import evaluation_sample_limit
from timm.utils import CheckpointSaver, NativeScaler
from timm.utils.model import unwrap_model

import timm_stim  # noqa: F401  (registers the *_stim models)
from .data import (TensorLoader, TransformSubset, dataset_targets, fit_channels, fits_fast_path, load_image_tensors,
                   subset_indices)
from .depth import compile_blocks
from .trainer import StimConfig, StimulativeTrainer, add_stim_args
from .version import source_commit

__all__ = ['build_parser', 'main', 'NonFiniteLossError', 'plot_curves', 'compile_blocks', 'find_resume_checkpoint']

_logger = logging.getLogger('train')

CKPT_EXT = '.pth.tar'


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run stops before the step touches the weights."""


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


def build_parser() -> argparse.ArgumentParser:
    """timm train.py flags (same names and meanings) plus the --stim-* knobs and the fast-data / resume extras."""
    parser = argparse.ArgumentParser(
        prog='timm-stim-train', description='Train a timm model with Stimulative Training (ST / ST++).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-c', '--config', default='', metavar='FILE',
                        help='YAML file whose keys override the defaults below (as in timm)')
    parser.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (deprecated, use --data-dir)')

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
    g.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=_positive_int, default=None,
                   metavar='N', help='cap on loader batches per epoch')
    g.add_argument('--fast-data', action=argparse.BooleanOptionalAction, default=None,
                   help='[timm-stim] in-memory uint8 tensor path with batch augmentation (crop with padding, flip); '
                        'default: on for small images (<= 64 px) without --aa / --reprob')
    g.add_argument('--data-cache-dir', default=None, metavar='DIR',
                   help='[timm-stim] decoded-image cache (default $TIMM_STIM_CACHE or ~/.cache/timm_stim)')
    g.add_argument('--crop-padding', type=_non_negative_int, default=4, metavar='PX',
                   help='[timm-stim] fast path: zero padding of the random crop')

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
    g.add_argument('--crop-pct', default=None, type=float, metavar='N')
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

    g = parser.add_argument_group('Device parameters')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action='store_true')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    g.add_argument('--no-ddp-bb', action='store_true', help='no DDP buffer broadcast')
    g.add_argument('--local_rank', '--local-rank', default=0, type=int)
    g.add_argument('--device-modules', default=None, type=str, nargs='+')

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

    g = parser.add_argument_group('Batch norm parameters')
    g.add_argument('--bn-momentum', type=float, default=None)
    g.add_argument('--bn-eps', type=float, default=None)
    g.add_argument('--sync-bn', action='store_true')
    g.add_argument('--dist-bn', default='reduce', choices=('broadcast', 'reduce', ''))

    g = parser.add_argument_group('Model exponential moving average parameters')
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-force-cpu', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true')

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

    g = add_stim_args(parser)  # the StimConfig knobs, shared with the upstream launcher
    g.add_argument('--stim-bn-recalib', type=_non_negative_int, default=2000, metavar='N',
                   help='re-estimate BN (model and EMA) with the full network on N training images after each '
                        'epoch, for every mode including the baseline (as the released code); 0 = off')
    g.add_argument('--stim-bn-recalib-aug', action=argparse.BooleanOptionalAction, default=True,
                   help='re-estimate BN on training-augmented images at the training resolution (as released); '
                        '--no-stim-bn-recalib-aug uses un-augmented training images')
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
    if args.resume and args.initial_checkpoint:
        parser.error('--resume and --initial-checkpoint are exclusive')
    if args.stim_mode != 'off' and args.grad_checkpointing:
        parser.error('--grad-checkpointing bypasses block skipping: use it only with --stim-mode off')
    if args.stim_mode == 'off' and args.stim_subnets:
        parser.error(f'--stim-subnets {args.stim_subnets} needs sub-networks: use --stim-mode st or stpp (off is the '
                     f'baseline, no sub-network)')
    if args.fast_data:
        _check_fast_data_flags(parser, args)
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        parser.error('mixup / cutmix need an even --batch-size')
    args.prefetcher = not args.no_prefetcher
    return args


# timm loader flags the fast path does not implement: (flag, attribute); it crops with padding and flips instead
FAST_PATH_IGNORES = (('--scale', 'scale'), ('--ratio', 'ratio'), ('--color-jitter', 'color_jitter'),
                     ('--train-interpolation', 'train_interpolation'), ('--aa', 'aa'), ('--reprob', 'reprob'))


def fast_path_conflicts(args, parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
    """timm augmentation flags set away from their defaults, which the fast tensor path would not honour."""
    parser = parser or build_parser()
    return [flag for flag, attr in FAST_PATH_IGNORES if getattr(args, attr) != parser.get_default(attr)]


def _check_fast_data_flags(parser: argparse.ArgumentParser, args) -> None:
    conflicts = fast_path_conflicts(args, parser)
    if conflicts:
        parser.error(f'--fast-data augments with a padded random crop (--crop-padding) and flips (--hflip, --vflip) '
                     f'only; {", ".join(conflicts)} are honoured by timm\'s loader: add --no-fast-data')


# ------------------------------------------------------------------------------------------------- pieces
def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def _gather_rng_states(args) -> List[Dict[str, Any]]:
    """Every rank's RNG states (collective in DDP), so that a resumed DDP run draws the same random numbers."""
    mine = _rng_state()
    if not args.distributed:
        return [mine]
    out: List[Any] = [None] * args.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


class StimCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver (history, best, recovery files) writing the full resume state, fsync'ed.

    timm's saver already writes to a temporary file and `os.replace`s it; this subclass adds the scheduler,
    RNG, data position, step and epoch meters (`extra_state()`), and flushes the file to disk before the rename.
    """

    def __init__(self, *args, extra_state=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state or (lambda: {})

    def _save(self, save_path, epoch, metric=None):
        state = {'epoch': epoch, 'arch': getattr(self.args, 'model', type(self.model).__name__.lower()),
                 'optimizer': self.optimizer.state_dict(), 'version': 2, 'args': self.args}
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
        state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        if metric is not None:
            state['metric'] = metric
        state['saver'] = self.state_dict(epoch, metric)
        state.update(self.extra_state())
        with open(save_path, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def _load_checkpoint(path: str) -> Dict[str, Any]:
    # our own checkpoints hold argparse.Namespace; everything else is tensors and plain containers
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def find_resume_checkpoint(path: str) -> str:
    """A checkpoint file as given, or for a run directory its newest resumable checkpoint (highest step)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f'--resume {path}: no such checkpoint file or run directory.')
    candidates = [os.path.join(path, f) for f in os.listdir(path)
                  if f.endswith(CKPT_EXT) and (f.startswith('recovery-') or f == 'last' + CKPT_EXT)]
    best, best_step = None, -1
    for c in candidates:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                meta = torch.load(c, map_location='cpu', weights_only=True, mmap=True)
        except Exception as e:  # a half-written file never replaces a good one, but be safe
            _logger.warning(f'skipping unreadable checkpoint {c}: {e}')
            continue
        step = int(meta.get('global_step', -1))
        if step > best_step:
            best, best_step = c, step
    if best is None:
        raise FileNotFoundError(f'--resume {path}: no last{CKPT_EXT} or recovery-*{CKPT_EXT} checkpoint in it.')
    return best


class _SeededLoader:
    """timm create_loader output with per-epoch seeding and batch skipping, for exact mid-epoch resume.

    The shuffle order and worker seeds come from a generator seeded by (seed, epoch), not from the global RNG;
    a resumed epoch re-reads and discards the batches it already trained on.
    """

    def __init__(self, loader, seed: int, num_batches: Optional[int] = None):
        self.loader, self.seed, self.epoch, self.start_batch = loader, seed, 0, 0
        self.num_batches = min(len(loader), num_batches) if num_batches else len(loader)
        self.dataset = getattr(loader, 'dataset', None)

    def __len__(self) -> int:
        return self.num_batches

    def __getattr__(self, name):
        return getattr(self.__dict__['loader'], name)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        dl = getattr(self.loader, 'loader', self.loader)
        for obj in (dl, getattr(dl, 'sampler', None), getattr(dl, 'batch_sampler', None)):
            if obj is not None and hasattr(obj, 'set_epoch'):
                obj.set_epoch(epoch)
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        if hasattr(dl, 'generator'):
            dl.generator = g
        if getattr(dl, 'sampler', None) is not None and hasattr(dl.sampler, 'generator'):
            dl.sampler.generator = g

    def skip_to(self, batch: int) -> None:
        self.start_batch = batch

    def __iter__(self):
        start, self.start_batch = self.start_batch, 0
        for i, batch in enumerate(self.loader):
            if i >= self.num_batches:
                break
            if i >= start:
                yield batch


def _build_data(args, data_config, device, model_dtype):
    """Train / eval / BN-recalibration loaders: the in-memory tensor path for small images, else timm's loader."""
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if args.data_dir is None and not args.dataset.lower().endswith(('fashion-mnist', 'fashion_mnist', 'fmnist')):
        raise FileNotFoundError('no data directory: pass --data-dir DIR (e.g. --data-dir ../shared/data/cifar10).')
    if args.data_dir is not None and not args.dataset_download and not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f'data directory {args.data_dir} does not exist: pass --data-dir pointing at a folder '
                                f'with train/ and val/ class folders (or --dataset torch/cifar10 --dataset-download).')
    use_fast = args.fast_data
    train_data = None
    if use_fast is None:
        conflicts = fast_path_conflicts(args)
        use_fast = not conflicts
        if conflicts:
            _logger.info(f'{", ".join(conflicts)} set: using timm\'s loader (the fast path does not implement them).')
    if use_fast:
        try:
            train_data = load_image_tensors(args.dataset, args.data_dir, args.train_split, args.train_subset,
                                            args.dataset_download, args.data_cache_dir, args.class_map)
            if not fits_fast_path(train_data):
                if args.fast_data:
                    raise ValueError(f'images of {tuple(train_data.images.shape[-2:])} px are too large for '
                                     f'--fast-data (<= 64 px); use --no-fast-data.')
                use_fast, train_data = False, None
        except (TypeError, ValueError) as e:
            if args.fast_data:
                raise
            _logger.info(f'fast data path unavailable ({e}); using timm loader')
            use_fast, train_data = False, None
    common = dict(mean=data_config['mean'], std=data_config['std'], input_size=data_config['input_size'],
                  seed=args.seed, rank=args.rank, world_size=args.world_size, device=device,
                  dtype=model_dtype or torch.float32, channels_last=args.channels_last)
    eval_bs = args.validation_batch_size or args.batch_size
    recalib_aug = args.stim_bn_recalib_aug
    if use_fast:
        aug = dict(padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip, no_aug=args.no_aug)
        loader_train = TensorLoader(train_data, args.batch_size, True, num_batches=args.train_batches_per_epoch,
                                    **aug, **common)
        loader_eval = None
        if args.val_split:
            val_data = load_image_tensors(args.dataset, args.data_dir, args.val_split, args.val_subset,
                                          args.dataset_download, args.data_cache_dir, args.class_map)
            loader_eval = TensorLoader(val_data, eval_bs, False, crop_pct=data_config['crop_pct'], **common)
        # BN re-estimation: training images in their own seeded order, augmented as for training (as released)
        recalib = TensorLoader(train_data, args.batch_size, recalib_aug, shuffle=True,
                               **(aug if recalib_aug else {}), **{**common, 'seed': args.seed + 1})
        mixup_fn = Mixup(**_mixup_args(args)) if mixup_active else None
        return loader_train, loader_eval, recalib, mixup_fn, 'tensor'

    # timm loader path
    ds_kwargs = dict(class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size)
    ds_train = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
                              seed=args.seed, **ds_kwargs)
    ds_recalib = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=recalib_aug,
                                **ds_kwargs)
    idx = subset_indices(dataset_targets(ds_train), args.train_subset) if args.train_subset else \
        list(range(len(ds_train)))
    if args.train_subset:
        ds_train = TransformSubset(ds_train, idx)
    # BN re-estimation reads training images in a seeded random order (not class-sorted folder order)
    shuffled = torch.randperm(len(idx), generator=torch.Generator().manual_seed(args.seed)).tolist()
    ds_recalib = TransformSubset(ds_recalib, [idx[i] for i in shuffled])
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    loader_common = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
                         pin_memory=args.pin_mem, img_dtype=model_dtype or torch.float32, device=device,
                         distributed=args.distributed, use_prefetcher=args.prefetcher, num_workers=args.workers,
                         persistent_workers=False)
    mixup_fn, collate_fn = None, None
    if mixup_active:
        if args.prefetcher:
            from timm.data import FastCollateMixup
            collate_fn = FastCollateMixup(**_mixup_args(args))
        else:
            mixup_fn = Mixup(**_mixup_args(args))
    train_aug = dict(
        batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=train_interpolation)
    loader_train = create_loader(ds_train, collate_fn=collate_fn, **train_aug, **loader_common)
    if len(loader_train) == 0:
        raise ValueError(f'{len(ds_train)} training images are fewer than one batch of {args.batch_size} '
                         f'(timm drops the incomplete last batch): lower --batch-size.')
    eval_kwargs = dict(batch_size=eval_bs, is_training=False, interpolation=data_config['interpolation'],
                       crop_pct=data_config['crop_pct'], **loader_common)
    loader_eval = None
    if args.val_split:
        ds_eval = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                                 **ds_kwargs)
        if args.val_subset:
            ds_eval = TransformSubset(ds_eval, subset_indices(dataset_targets(ds_eval), args.val_subset))
        loader_eval = create_loader(ds_eval, **eval_kwargs)
    if recalib_aug:
        recalib = _SeededLoader(create_loader(ds_recalib, **train_aug, **loader_common), args.seed + 1)
    else:
        recalib = create_loader(ds_recalib, **eval_kwargs)
    return _SeededLoader(loader_train, args.seed, args.train_batches_per_epoch), loader_eval, recalib, mixup_fn, 'timm'


def _mixup_args(args) -> Dict[str, Any]:
    return dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing, num_classes=args.num_classes)


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


def train_one_epoch(epoch: int, task: StimulativeTrainer, loader, optimizer, args, ctx: Dict[str, Any]) -> OrderedDict:
    """One epoch (from `ctx['start_batch']`): forward through the task, NaN check, backward, step, logs."""
    device, amp_autocast, loss_scaler, mixup_fn = ctx['device'], ctx['amp_autocast'], ctx['loss_scaler'], ctx['mixup_fn']
    lr_scheduler = ctx['lr_scheduler']
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if mixup_fn is not None:
            mixup_fn.mixup_enabled = False
        if hasattr(loader, 'mixup_enabled'):
            loader.mixup_enabled = False
    meters = _Meters(ctx.pop('meters', None))
    accum = args.grad_accum_steps
    n_batches = len(loader)
    updates_per_epoch = ctx['updates_per_epoch']
    start_batch = ctx.pop('start_batch', 0)
    loader.skip_to(start_batch)
    task.get_trainable_module().train()
    optimizer.zero_grad()
    t_update = time.time()
    images_since = 0
    for batch_idx, (input, target) in enumerate(loader, start=start_batch):
        last_batch = batch_idx == n_batches - 1
        need_update = last_batch or (batch_idx + 1) % accum == 0
        steps_in_update = accum if batch_idx < (n_batches // accum) * accum else n_batches % accum or accum
        if not args.prefetcher or ctx['data_path'] == 'tensor':
            input, target = input.to(device), target.to(device)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        sync = ctx['has_no_sync'] and not need_update
        with task.no_sync() if sync else nullcontext():
            with amp_autocast():
                out = task(input, target)
            loss = out['loss']
            _check_finite(loss, epoch, batch_idx, args, ctx)
            loss_b = loss / steps_in_update if steps_in_update > 1 else loss
            if loss_scaler is not None:
                loss_scaler(loss_b, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=task.get_clip_parameters(exclude_head='agc' in args.clip_mode),
                            need_update=need_update)
            else:
                loss_b.backward()
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(task.get_clip_parameters(exclude_head='agc' in args.clip_mode),
                                                 value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        bs = input.shape[0]
        meters.update(bs, loss=loss.item(), loss_main=out['loss_main'].item(),
                      loss_kl=float(out['loss_kl'].sum()) if out['loss_kl'].numel() else 0.)
        images_since += bs * args.world_size
        if not need_update:
            continue
        optimizer.zero_grad()
        ctx['num_updates'] += 1
        task.update_ema(step=ctx['num_updates'])
        if device.type == 'cuda':
            torch.cuda.synchronize()
        now = time.time()
        dt, t_update = now - t_update, now
        meters.s['time'] += dt
        meters.s['images'] += images_since
        update_idx = batch_idx // accum
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=ctx['num_updates'], metric=meters.avg('loss'))
        if update_idx % args.log_interval == 0 or last_batch:
            _check_weights(task.get_trainable_module(), f'at epoch {epoch}, update {update_idx}', args, ctx)
            _log_progress(epoch, update_idx, updates_per_epoch, meters, images_since / dt, optimizer, args, ctx)
        images_since = 0
        if args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0 and not last_batch:
            _save_recovery(epoch, batch_idx + 1, update_idx, meters, ctx, args)
    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    metrics = OrderedDict(loss=meters.avg('loss'), loss_main=meters.avg('loss_main'), loss_kl=meters.avg('loss_kl'))
    if args.distributed:
        t = torch.tensor(list(metrics.values()), device=device, dtype=torch.float64)
        metrics = OrderedDict(zip(metrics, utils.reduce_tensor(t, args.world_size).tolist()))
    metrics['img_per_s'] = meters.s['images'] / max(meters.s['time'], 1e-9)
    return metrics


def _check_finite(loss: torch.Tensor, epoch: int, batch_idx: int, args, ctx) -> None:
    """Stop before the update when the loss is NaN / inf (every rank together)."""
    if _any_rank(~torch.isfinite(loss.detach()).all(), args):
        raise NonFiniteLossError(_recovery_advice(f'non-finite loss ({loss.item()}) at epoch {epoch}, batch '
                                                  f'{batch_idx}: stopping before the update', ctx))


def _check_weights(model: nn.Module, where: str, args, ctx) -> None:
    """Stop when a parameter or BN buffer is NaN / inf (KL- keeps the loss finite while weights blow up), before
    anything is written: every checkpoint on disk has finite weights."""
    bad = nonfinite_tensors(model)
    if _any_rank(torch.tensor(bool(bad)), args):
        raise NonFiniteLossError(_recovery_advice(f'non-finite weights {bad[:3]} {where}: stopping without '
                                                  f'writing a checkpoint', ctx))


def nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of the floating-point parameters and buffers (BN running statistics) holding NaN or inf."""
    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()  # one host sync
    return [n for (n, _), good in zip(named, ok) if not good]


def _any_rank(flag: torch.Tensor, args) -> bool:
    flag = flag.reshape(1).float()
    if args.distributed:
        torch.distributed.all_reduce(flag)
    return bool(flag.item() > 0)


def _recovery_advice(what: str, ctx) -> str:
    last = ctx.get('last_checkpoint')
    if not last:
        return (f'{what}. No checkpoint was written yet: restart with a lower --lr (or --clip-grad 1.0, '
                f'--warmup-epochs 1).')
    return (f'{what}. Last good checkpoint (finite weights): {last}. To go on from it, rerun the same command with '
            f'--resume {last} and a lower --lr (or --clip-grad 1.0, or more --warmup-epochs): on --resume, a changed '
            f'--lr or schedule flag rebuilds the schedule from the new values at the resumed step.')


def _log_progress(epoch, update_idx, updates_per_epoch, meters, rate, optimizer, args, ctx) -> None:
    if not utils.is_primary(args):
        return
    lrs = [g['lr'] for g in optimizer.param_groups]
    sec_per_update = meters.s['time'] / max(ctx['num_updates'] - ctx['updates_at_epoch_start'], 1)
    left_epoch = (updates_per_epoch - update_idx - 1) * sec_per_update
    left_total = left_epoch + (ctx['num_epochs'] - epoch - 1) * updates_per_epoch * sec_per_update
    kl = f'  KL: {meters.avg("loss_kl"):.4f}' if args.stim_mode != 'off' else ''
    _logger.info(
        f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} ({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
        f'Loss: {meters.avg("loss"):#.4g}  main: {meters.avg("loss_main"):#.4g}{kl}  '
        f'{rate:>7.1f} img/s  LR: {sum(lrs) / len(lrs):.3e}  '
        f'ETA: {_fmt_td(left_epoch)} epoch, {_fmt_td(left_total)} run')


def _save_recovery(epoch, next_batch, update_idx, meters, ctx, args) -> None:
    _check_weights(ctx['model'], f'at epoch {epoch}, update {update_idx}', args, ctx)
    ctx['pending_extra'] = dict(loader={'epoch': epoch, 'batch': next_batch}, meters=dict(meters.s),
                                rng=_gather_rng_states(args))
    if ctx['saver'] is not None:
        ctx['saver'].save_recovery(epoch, batch_idx=update_idx)
        ctx['last_checkpoint'] = ctx['saver'].curr_recovery_file
        _logger.info(f'Saved recovery checkpoint {ctx["last_checkpoint"]}')
    ctx['pending_extra'] = None


@torch.no_grad()
def evaluate(model: nn.Module, loader, task, args, device, amp_autocast, log_suffix: str = '') -> OrderedDict:
    """Top-1 / top-5 / loss with timm's ClassificationEvaluator (exact sums across ranks)."""
    model.eval()
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    for input, target in loader:
        input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        evaluator.update(output, target)
    metrics = evaluator.compute(distributed=args.distributed)
    if utils.is_primary(args):
        _logger.info(f'Test{log_suffix}: loss {metrics["loss"]:.4f}  Acc@1 {metrics["top1"]:.3f}  '
                     f'Acc@5 {metrics["top5"]:.3f}')
    return metrics


# ------------------------------------------------------------------------------------------------ outputs
def plot_curves(summary_csv: str, out_png: str) -> Optional[str]:
    """PNG of loss (train total / main / KL, eval) and eval accuracy per epoch, from timm's summary.csv."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning('matplotlib is not installed: no training curves (pip install matplotlib).')
        return None
    with open(summary_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(r['epoch']) for r in rows]

    def col(name):
        return [float(r[name]) for r in rows] if name in rows[0] and rows[0][name] not in ('', None) else None

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (('train_loss', '-'), ('train_loss_main', '--'), ('train_loss_kl', ':'), ('eval_loss', '-')):
        v = col(name)
        if v is not None:
            ax1.plot(epochs, v, style, marker='o', ms=3, label=name)
    ax1.set_xlabel('epoch'), ax1.set_ylabel('loss'), ax1.legend(), ax1.grid(alpha=.3)
    for name in ('eval_top1', 'eval_top5'):
        v = col(name)
        if v is not None:
            ax2.plot(epochs, v, marker='o', ms=3, label=name)
    ax2.set_xlabel('epoch'), ax2.set_ylabel('accuracy (%)'), ax2.grid(alpha=.3)
    if ax2.lines:
        ax2.legend()
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(summary_csv))))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _truncate_summary(path: str, start_epoch: int) -> None:
    """On resume, drop summary rows of epochs that will be trained again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


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
    except (FileNotFoundError, ValueError) as e:  # bad data / checkpoint / settings: a message, not a traceback
        if os.environ.get('TIMM_STIM_TRACEBACK'):
            raise
        print(f'timm-stim-train: error: {e} (TIMM_STIM_TRACEBACK=1 shows the traceback)', file=sys.stderr)
        raise SystemExit(2)
    finally:
        if getattr(args, 'distributed', False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args) -> Dict[str, Any]:
    for module in args.device_modules or []:
        importlib.import_module(module)
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Distributed training: process {args.rank} of {args.world_size}, device {args.device}.')
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    utils.random_seed(args.seed, args.rank)

    in_chans = args.input_size[0] if args.input_size else (args.in_chans or 3)
    factory_kwargs = {}
    if args.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    model = create_model(
        args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, checkpoint_path=args.initial_checkpoint,
        **factory_kwargs, **args.model_kwargs)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    data_config = fit_channels(resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args)), in_chans)
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)  # timm's: keeps BatchNormAct2d's activation (torch's drops it)
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')

    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == 'cuda' and amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)

    loader_train, loader_eval, loader_recalib, mixup_fn, data_path = _build_data(args, data_config, device, None)
    if utils.is_primary(args):
        _logger.info(f'Data: {data_path} path, {len(loader_train)} batches/epoch of {args.batch_size} x '
                     f'{args.world_size} process(es).')

    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    train_loss_fn = create_classification_loss(
        loss_type='bce' if args.bce_loss else None, smoothing=0. if mixup_active else args.smoothing,
        soft_targets=mixup_active).to(device)
    task = StimulativeTrainer(model, criterion=train_loss_fn, stim=StimConfig.from_args(args), device=device,
                              verbose=utils.is_primary(args))

    if not args.lr:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        if not args.lr_base_scale:
            args.lr_base_scale = 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'
        args.lr = args.lr_base * (ratio ** 0.5 if args.lr_base_scale == 'sqrt' else ratio)
        if utils.is_primary(args):
            _logger.info(f'Learning rate {args.lr:g} from --lr-base {args.lr_base} and global batch {global_batch}.')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), filter_bias_and_bn=args.filter_bias_and_bn,
                                    **args.opt_kwargs)

    ckpt, resume_path = None, None
    if args.resume:
        resume_path = find_resume_checkpoint(args.resume)
        ckpt = _load_checkpoint(resume_path)
        task.load_checkpoint_state(ckpt['state_dict'], ckpt.get('task_state'))
        bad = nonfinite_tensors(model)
        if bad:
            raise NonFiniteLossError(f'--resume {resume_path}: the checkpoint holds non-finite weights ({bad[:3]}); '
                                     f'resume an earlier checkpoint of that run.')
        if not args.no_resume_opt:
            optimizer.load_state_dict(ckpt['optimizer'])
            if _schedule_changed(ckpt.get('args'), args):  # the new --lr / schedule takes effect from here
                for group in optimizer.param_groups:
                    group['lr'] = group['initial_lr'] = args.lr
            if loss_scaler is not None and loss_scaler.state_dict_key in ckpt:
                loss_scaler.load_state_dict(ckpt[loss_scaler.state_dict_key])
        if utils.is_primary(args):
            _logger.info(f'Resumed model / optimizer / sampler from {resume_path} (step {ckpt.get("global_step")}).')

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
    eval_model = unwrap_model(task.get_trainable_module())

    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    decreasing = eval_metric == 'loss'
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing), updates_per_epoch=updates_per_epoch)

    start_epoch, start_batch, num_updates, meters_state = 0, 0, 0, None
    if ckpt is not None:
        position = ckpt.get('loader') or {'epoch': ckpt['epoch'] + 1, 'batch': 0}
        start_epoch, start_batch = int(position['epoch']), int(position['batch'])
        num_updates = int(ckpt.get('global_step', start_epoch * updates_per_epoch))
        meters_state = ckpt.get('meters') if start_batch else None
        if _schedule_changed(ckpt.get('args'), args):
            if utils.is_primary(args):
                _logger.info(f'Schedule flags differ from the checkpoint\'s ({_schedule_diff(ckpt.get("args"), args)}): '
                             f'the schedule is rebuilt from the new values and continues at step {num_updates}.')
        elif ckpt.get('scheduler') is not None and lr_scheduler is not None:
            lr_scheduler.load_state_dict(ckpt['scheduler'])
    if args.start_epoch is not None:
        start_epoch, start_batch = args.start_epoch, 0
        num_updates = start_epoch * updates_per_epoch
    if lr_scheduler is not None and (start_epoch > 0 or start_batch > 0):
        lr_scheduler.step(start_epoch)
        if not lr_scheduler.t_in_epochs:
            lr_scheduler.step_update(num_updates)

    output_dir, saver = None, None
    ctx: Dict[str, Any] = dict(device=device, amp_autocast=amp_autocast, loss_scaler=loss_scaler,
                               mixup_fn=mixup_fn, lr_scheduler=lr_scheduler, updates_per_epoch=updates_per_epoch,
                               num_updates=num_updates, num_epochs=num_epochs, data_path=data_path,
                               has_no_sync=args.distributed, pending_extra=None, last_checkpoint=resume_path,
                               model=eval_model)

    def extra_state() -> Dict[str, Any]:
        pending = ctx['pending_extra'] or {}
        return dict(scheduler=lr_scheduler.state_dict() if lr_scheduler is not None else None,
                    global_step=ctx['num_updates'], world_size=args.world_size,
                    stim=vars(task.stim), data_path=data_path, **pending)

    if args.experiment:
        exp_name = args.experiment
    else:
        exp_name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                             args.stim_mode, str(data_config['input_size'][-1])])
    if utils.is_primary(args):
        output_dir = utils.get_outdir(args.output or './output/train', exp_name)
        saver = StimCheckpointSaver(
            model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
            max_history=args.checkpoint_hist, task=task, extra_state=extra_state)
        if ckpt is not None and os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(output_dir) \
                and ckpt.get('saver'):
            saver.load_state_dict(ckpt['saver'])
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:  # + the literal command and the code's commit
            yaml.safe_dump({**{k: v for k, v in vars(args).items() if not isinstance(v, torch.device)},
                            'command': ' '.join(['timm-stim-train'] + list(args.argv)), 'git_commit': source_commit()}, f)
        _truncate_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
    ctx['saver'] = saver

    if ckpt is not None:  # last, so that nothing above consumes random numbers after the restore
        rng = ckpt.get('rng')
        if rng and len(rng) == args.world_size:
            _set_rng_state(rng[args.rank])
        elif rng:
            _logger.warning(f'checkpoint RNG states are for {len(rng)} process(es), not {args.world_size}: '
                            f'reseeding (the run stays valid but not bit-identical).')
            utils.random_seed(args.seed + start_epoch, args.rank)
        ctx['meters'] = meters_state
    ctx['start_batch'] = start_batch
    if utils.is_primary(args):
        _logger.info(f'Scheduled epochs: {num_epochs}, starting at epoch {start_epoch} batch {start_batch}; '
                     f'output {output_dir}.')

    best_metric, best_epoch, results = None, None, []
    t_run = time.time()
    for epoch in range(start_epoch, num_epochs):
        loader_train.set_epoch(epoch)
        ctx['updates_at_epoch_start'] = ctx['num_updates'] - (start_batch // args.grad_accum_steps
                                                              if epoch == start_epoch else 0)
        train_metrics = train_one_epoch(epoch, task, loader_train, optimizer, args, ctx)
        ctx['start_batch'] = 0

        if args.stim_bn_recalib and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in eval_model.modules()):
            per_rank = -(-args.stim_bn_recalib // args.world_size)
            with amp_autocast():  # model and EMA, same images, in the precision the model trains in
                seen = task.recalibrate_bn(_recalib_batches(loader_recalib, epoch, args), per_rank)
            if utils.is_primary(args):
                _logger.info(f'Re-estimated BN statistics{" (model and EMA)" if task.has_ema() else ""} on '
                             f'{seen * args.world_size} training images.')
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(eval_model, args.world_size, args.dist_bn == 'reduce')

        last_epoch = epoch + 1 == num_epochs
        eval_metrics = None
        if loader_eval is not None and ((epoch + 1) % args.val_interval == 0 or last_epoch):
            eval_metrics = evaluate(eval_model, loader_eval, task, args, device, amp_autocast)
            if task.has_ema() and not args.model_ema_force_cpu:
                ema = unwrap_model(task.get_eval_model(ema=True))
                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    utils.distribute_bn(ema, args.world_size, args.dist_bn == 'reduce')
                eval_metrics = evaluate(ema, loader_eval, task, args, device, amp_autocast, ' (EMA)')
        metric = (eval_metrics or train_metrics).get(eval_metric)

        _check_weights(eval_model, f'after epoch {epoch}', args, ctx)
        ctx['pending_extra'] = dict(loader={'epoch': epoch + 1, 'batch': 0}, rng=_gather_rng_states(args))
        if output_dir is not None:
            lrs = [g['lr'] for g in optimizer.param_groups]
            utils.update_summary(epoch, train_metrics, eval_metrics, os.path.join(output_dir, 'summary.csv'),
                                 lr=sum(lrs) / len(lrs))
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, metric)
        if saver is not None:
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric if eval_metrics else None)
            ctx['last_checkpoint'] = os.path.join(output_dir, 'last' + CKPT_EXT)
        ctx['pending_extra'] = None
        results.append({'epoch': epoch, 'train': train_metrics, 'validation': eval_metrics})
        if utils.is_primary(args):
            done = epoch + 1 - start_epoch
            per_epoch = (time.time() - t_run) / done
            val = f', eval {eval_metric} {metric:.4g}' if eval_metrics else ''
            best = f' (best {best_metric:.4g} @ {best_epoch})' if best_metric is not None else ''
            _logger.info(f'Epoch {epoch} done: train loss {train_metrics["loss"]:.4g}, '
                         f'{train_metrics["img_per_s"]:.0f} img/s{val}{best}; '
                         f'ETA {_fmt_td(per_epoch * (num_epochs - epoch - 1))}')

    summary = {'output_dir': output_dir, 'results': results, 'best_metric': best_metric, 'best_epoch': best_epoch}
    if output_dir is not None:
        if not args.no_plot and os.path.exists(os.path.join(output_dir, 'summary.csv')):
            png = plot_curves(os.path.join(output_dir, 'summary.csv'), os.path.join(output_dir, 'curves.png'))
            if png:
                _logger.info(f'Training curves: {png}')
        if best_metric is not None:
            _logger.info(f'*** Best {eval_metric}: {best_metric} (epoch {best_epoch})')
    return summary


SCHEDULE_FLAGS = ('lr', 'sched', 'epochs', 'sched_on_updates', 'warmup_epochs', 'warmup_lr', 'warmup_prefix', 'min_lr',
                  'decay_rate', 'decay_epochs', 'decay_milestones', 'cooldown_epochs', 'lr_cycle_mul',
                  'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'lr_noise', 'lr_noise_pct', 'lr_noise_std')


def _schedule_diff(old_args, args) -> Dict[str, Any]:
    """Schedule flags whose value on --resume differs from the checkpoint's run: {flag: (old, new)}."""
    old = vars(old_args) if old_args is not None else {}
    return {k: (old[k], getattr(args, k)) for k in SCHEDULE_FLAGS if k in old and old[k] != getattr(args, k)}


def _schedule_changed(old_args, args) -> bool:
    return bool(_schedule_diff(old_args, args))


def _recalib_batches(loader, epoch: int, args):
    """Training images for BN re-estimation, in an order seeded by (seed, epoch) (each rank its own shard)."""
    if hasattr(loader, 'set_epoch'):
        loader.set_epoch(epoch)
    return iter(loader)


def cli() -> None:
    """Console-script entry point (`timm-stim-train`): run `main`, exit 0 (its returned dict is for Python callers)."""
    main()


if __name__ == '__main__':
    cli()
