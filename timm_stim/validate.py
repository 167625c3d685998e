#!/usr/bin/env python3
"""`timm-stim-validate`: timm's validate.py for ST / ST++ models, plus sub-networks and a depth-robustness sweep.

    timm-stim-validate --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim --checkpoint run/model_best.pth.tar
    timm-stim-validate ... --depths 3,2,3                      # one sub-network
    timm-stim-validate ... --robustness                         # every depth configuration -> JSON + PNG

Sub-network evaluation and BatchNorm: a sub-network sees other feature statistics than the full network whose
running statistics are stored in the checkpoint. With `--bn-recalib N` (default 2000 for sub-networks and the
sweep) the BN running statistics are re-estimated for *each* configuration with `timm_stim.depth.recalibrate_bn`:
reset, then the exact average over N training images (un-augmented, seeded random order) passed through that
sub-network in train mode; weights are untouched. `--bn-recalib 0` evaluates with the stored statistics.
FLOPs per image come from `timm_stim.elastic.depth_profile` (`torch.utils.flop_counter`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm import utils
from timm.models import create_model, load_checkpoint
from timm.utils import load_checkpoint_metadata

import timm_stim  # noqa: F401  (registers the *_stim models)
from .atomic import atomic_write_text
from .checkpoint import checkpoint_misfit
from .data import data_config_at, run_data_configs
from .depth import check_depths, find_stages, full_depths, recalibrate_bn, subnetwork, valid_depths
from .elastic import depth_profile
from .evaluation import evaluate
from .loaders import check_data_dir, create_split_loader
from .train import _non_negative_int, _positive_int

__all__ = ['build_parser', 'main', 'evaluate_depths', 'plot_robustness', 'parse_depths']

_logger = logging.getLogger('validate')


def parse_depths(text: str) -> Tuple[int, ...]:
    """'3,2,3' -> (3, 2, 3)."""
    try:
        depths = tuple(int(t) for t in text.replace(' ', '').split(',') if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"depths must be comma-separated integers such as '3,2,3', got {text!r}")
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f'depths must be positive integers, got {text!r}')
    return depths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-stim-validate', description='Validate a (sub-)network of a timm model.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (deprecated, use --data-dir)')
    p.add_argument('--data-dir', metavar='DIR')
    p.add_argument('--dataset', default='', metavar='NAME', help='as in timm-stim-train')
    p.add_argument('--split', default='validation', metavar='NAME', help='split to evaluate')
    p.add_argument('--train-split', default='train', metavar='NAME', help='split used for BN re-estimation')
    p.add_argument('--dataset-download', action='store_true')
    p.add_argument('--class-map', default='', metavar='FILENAME')
    p.add_argument('--val-subset', type=_positive_int, default=None, metavar='N',
                   help='evaluate a class-balanced subset of N images')
    p.add_argument('--fast-data', action=argparse.BooleanOptionalAction, default=None,
                   help='in-memory tensor path (default: on for images <= 64 px)')
    p.add_argument('--data-cache-dir', default=None, metavar='DIR')
    p.add_argument('--model', '-m', default='resnet50', metavar='NAME')
    p.add_argument('--pretrained', action='store_true', help='use the pretrained weights of the model / tag')
    p.add_argument('--checkpoint', default='', metavar='PATH', help='checkpoint (train checkpoint or weights file)')
    p.add_argument('--use-ema', action='store_true', help='use the EMA weights of a train checkpoint')
    p.add_argument('--num-classes', type=_positive_int, default=None)
    p.add_argument('--img-size', type=_positive_int, default=None)
    p.add_argument('--in-chans', type=_positive_int, default=None)
    p.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    p.add_argument('--crop-pct', default=None, type=float)
    p.add_argument('--mean', type=float, nargs='+', default=None)
    p.add_argument('--std', type=float, nargs='+', default=None)
    p.add_argument('--interpolation', default='')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    p.add_argument('-b', '--batch-size', type=_positive_int, default=256)
    p.add_argument('-j', '--workers', type=_non_negative_int, default=2)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', action='store_true')
    p.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--depths', type=parse_depths, default=None, metavar='D1,D2,...',
                   help="evaluate the sub-network keeping D_i blocks of stage i, e.g. '3,2,3'")
    p.add_argument('--robustness', nargs='?', const='auto', default=None, choices=('auto', 'all', 'random'),
                   help='sweep depth configurations: all, random (--robustness-samples of them, plus the full '
                        'network), or auto (all when there are at most --robustness-max, else random)')
    p.add_argument('--robustness-samples', type=_positive_int, default=20, metavar='N')
    p.add_argument('--robustness-max', type=_positive_int, default=64, metavar='N')
    p.add_argument('--bn-recalib', type=_non_negative_int, default=None, metavar='N',
                   help='re-estimate BN per configuration on N training images (default 2000 for sub-networks, '
                        'sweeps and --use-ema, 0 for the full network; 0 = stored statistics)')
    p.add_argument('--bn-recalib-aug', action=argparse.BooleanOptionalAction, default=True,
                   help='re-estimate BN on training-augmented images (pad-crop and flip for small images, timm\'s '
                        'training transform otherwise), as timm-stim-train does after every epoch')
    p.add_argument('--bn-recalib-img-size', type=_positive_int, default=None, metavar='N',
                   help='image size of the BN re-estimation batches (default: the evaluation size --img-size); a '
                        'run trained at 200 and evaluated at 224 re-estimated BN at 200 (pass 200 to match it)')
    p.add_argument('--results-file', default='', metavar='FILE', help='JSON results (robustness: also a PNG next '
                                                                       'to it)')
    return p


def _parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if args.depths is not None and args.robustness:
        parser.error('--depths and --robustness are exclusive')
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint}: no such file')
    if args.bn_recalib is None:
        # EMA weights average BN buffers disturbed by sub-network passes: re-estimate them as training does
        args.bn_recalib = 2000 if (args.depths is not None or args.robustness or args.use_ema) else 0
    return args


def evaluate_depths(
        model: nn.Module,
        configs: Sequence[Optional[Sequence[int]]],
        loader: Iterable,
        recalib_loader: Optional[Iterable] = None,
        bn_recalib: int = 0,
        device: torch.device = torch.device('cpu'),
        amp_autocast: Callable = nullcontext,
        channels_last: bool = False,
        input_size: Optional[Sequence[int]] = None,
) -> List[Dict[str, Any]]:
    """Accuracy, FLOPs and params of each depth configuration (None = full network).

    With `bn_recalib > 0` each configuration gets BN statistics re-estimated on that many training images (fewer
    when `recalib_loader` has fewer: each row's `bn_images` is the number used); the model's own statistics are
    restored afterwards.
    """
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    saved = {k: v.clone() for k, v in model.state_dict().items()} if bn_recalib and has_bn else None
    full = full_depths(model)
    wanted = [tuple(full if d is None else d) for d in configs]
    profiles = {tuple(p['depths']): p for p in depth_profile(model, input_size, depths=sorted(set(wanted)))}
    results = []
    try:
        for depths in wanted:
            t0 = time.time()
            bn_images = 0
            if saved is not None and recalib_loader is not None:
                bn_images = recalibrate_bn(model, iter(recalib_loader), bn_recalib, depths=depths)
            with subnetwork(model, depths):
                metrics = dict(evaluate(model, loader, device, amp_autocast, channels_last))
            prof = profiles[depths]
            row = dict(depths=list(depths), full=depths == full, flops=prof['flops'], params=prof['params'],
                       flops_share=prof['flops_share'], bn_images=bn_images, **metrics)
            results.append(row)
            _logger.info(f'depths {depths}: top1 {metrics["top1"]:.2f}  top5 {metrics["top5"]:.2f}  '
                         f'{prof["flops"] / 1e6:.1f} MFLOPs ({100 * prof["flops_share"]:.0f}%)  '
                         f'[{time.time() - t0:.1f}s]')
    finally:
        if saved is not None:
            model.load_state_dict(saved)
    return results


def plot_robustness(results: Sequence[Dict[str, Any]], out_png: str, title: str = '') -> Optional[str]:
    """Scatter of top-1 accuracy against MFLOPs per configuration; the full network highlighted."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning('matplotlib is not installed: no robustness plot (pip install matplotlib).')
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sub = [r for r in results if not r['full']]
    ax.scatter([r['flops'] / 1e6 for r in sub], [r['top1'] for r in sub], s=18, label='sub-networks')
    for r in results:
        if r['full']:
            ax.scatter([r['flops'] / 1e6], [r['top1']], s=60, marker='*', color='C3', label='full network')
    ax.set_xlabel('MFLOPs per image'), ax.set_ylabel('top-1 accuracy (%)'), ax.grid(alpha=.3), ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _sweep_configs(model: nn.Module, mode: str, samples: int, max_all: int, seed: int) -> List[Tuple[int, ...]]:
    configs = valid_depths(model)  # full network last
    if mode == 'all' or (mode == 'auto' and len(configs) <= max_all):
        return configs
    rng = random.Random(seed)
    picked = rng.sample(configs[:-1], min(samples, len(configs) - 1))
    return sorted(picked) + [configs[-1]]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    if not logging.getLogger().handlers:  # keep the caller's logging (tests, notebooks)
        utils.setup_default_logging()
    args = _parse_args(argv)
    try:
        return _run(args, argv)
    except (FileNotFoundError, ValueError) as e:  # missing data, a checkpoint that does not fit: one line
        if os.environ.get('TIMM_STIM_TRACEBACK'):
            raise
        print(f'timm-stim-validate: error: {e}', file=sys.stderr)
        raise SystemExit(2)


def _bn_images(args, recalib_loader) -> int:
    """Training images BN re-estimation will use: `--bn-recalib`, or all of the split when it has fewer."""
    if recalib_loader is None:
        return 0
    available = len(recalib_loader.dataset)
    if available < args.bn_recalib:
        _logger.warning(f'--bn-recalib {args.bn_recalib}: split {args.train_split!r} has only {available} images; '
                        f'BN is re-estimated on all {available}.')
    return min(args.bn_recalib, available)


DATA_FLAGS = ('img_size', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation')
EVAL_SIZES = ('eval_img_size', 'eval_input_size')  # set only from a run's record


def use_recorded_args(args: argparse.Namespace) -> Dict[str, Any]:
    """A training checkpoint is evaluated as its run evaluated: its recorded class count and input channels when
    not given, and when no data flag (`DATA_FLAGS`) is given its recorded ones, with its evaluation size
    (`eval_img_size` / `eval_input_size`; BN is then re-estimated at its training size). A `resnet18_stim` trained on
    CIFAR-10 at 32x32 with CIFAR mean / std is then not measured with the 1000-class, 224-px ImageNet cfg. Returns
    what it set."""
    if not args.checkpoint.endswith(('.pth', '.tar')):
        return {}
    try:
        run = load_checkpoint_metadata(args.checkpoint).get('args')
    except Exception:  # not a training checkpoint: timm's load_checkpoint reads it as weights
        return {}
    run = vars(run) if isinstance(run, argparse.Namespace) else dict(run or {})
    taken = {k: run[k] for k in ('num_classes', 'in_chans') if getattr(args, k) is None and run.get(k)}
    if not any(getattr(args, k) not in (None, '') for k in DATA_FLAGS):
        taken.update({k: run[k] for k in DATA_FLAGS + EVAL_SIZES if run.get(k) not in (None, '')})
    return _set(args, taken)


def _set(args: argparse.Namespace, taken: Dict[str, Any]) -> Dict[str, Any]:
    for k, v in taken.items():
        setattr(args, k, v)
    if taken:
        _logger.info(f'As recorded by the run of {args.checkpoint}: '
                     + ', '.join(f'{k}={v}' for k, v in taken.items() if v is not None))
    return taken


def _run(args, argv) -> Dict[str, Any]:
    device = torch.device(args.device)
    check_data_dir(args)  # before the model is built
    if args.checkpoint:
        use_recorded_args(args)
    in_chans = args.input_size[0] if args.input_size else (args.in_chans or 3)
    model = create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes, in_chans=in_chans,
                         **args.model_kwargs)
    if args.checkpoint:
        _load_checked(model, args)
    train_config, data_config = run_data_configs(vars(args), model, in_chans, verbose=True)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.depths is not None or args.robustness:  # clear errors before any data is read
        try:  # a network whose stages are one block each (ResNet-8) has one configuration: the full network
            stages = find_stages(model, require_droppable=False)
        except TypeError as e:
            flag = '--robustness' if args.robustness else '--depths'
            raise ValueError(f'{flag} needs a residual network whose blocks can be skipped; --model {args.model}: '
                             f'{e}') from None
        if args.depths is not None:
            check_depths(stages, args.depths)
    amp_autocast = nullcontext
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=device.type,
                               dtype=torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16)

    loader = create_split_loader(args, data_config, args.split, args.val_subset, False, device)
    # training images in seeded random order; recalibrate_bn stops after --bn-recalib of them
    # the training size (the run's, or --bn-recalib-img-size), when it differs from the evaluation size
    recalib_config = data_config_at(data_config, args.bn_recalib_img_size) if args.bn_recalib_img_size else train_config
    recalib = create_split_loader(args, recalib_config, args.train_split, None, True, device,
                                  augment=args.bn_recalib_aug) if args.bn_recalib else None
    bn_images = _bn_images(args, recalib)
    if args.robustness:
        configs = _sweep_configs(model, args.robustness, args.robustness_samples, args.robustness_max, args.seed)
    else:
        configs = [args.depths]
    _logger.info(f'Evaluating {len(configs)} configuration(s) of {args.model}'
                 f'{f", BN re-estimated on {bn_images} training images each" if bn_images else ""}.')
    rows = evaluate_depths(model, configs, loader, recalib, args.bn_recalib, device, amp_autocast,
                           args.channels_last, data_config['input_size'])
    result = dict(model=args.model, checkpoint=args.checkpoint or None, use_ema=args.use_ema,
                  pretrained=args.pretrained, precision=args.amp_dtype if args.amp else 'float32',
                  bn_recalib_aug=args.bn_recalib_aug,
                  split=args.split, num_images=len(getattr(loader, 'dataset', [])) if hasattr(loader, 'dataset')
                  else None, bn_recalib=bn_images, input_size=list(data_config['input_size']),
                  bn_recalib_input_size=list(recalib_config['input_size']) if bn_images else None,
                  command=' '.join(['timm-stim-validate'] + list(sys.argv[1:] if argv is None else argv)),
                  results=rows)
    if args.robustness:
        out_json = args.results_file or f'robustness-{args.model}.json'
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        _write_json(out_json, result)
        png = plot_robustness(rows, os.path.splitext(out_json)[0] + '.png',
                              f'{args.model}: depth robustness (BN re-est. {bn_images} imgs)')
        result['json'], result['png'] = out_json, png
        _logger.info(f'Wrote {out_json}' + (f' and {png}' if png else ''))
    elif args.results_file:
        _write_json(args.results_file, result)
    print(f'--result\n{json.dumps(rows if args.robustness else rows[0], indent=2)}')
    return result


def _load_checked(model: nn.Module, args: argparse.Namespace) -> None:
    """timm's `load_checkpoint` of --checkpoint; a file that cannot be read or does not fit --model is a ValueError
    in one line naming both models (`checkpoint_misfit`), not a traceback."""
    try:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    except Exception:  # noqa: BLE001  (torch / timm / safetensors errors: say what is wrong instead)
        problem = checkpoint_misfit(args.checkpoint, model, args.model, '--checkpoint', args.use_ema)
        if problem is None:
            raise
        raise ValueError(problem) from None


def _write_json(path: str, obj: Dict[str, Any]) -> None:
    """Whole or not at all (a temporary file renamed over `path`): a killed sweep leaves no half-written results."""
    atomic_write_text(path, json.dumps(obj, indent=2))


def cli() -> None:
    """Console-script entry point (`timm-stim-validate`): run `main`, exit 0 (its returned dict is for Python callers)."""
    main()


if __name__ == '__main__':
    cli()
