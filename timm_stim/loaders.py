"""Batches for training, evaluation and BN re-estimation: one factory for `timm-stim-train` and `timm-stim-validate`.

Small images (<= 64 px) take the in-memory uint8 tensor path of `timm_stim.data` (batch augmentation on the
device); everything else takes timm's `create_dataset` / `create_loader`. Every order is seeded, so a resumed
epoch sees the batches the killed one would have seen.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader

from .data import (ImageTensors, TensorLoader, TransformSubset, dataset_targets, fits_fast_path, load_image_tensors,
                   subset_indices)
from .heldout import split_heldout

__all__ = ['Loaders', 'SeededLoader', 'check_data_dir', 'check_class_folders', 'create_train_loaders',
           'create_split_loader', 'recalib_batches', 'mixup_args']

_logger = logging.getLogger(__name__)

_FASHION_MNIST = ('fashion-mnist', 'fashion_mnist', 'fmnist')


@dataclass
class Loaders:
    """What a training run reads: training batches, evaluation batches (None without --val-split), the training
    images BN re-estimation sees, the batch-level Mixup (None when off or done in the collate), and the path."""
    train: Any
    eval: Optional[Any]
    recalib: Any
    mixup_fn: Optional[Mixup]
    path: str  # 'tensor' or 'timm'


def check_data_dir(args: argparse.Namespace) -> None:
    """Refuse a missing, absent or empty data directory before any model is built (one line, FileNotFoundError)."""
    if args.data_dir is None and not args.dataset.lower().endswith(_FASHION_MNIST):
        raise FileNotFoundError('no data directory: pass --data-dir DIR (e.g. --data-dir ../shared/data/cifar10).')
    if args.data_dir is None or args.dataset_download:
        return
    if not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f'data directory {args.data_dir} does not exist: pass --data-dir pointing at a folder '
                                f'with train/ and val/ class folders (or --dataset torch/cifar10 --dataset-download).')
    if not any(files for _, _, files in os.walk(args.data_dir, followlinks=True)):
        raise FileNotFoundError(f'data directory {args.data_dir} holds no files: pass --data-dir pointing at a folder '
                                f'with train/ and val/ class folders (or --dataset torch/cifar10 --dataset-download).')
    if not args.dataset and not args.class_map:
        for split in sorted({getattr(args, k, None) for k in ('train_split', 'val_split', 'split')} - {None, ''}):
            check_class_folders(args.data_dir, split)


_WARNED_ONE_CLASS = set()


def check_class_folders(data_dir: str, split: str) -> None:
    """The class folders of an image-folder split as timm reads it (`data_dir/<split>/<class>/...`): refuse one that
    holds no image (ValueError) -- timm numbers the classes by the folders that hold images, so every class after
    it would get another index than in the other split and in the model's head -- and warn about a split with one
    class (a 1-class problem any head gets 100 % on)."""
    from timm.data.dataset_factory import _search_split
    from timm.data.readers.img_extensions import get_img_extensions
    root = _search_split(data_dir, split)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.')) \
        if os.path.isdir(root) else []  # hidden folders (.ipynb_checkpoints): tools', not classes
    exts = get_img_extensions(as_set=True)
    empty = [c for c in classes if not any(os.path.splitext(f)[1].lower() in exts for _, _, files in
                                           os.walk(os.path.join(root, c), followlinks=True) for f in files)]
    if empty and len(empty) < len(classes):
        raise ValueError(f'class folder{"s" if len(empty) > 1 else ""} {", ".join(empty[:5])} under {root} hold'
                         f'{"" if len(empty) > 1 else "s"} no image: timm numbers the classes by the folders that hold '
                         f'images, so every class after {empty[0]!r} would get another index than in the other '
                         f'split and the model\'s head. Add its images or remove the folder (or pass --class-map).')
    if len(classes) == 1 and root not in _WARNED_ONE_CLASS:
        _WARNED_ONE_CLASS.add(root)
        _logger.warning(f'{root} holds one class folder ({classes[0]}): every image has the same label, so a model '
                        f'learns nothing from it and a top-1 on it says nothing; --data-dir should hold one folder '
                        f'per class.')


def mixup_args(args: argparse.Namespace) -> Dict[str, Any]:
    """timm's Mixup / FastCollateMixup arguments from the --mixup* / --cutmix* / --smoothing flags."""
    return dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing, num_classes=args.num_classes)


def _mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


class SeededLoader:
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


def recalib_batches(loader: Iterable, epoch: int) -> Iterator:
    """Training images for BN re-estimation, in an order seeded by (seed, epoch) (each rank its own shard)."""
    if hasattr(loader, 'set_epoch'):
        loader.set_epoch(epoch)
    return iter(loader)


# ------------------------------------------------------------------------------------------- building blocks
def _fast_split(args: argparse.Namespace, split: str, subset: Optional[int], allowed: bool = True
                ) -> Optional[ImageTensors]:
    """`split` decoded into memory, or None where the fast path does not apply and --fast-data was not forced."""
    if args.fast_data is False or not allowed:
        return None
    try:
        data = load_image_tensors(args.dataset, args.data_dir, split, subset, args.dataset_download,
                                  args.data_cache_dir, args.class_map)
        if fits_fast_path(data):
            return data
        if args.fast_data:
            raise ValueError(f'images of {tuple(data.images.shape[-2:])} px are too large for --fast-data '
                             f'(<= 64 px); use --no-fast-data.')
        return None
    except (TypeError, ValueError) as e:
        if args.fast_data:
            raise
        _logger.info(f'fast data path unavailable ({e}); using timm loader')
        return None


def _split_dataset(args: argparse.Namespace, split: str, is_training: bool, subset: Optional[int] = None,
                   shuffle: bool = False, **kwargs):
    """timm's dataset of `split`: a class-balanced subset of `subset` images, in a seeded random order on `shuffle`."""
    ds = create_dataset(args.dataset, root=args.data_dir, split=split, is_training=is_training,
                        class_map=args.class_map, download=args.dataset_download, **kwargs)
    idx = subset_indices(dataset_targets(ds), subset) if subset else list(range(len(ds)))
    if shuffle:  # e.g. BN re-estimation: training images in a seeded random order, not class-sorted folder order
        g = torch.Generator().manual_seed(args.seed)
        idx = [idx[i] for i in torch.randperm(len(idx), generator=g).tolist()]
    return TransformSubset(ds, idx) if subset or shuffle else ds


# ------------------------------------------------------------------------------------------------ training
def create_train_loaders(args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device,
                         fast_conflicts: Sequence[str] = (), model_dtype: Optional[torch.dtype] = None,
                         eval_config: Optional[Dict[str, Any]] = None) -> Loaders:
    """Train / eval / BN re-estimation loaders of `timm-stim-train`: the tensor path for small images (unless
    `fast_conflicts` names timm augmentation flags it does not implement), else timm's loader.

    Training and BN re-estimation batches come at `data_config`'s input size (the training resolution, as the
    released protocol re-estimates BN); evaluation batches at `eval_config`'s (`--eval-img-size`; default: the
    training config, as timm's train.py), with its crop_pct."""
    check_data_dir(args)
    eval_config = eval_config or data_config
    if args.fast_data is None and fast_conflicts and getattr(args, 'rank', 0) == 0:
        _logger.info(f'{", ".join(fast_conflicts)} set: using timm\'s loader (the fast path does not implement them).')
    train_data = _fast_split(args, args.train_split, args.train_subset, allowed=not fast_conflicts or args.fast_data)
    if getattr(args, 'holdout', None) and train_data is None:
        raise ValueError('--holdout needs the fast tensor data path (images <= 64 px, no timm-only augmentation).')
    common = dict(mean=data_config['mean'], std=data_config['std'], input_size=data_config['input_size'],
                  seed=args.seed, rank=args.rank, world_size=args.world_size, device=device,
                  dtype=model_dtype or torch.float32, channels_last=args.channels_last)
    if train_data is not None:
        return _tensor_loaders(args, eval_config, train_data, common)
    return _timm_loaders(args, data_config, eval_config, device, model_dtype)


def _holdout(args, train_data: ImageTensors) -> Tuple[ImageTensors, Optional[ImageTensors]]:
    """`--holdout N`: (the training images without the held-out split, the held-out split); else (all, None)."""
    if not getattr(args, 'holdout', None):
        return train_data, None
    rest, held = split_heldout(len(train_data), args.holdout)
    pick = lambda idx: ImageTensors(train_data.images[idx], train_data.targets[idx], train_data.classes)
    if getattr(args, 'rank', 0) == 0:
        _logger.info(f'Held out {len(held)} of {len(train_data)} training images (timm_stim.heldout, seed 0): '
                     f'training on {len(rest)}, validating on the held-out images instead of {args.val_split!r}.')
    return pick(rest), pick(held)


def _tensor_loaders(args, eval_config, train_data: ImageTensors, common: Dict[str, Any]) -> Loaders:
    aug = dict(padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip, no_aug=args.no_aug)
    train_data, held = _holdout(args, train_data)
    train = TensorLoader(train_data, args.batch_size, True, num_batches=args.train_batches_per_epoch, **aug, **common)
    loader_eval = None
    if args.val_split or held is not None:
        val_data = held if held is not None else load_image_tensors(
            args.dataset, args.data_dir, args.val_split, args.val_subset, args.dataset_download, args.data_cache_dir,
            args.class_map)
        loader_eval = TensorLoader(val_data, args.validation_batch_size or args.batch_size, False,
                                   crop_pct=eval_config['crop_pct'],
                                   **{**common, 'input_size': eval_config['input_size']})
    # BN re-estimation: training images in their own seeded order, augmented as for training (as released)
    aug_bn = args.stim_bn_recalib_aug
    recalib = TensorLoader(train_data, args.batch_size, aug_bn, shuffle=True, **(aug if aug_bn else {}),
                           **{**common, 'seed': args.seed + 1})
    return Loaders(train, loader_eval, recalib, Mixup(**mixup_args(args)) if _mixup_active(args) else None, 'tensor')


def _timm_loaders(args, data_config, eval_config, device, model_dtype) -> Loaders:
    ds_kwargs = dict(batch_size=args.batch_size)
    ds_train = _split_dataset(args, args.train_split, True, args.train_subset, seed=args.seed, **ds_kwargs)
    ds_recalib = _split_dataset(args, args.train_split, args.stim_bn_recalib_aug, args.train_subset, shuffle=True,
                                **ds_kwargs)
    loader_common = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
                         # pinned memory speeds host-to-accelerator copies only (torch warns about it on a CPU run)
                         pin_memory=args.pin_mem and torch.device(device).type != 'cpu', img_dtype=model_dtype or torch.float32, device=device,
                         distributed=args.distributed, use_prefetcher=args.prefetcher, num_workers=args.workers,
                         persistent_workers=False)
    mixup_fn, collate_fn = None, None
    if _mixup_active(args):
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args(args))
        else:
            mixup_fn = Mixup(**mixup_args(args))
    interpolation = args.train_interpolation
    if args.no_aug or not interpolation:
        interpolation = data_config['interpolation']
    train_aug = dict(
        batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=interpolation)
    loader_train = create_loader(ds_train, collate_fn=collate_fn, **train_aug, **loader_common)
    if len(loader_train) == 0:
        raise ValueError(f'{len(ds_train)} training images are fewer than one batch of {args.batch_size} '
                         f'(timm drops the incomplete last batch): lower --batch-size.')
    eval_kwargs = dict(batch_size=args.validation_batch_size or args.batch_size, is_training=False,
                       interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'], **loader_common)
    loader_eval = None
    if args.val_split:
        ds_eval = _split_dataset(args, args.val_split, False, args.val_subset, **ds_kwargs)
        loader_eval = create_loader(ds_eval, **{**eval_kwargs, 'input_size': eval_config['input_size'],
                                                'crop_pct': eval_config['crop_pct']})
    if args.stim_bn_recalib_aug:
        recalib = SeededLoader(create_loader(ds_recalib, **train_aug, **loader_common), args.seed + 1)
    else:  # un-augmented (the eval transform), still at the training resolution
        recalib = create_loader(ds_recalib, **eval_kwargs)
    train = SeededLoader(loader_train, args.seed, args.train_batches_per_epoch)
    return Loaders(train, loader_eval, recalib, mixup_fn, 'timm')


# ---------------------------------------------------------------------------------------------- one split
def create_split_loader(args: argparse.Namespace, data_config: Dict[str, Any], split: str, subset: Optional[int],
                        shuffle: bool, device: torch.device, augment: bool = False) -> Iterable:
    """Batches of `split` for `timm-stim-validate` / `timm-stim-release` (eval transform, or the training one with
    `augment`; a seeded random order with `shuffle`): the tensor path for small images, else timm's loader."""
    check_data_dir(args)
    data = _fast_split(args, split, subset)
    if data is not None:
        return TensorLoader(data, min(args.batch_size, len(data)), augment, data_config['mean'], data_config['std'],
                            input_size=data_config['input_size'], seed=args.seed, device=device,
                            channels_last=args.channels_last, shuffle=shuffle, crop_pct=data_config['crop_pct'])
    ds = _split_dataset(args, split, augment, subset, shuffle)
    return create_loader(ds, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=augment,
                         interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
                         num_workers=args.workers, crop_pct=data_config['crop_pct'], device=device,
                         use_prefetcher=False, persistent_workers=False)
