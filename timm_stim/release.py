#!/usr/bin/env python3
"""`timm-stim-release`: turn a training run into a published tag (`weights/<model>.<tag>.safetensors` + manifest).

    timm-stim-release output/train/cifar_resnet20_stpp --tag stpp_cifar10
    timm-stim-release output/train/run/model_best.pth.tar --tag stpp_cifar10 --model cifar_resnet20_stim --weights ema

What a maintainer would do, in order, stopping with one clear line (and writing nothing) at the first problem:
1. pick the checkpoint (`last.pth.tar` by default: `model_best` was chosen on the validation split, which for
   CIFAR-10 is the test set) and its EMA or plain weights (`--weights auto`: the weights whose accuracy the run logged,
   the EMA's when it kept one);
2. load them strictly into the named `_stim` (or CIFAR base) model with the run's `num_classes`;
3. re-evaluate top-1 in float32 (what users run) on the run's validation split, at the size and crop the run
   evaluated at (`--eval-img-size` / `--crop-pct`), and compare it with the accuracy the run logged in
   `summary.csv` for that epoch (`--tolerance`, default 0.3 pt: the run may have evaluated under bfloat16
   autocast); both numbers are recorded;
4. measure per-depth robustness with BN re-estimated for each configuration (`timm_stim.validate.evaluate_depths`)
   on training-augmented images at the training size (as the run re-estimated it), or take the sweep that
   `timm-stim-validate --results-file` already measured on this checkpoint (`--robustness-from`, checked);
5. store float16 only for a file above the wheel limit and only when float16 gives the same top-1, or, for a file
   too large to publish in float32 (`RELEASE_MAX_MB`), within 0.1 pt, recording the float16 top-1;
   a file that would push the wheel's weights over their budget is refused at step 2 (before the evaluation);
   `--out-of-wheel` stores it under `weights/hub/` whatever its size (for non-default tags);
6. write the weights and the manifest entry (sha256, size, dataset, input size, recipe from `args.yaml`, the
   training command, commit, measured numbers, and the ST++-versus-baseline numbers of `benchmarks/results/` that
   the Hub card shows), all or nothing under the manifest lock (`timm_stim.models.weights.update_manifest`): a
   re-release stores new bytes under new names and switches the manifest in one rename, so a kill at any moment
   leaves the old tag loadable.

`--tag` follows timm's tag grammar (letters, digits, `_`), checked before anything is read.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import yaml
from timm import utils

from .cards import comparison_record, load_results
from .data import run_data_configs
from .depth import valid_depths
from .losses import logit_rule
from .models import CIFAR_ARCHS, STIM_BASES
from .models import weights as W
from .models.weights import (WHEEL_MAX_MB, WeightsEntry, build_checked_model, check_name, check_release_size,
                             check_wheel_budget, load_checkpoint_state_dict, read_manifest, read_torch_file,
                             state_dict_nbytes, weights_dir, write_weights)
from .summary import precision_launches
from .train import _non_negative_int, _positive_int, build_parser as train_parser
from .loaders import create_split_loader
from .validate import _sweep_configs, evaluate_depths
from .version import source_commit

__all__ = ['build_parser', 'main', 'release', 'ReleaseError', 'train_command']

_logger = logging.getLogger('release')
# how one process ran, not how the weights were trained: left out of the released command and train_args
HALF_TOLERANCE = 0.1  # points of top-1 float16 may lose where float32 is too large to publish (verify_weights' bar)
_MACHINE_KEYS = {'data', 'config', 'device', 'local_rank', 'rank', 'world_size', 'distributed', 'prefetcher',
                 'resume', 'no_resume_opt'}


class ReleaseError(RuntimeError):
    """A release stopped before writing anything."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-stim-release', description='Release a training run as a weights tag.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('run', metavar='RUN', help='training run directory or checkpoint file (.pth.tar / .safetensors)')
    p.add_argument('--tag', required=True, type=_tag,
                   help='pretrained tag, e.g. stpp_cifar10 (weights: <model>.<tag>; letters, digits and _)')
    p.add_argument('--model', default=None, help='model name (default: the run\'s model; timm names map to '
                                                 '<name>_stim)')
    p.add_argument('--checkpoint', default='last', metavar='last|best|FILE',
                   help='in a run directory: last.pth.tar, model_best.pth.tar, or a file name')
    p.add_argument('--weights', default='auto', choices=('auto', 'ema', 'plain'),
                   help='EMA or plain weights of a train checkpoint (auto: EMA when the run kept one)')
    p.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (default: the run\'s)')
    p.add_argument('--split', default=None, help='validation split (default: the run\'s --val-split)')
    p.add_argument('--val-subset', type=_positive_int, default=None, metavar='N',
                   help='evaluate N images (default: what the run validated on)')
    p.add_argument('--tolerance', type=float, default=0.3, metavar='PT',
                   help='largest allowed |re-evaluated - logged| top-1, in points')
    p.add_argument('--skip-log-check', action='store_true', help='release although the run logged no accuracy '
                                                                 'for these weights')
    p.add_argument('--bn-recalib', type=_non_negative_int, default=2000, metavar='N',
                   help='training images for BN re-estimation per depth configuration (0 = stored statistics)')
    p.add_argument('--robustness', default='auto', choices=('auto', 'all', 'random', 'none'))
    p.add_argument('--robustness-samples', type=_positive_int, default=20, metavar='N')
    p.add_argument('--robustness-max', type=_positive_int, default=64, metavar='N')
    p.add_argument('--robustness-from', default=None, metavar='FILE',
                   help="take the per-depth sweep from a `timm-stim-validate --results-file` of this checkpoint (e.g. "
                        "the robustness.json of benchmarks/cifar10.py collect) instead of measuring it again; it must "
                        "be newer than the checkpoint and match its weights, BN images, input size and image count")
    p.add_argument('--storage', default='auto', choices=('auto', 'float32', 'float16'),
                   help=f'auto: float16 only above {WHEEL_MAX_MB} MB and only with the same top-1; above '
                        f'{W.RELEASE_MAX_MB} MB (too large to publish in float32) within {HALF_TOLERANCE} pt')
    p.add_argument('--default', action='store_true',
                   help="make this tag the model's default (first of its model in the manifest); otherwise a new "
                        "tag goes after the model's others and a replaced one keeps its place")
    p.add_argument('--out-of-wheel', action='store_true',
                   help='store under weights/hub/ (out of the wheel, in git as parts, on the Hub) whatever the size; '
                        'for non-default tags such as the baselines of timm architectures')
    p.add_argument('--dataset-name', default=None, help='dataset id for the card (default: from the data folder)')
    p.add_argument('--weights-dir', default=None, metavar='DIR', help='default: $TIMM_STIM_WEIGHTS_DIR or weights/')
    p.add_argument('-b', '--batch-size', type=_positive_int, default=256)
    p.add_argument('-j', '--workers', type=_non_negative_int, default=2)
    p.add_argument('--device', default='cpu')
    return p


def _tag(text: str) -> str:
    """An argparse type: a tag of timm's grammar (checked before anything is read; it also names files)."""
    try:
        return check_name('tag', text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --------------------------------------------------------------------------------------------- the run
def resolve_checkpoint(run: str, which: str) -> Tuple[Path, Optional[Path]]:
    """(checkpoint file, run directory or None)."""
    path = Path(run)
    if path.is_file():
        return path, path.parent
    if not path.is_dir():
        raise ReleaseError(f'{run}: no such run directory or checkpoint file.')
    name = {'last': 'last.pth.tar', 'best': 'model_best.pth.tar'}.get(which, which)
    ckpt = path / name
    if not ckpt.is_file():
        raise ReleaseError(f'{ckpt} does not exist (--checkpoint last|best|FILE).')
    return ckpt, path


def check_default_is_stim(model: str, tag: str, mode: str, default: bool, directory: Path) -> None:
    """The default tag of a `_stim` name is never a baseline: a baseline (`--stim-mode off`) run goes to a `_stim`
    name only after an ST / ST++ tag of it, and never with `--default`."""
    if not model.endswith('_stim') or mode != 'off':
        return
    others = [e for e in read_manifest(directory, strict=False) if e.model == model and e.tag != tag]
    if default or not any(e.mode != 'off' for e in others):
        raise ReleaseError(f'{model}.{tag} would be the default tag of {model} but the run is a baseline '
                           f'(--stim-mode off): release an ST++ run of {model} first (with --default), then this '
                           f'one without --default; CIFAR baselines go to the base name (e.g. cifar_resnet20).')


def _load_meta(ckpt: Path) -> Dict[str, Any]:
    if ckpt.suffix == '.safetensors':
        return {}
    try:
        meta = read_torch_file(ckpt)
    except ValueError as e:  # truncated, or a pickle refused: one line
        raise ReleaseError(str(e)) from None
    return {k: v for k, v in meta.items() if k in ('epoch', 'args', 'metric', 'loader')} \
        if isinstance(meta, dict) else {}


def run_args(run_dir: Optional[Path], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The run's training arguments: `args.yaml` next to the checkpoint, else the checkpoint's own `args`."""
    if run_dir is not None and (run_dir / 'args.yaml').is_file():
        with open(run_dir / 'args.yaml') as f:
            return yaml.safe_load(f) or {}
    if meta.get('args') is not None:
        return dict(vars(meta['args']))
    raise ReleaseError('no args.yaml next to the checkpoint and no args inside it: cannot tell how it was trained.')


def logged_top1(run_dir: Optional[Path], meta: Dict[str, Any]) -> Optional[float]:
    """`eval_top1` that the run logged for the checkpoint's epoch (None when there is none)."""
    summary = run_dir / 'summary.csv' if run_dir is not None else None
    if summary is None or not summary.is_file() or 'epoch' not in meta:
        return None
    if (meta.get('loader') or {}).get('batch', 0):
        return None  # a mid-epoch recovery checkpoint: never evaluated
    with open(summary) as f:
        for row in csv.DictReader(f):
            if int(row['epoch']) == int(meta['epoch']) and row.get('eval_top1') not in (None, ''):
                return float(row['eval_top1'])
    return None


# model arguments that only change the initialisation, not the architecture: a run that set them releases as is
INIT_ONLY_KWARGS = ('zero_init_last',)


def release_model_name(given: Optional[str], args: Dict[str, Any]) -> str:
    """The model to release into: as given, else the run's model (a timm name becomes its `_stim` name)."""
    name = given or args.get('model') or ''
    if name in STIM_BASES or name in CIFAR_ARCHS:
        return name
    if f'{name}_stim' in STIM_BASES:
        return f'{name}_stim'
    raise ReleaseError(f'unknown model {name!r}: release into one of {", ".join(sorted(STIM_BASES))} or a CIFAR '
                       f'base name ({", ".join(CIFAR_ARCHS)}).')


def train_command(args: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(`timm-stim-train ...` reproducing the run, the arguments that differ from the defaults)."""
    parser = train_parser()
    defaults = vars(parser.parse_args([]))
    options = {a.dest: a for a in parser._actions if a.option_strings}
    changed = {k: v for k, v in args.items() if k in options and k not in _MACHINE_KEYS and v != defaults.get(k)}
    parts = ['timm-stim-train']
    for key, value in changed.items():
        action, flag = options[key], options[key].option_strings[-1]
        if isinstance(action, argparse.BooleanOptionalAction):
            parts.append(flag if value else '--no-' + flag[2:])
        elif action.nargs == 0:
            parts.append(flag)
        elif isinstance(value, dict):
            parts += [flag] + [f'{k}={v}' for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            parts += [flag] + [str(v) for v in value]
        else:
            parts += [flag, str(value)]
    return ' '.join(parts), changed


def without_resume(command: str) -> str:
    """A recorded training command line without `--resume PATH` / `--resume=PATH` (and `--no-resume-opt`): a run
    resumed after a stop records the resuming process's line, but the weights come from the run, not the resume."""
    words, out = iter(command.split()), []
    for word in words:
        if word == '--resume':
            next(words, None)
        elif not word.startswith('--resume=') and word != '--no-resume-opt':
            out.append(word)
    return ' '.join(out)


# ------------------------------------------------------------------------------------------ evaluation
def _data_args(opts: argparse.Namespace, args: Dict[str, Any]) -> argparse.Namespace:
    """What `timm_stim.loaders.create_split_loader` needs, from the run's arguments and the release flags."""
    return argparse.Namespace(
        data_dir=opts.data_dir or args.get('data_dir'), dataset=args.get('dataset', ''),
        dataset_download=False, fast_data=args.get('fast_data'), data_cache_dir=args.get('data_cache_dir'),
        class_map=args.get('class_map', ''), batch_size=opts.batch_size, seed=args.get('seed', 42),
        channels_last=False, workers=opts.workers)


def model_stats(model: nn.Module, input_size: Sequence[int], flops: float) -> Dict[str, float]:
    """Params (M), GMACs and activations (M, outputs of conv / linear layers, as timm's tables count them)."""
    count = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: count.__setitem__(0, count[0] + o.numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return dict(params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                gmacs=round(flops / 2 / 1e9, 4), activations_m=round(count[0] / 1e6, 3))


def _top1(model: nn.Module, loader, device, input_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    # stored BN statistics, float32; FLOPs at the evaluation size
    return evaluate_depths(model, [None], loader, device=device, input_size=input_size)[0]


def _robustness(model, opts, data_args, train_config, data_config, loader, device, train_split: str
                ) -> List[Dict[str, Any]]:
    """Per-depth top-1 on `loader` (at the evaluation size of `data_config`), BN re-estimated per configuration on
    training-augmented images at the training size of `train_config` (as the run re-estimated it every epoch)."""
    if opts.robustness == 'none':
        return []
    configs = _sweep_configs(model, opts.robustness, opts.robustness_samples, opts.robustness_max,
                             data_args.seed)
    # training-augmented images, as training re-estimates BN after every epoch (issue 7's protocol): un-augmented
    # ones cost 2-4 points (benchmarks/results/parity.json); recalibrate_bn stops after --bn-recalib of them
    recalib = create_split_loader(data_args, train_config, train_split, None, True, device, augment=True) \
        if opts.bn_recalib else None
    rows = evaluate_depths(model, configs, loader, recalib, opts.bn_recalib, device,
                           input_size=data_config['input_size'])
    return _kept(rows)


def _kept(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    keep = ('depths', 'full', 'top1', 'top5', 'flops', 'params', 'flops_share')
    return [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keep} for r in rows]


def robustness_from(path: str, ckpt: Path, expected: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The sweep of a validate results file, when it measured these very weights as this release would: `expected`
    holds the record's fields (use_ema, precision, bn_recalib, input sizes, num_images) as release measures them."""
    try:
        rec = json.loads(Path(path).read_text())
        same_file = Path(rec.get('checkpoint') or '').resolve() == ckpt.resolve() \
            and Path(path).stat().st_mtime >= ckpt.stat().st_mtime
    except (OSError, ValueError, AttributeError) as e:
        raise ReleaseError(f'--robustness-from {path}: cannot read it ({e}).') from e
    words = str(rec.get('command', '')).split()  # files written before these fields: what the command line says
    rec = dict(dict(use_ema='--use-ema' in words, precision='float32' if '--amp' not in words else None,
                    bn_recalib_aug='--no-bn-recalib-aug' not in words), **rec)
    wrong = [k for k, v in expected.items() if rec.get(k) != v]
    wrong += [] if same_file else ['checkpoint (or it changed since)']
    wrong += [] if rec.get('results') else ['results (none)']
    if wrong:
        raise ReleaseError(f'--robustness-from {path} did not measure these weights as this release would: '
                           f'{", ".join(wrong)} differ; leave the flag out to measure the sweep here.')
    return _kept(rec['results'])


def _as_float16(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def choose_storage(model: nn.Module, state_dict: Dict[str, torch.Tensor], mode: str, full: Dict[str, Any],
                   loader: Iterable, device: torch.device, input_size: Optional[Sequence[int]] = None
                   ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The weights to store and their measured numbers: float32, or float16 (asked, or auto above the wheel limit)
    when it gives the same top-1. Above `RELEASE_MAX_MB` float16 is the only way to publish, so it is taken within
    `HALF_TOLERANCE` (the bar every tag is verified against) and the tag records the float16 top-1 it reproduces."""
    nbytes = state_dict_nbytes(state_dict)
    if mode == 'float32' or (mode == 'auto' and nbytes <= min(WHEEL_MAX_MB, W.RELEASE_MAX_MB) * 2 ** 20):
        return state_dict, full
    half = _as_float16(state_dict)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    try:
        measured = _top1(model, loader, device, input_size)
    finally:
        model.load_state_dict(state_dict)
    top1, top1_half = full['top1'], measured['top1']
    if top1_half == top1:
        _logger.info(f'float16 storage keeps top-1 {top1:.2f}: storing float16.')
        return half, full
    if nbytes > W.RELEASE_MAX_MB * 2 ** 20 and abs(top1_half - top1) <= HALF_TOLERANCE:
        _logger.info(f'float16 gives top-1 {top1_half:.2f} vs {top1:.2f} in float32; float32 is over '
                     f'{W.RELEASE_MAX_MB} MB: storing float16 and recording its top-1.')
        return half, measured
    if mode == 'float16' or nbytes > W.RELEASE_MAX_MB * 2 ** 20:
        raise ReleaseError(f'float16 weights give top-1 {top1_half:.2f}, float32 {top1:.2f}: not the same'
                           + (f' and float32 is over {W.RELEASE_MAX_MB} MB' if mode == 'auto' else
                              '; release with --storage float32') + '. Nothing was written.')
    _logger.info(f'float16 gives top-1 {top1_half:.2f} vs {top1:.2f}: keeping float32.')
    return state_dict, full


def check_logged(measured: float, logged: Optional[float], tolerance: float, skip: bool, weights: str) -> None:
    if logged is None:
        if skip:
            return
        raise ReleaseError(f'the run logged no validation top-1 for these {weights} weights (mid-epoch checkpoint, '
                           f'no summary.csv, or plain weights of a run that logged its EMA): release the '
                           f'checkpoint the run evaluated, or pass --skip-log-check.')
    if not math.isfinite(measured) or abs(measured - logged) > tolerance:
        raise ReleaseError(f're-evaluated top-1 {measured:.3f} misses the logged {logged:.3f} by '
                           f'{abs(measured - logged):.3f} pt (> --tolerance {tolerance}): different data, '
                           f'preprocessing or weights. Nothing was written.')


# ----------------------------------------------------------------------------------------------- release
def _evaluated_weights(args: Dict[str, Any]) -> str:
    """Whose accuracy the run logged: the EMA's when it kept one on the device (train.py), else the model's."""
    return 'ema' if args.get('model_ema') and not args.get('model_ema_force_cpu') else 'plain'


def _pick_weights(choice: str, args: Dict[str, Any]) -> str:
    return _evaluated_weights(args) if choice == 'auto' else choice


def release(opts: argparse.Namespace, argv: Sequence[str] = ()) -> WeightsEntry:
    """Check, re-evaluate and store one run as `<model>.<tag>`; raise ReleaseError (nothing written) on a problem."""
    ckpt, run_dir = resolve_checkpoint(opts.run, opts.checkpoint)
    meta = _load_meta(ckpt)
    args = run_args(run_dir, meta)
    model_name = release_model_name(opts.model, args)
    arch_kwargs = {k: v for k, v in (args.get('model_kwargs') or {}).items() if k not in INIT_ONLY_KWARGS}
    if arch_kwargs:
        raise ReleaseError(f'the run used --model-kwargs {arch_kwargs}: a pretrained tag cannot carry '
                           f'model arguments; release runs of the plain architecture.')
    check_default_is_stim(model_name, opts.tag, args.get('stim_mode', 'stpp'), opts.default,
                          opts.weights_dir or weights_dir())
    weights = _pick_weights(opts.weights, args)
    num_classes, in_chans = int(args.get('num_classes') or 1000), int(args.get('in_chans') or 3)
    try:
        state_dict = load_checkpoint_state_dict(ckpt, use_ema=weights == 'ema')
        model = build_checked_model(model_name, state_dict, num_classes, in_chans, source=str(ckpt))
        nbytes = state_dict_nbytes(state_dict)
        check_release_size(f'{model_name}.{opts.tag}', nbytes if opts.storage == 'float32' else
                           state_dict_nbytes(_as_float16(state_dict)))
        if not opts.out_of_wheel and nbytes <= WHEEL_MAX_MB * 2 ** 20:
            check_wheel_budget(read_manifest(opts.weights_dir or weights_dir()), f'{model_name}.{opts.tag}', nbytes)
    except (ValueError, FileNotFoundError) as e:
        raise ReleaseError(str(e)) from e
    device = torch.device(opts.device)
    model.to(device)
    # the run's two resolutions: it trained (and re-estimated BN) at train_config's, evaluated at data_config's
    train_config, data_config = run_data_configs(args, model, in_chans)
    data_args = _data_args(opts, args)
    split = opts.split or args.get('val_split') or 'validation'
    subset = opts.val_subset or args.get('val_subset')
    try:
        loader = create_split_loader(data_args, data_config, split, subset, False, device)
    except (FileNotFoundError, ValueError) as e:
        raise ReleaseError(f'cannot read the validation data: {e}') from e
    full = _top1(model, loader, device, data_config['input_size'])
    logged = logged_top1(run_dir, meta) if weights == _evaluated_weights(args) else None
    check_logged(full['top1'], logged, opts.tolerance, opts.skip_log_check, weights)
    if opts.robustness_from:
        depths = robustness_from(opts.robustness_from, ckpt, dict(
            use_ema=weights == 'ema', precision='float32', bn_recalib=opts.bn_recalib, bn_recalib_aug=True,
            input_size=list(data_config['input_size']),
            bn_recalib_input_size=list(train_config['input_size']) if opts.bn_recalib else None,
            num_images=_num_images(loader)))
    else:
        depths = _robustness(model, opts, data_args, train_config, data_config, loader, device,
                             args.get('train_split', 'train'))
    stored, measured = choose_storage(model, state_dict, opts.storage, full, loader, device,
                                      data_config['input_size'])
    command, changed = train_command(args)
    # the literal command line, when the run recorded it (a resumed process's, less its --resume)
    command = without_resume(args['command']) if args.get('command') else command
    launches = {'precision_launches': lines} if (lines := precision_launches(run_dir)) else {}
    dataset = opts.dataset_name or _dataset_name(data_args)
    train_args = dict(changed, stim_mode=args.get('stim_mode', 'stpp'), **launches)
    if train_args['stim_mode'] != 'off':  # which class-count rule of ST++'s logit terms trained it (losses.py)
        train_args['stim_logit_rule'] = logit_rule(model.num_classes, args.get('stim_amplitude'))
    info = dict(
        dataset=dataset, recipe=args.get('config') or '', command=command,
        metrics=dict(top1=round(measured['top1'], 3), top5=round(measured['top5'], 3)), license='apache-2.0',
        input_size=list(data_config['input_size']), mean=list(data_config['mean']), std=list(data_config['std']),
        crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation'],
        label_names=list(getattr(getattr(loader, 'dataset', None), 'classes', None) or []) or None,
        commit=args.get('git_commit') or source_commit(),
        source=f'{ckpt} ({"state_dict_ema" if weights == "ema" else "state_dict"})',
        train_args=train_args, depths=depths,
        # what the Hub card needs from benchmarks/results/, as it stands now: the card is built from the entry alone
        comparison=comparison_record(model_name, dataset, train_args.get('epochs'), load_results()),
        stats=model_stats(model.cpu(), data_config['input_size'], full['flops']),
        evaluation=dict(split=split, num_images=_num_images(loader), precision='float32',
                        logged_top1=logged, tolerance=opts.tolerance, bn_recalib=opts.bn_recalib,
                        data_dir=str(data_args.data_dir), depth_configurations=len(valid_depths(model)),
                        **({} if measured is full else {'float32_top1': round(full['top1'], 3)}),
                        **({'robustness_from': str(Path(opts.robustness_from).resolve())} if opts.robustness_from
                           else {})),
        release_command=' '.join(['timm-stim-release'] + list(argv)))
    return write_weights(stored, model_name, opts.tag, num_classes, opts.weights_dir or weights_dir(),
                         in_chans=in_chans, checked=True, default=opts.default, out_of_wheel=opts.out_of_wheel,
                         **info)


def _dataset_name(data_args: argparse.Namespace) -> str:
    name = (data_args.dataset or '').split('/')[-1] or os.path.basename(os.path.normpath(data_args.data_dir or ''))
    return name.replace('-', '').replace('_', '').lower() or 'unknown'


def _num_images(loader) -> Optional[int]:
    ds = getattr(loader, 'dataset', None)
    return len(ds) if ds is not None else None


def main(argv: Optional[Sequence[str]] = None) -> WeightsEntry:
    if not logging.getLogger().handlers:
        utils.setup_default_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    try:
        entry = release(opts, argv)
    except ReleaseError as e:
        print(f'timm-stim-release: error: {e}', file=sys.stderr)
        raise SystemExit(2)
    _logger.info(f'Released {entry.name}: top-1 {entry.metrics["top1"]} (logged '
                 f'{entry.evaluation.get("logged_top1")}), {entry.file}, sha256 {entry.sha256[:12]}...')
    return entry


def cli() -> None:
    """Console-script entry point (`timm-stim-release`)."""
    main()


if __name__ == '__main__':
    cli()
