#!/usr/bin/env python3
"""`timm-stim-demo`: the project's main job in one command.

    timm-stim-demo                                   # or: python -m timm_stim.demo
    timm-stim-demo --model cifar_resnet20_stim.<tag> --epochs 2 --output output/demo

Takes the released ST++ checkpoint of `cifar_resnet20_stim` (its default pretrained tag, as
`timm.create_model('cifar_resnet20_stim', pretrained=True)` resolves it), fine-tunes it on Fashion-MNIST (Debian's
`dataset-fashion-mnist` files, 1 input channel: timm sums the pretrained first conv over its 3 input channels) with
the `--stim-*` settings the tag was trained with, through `timm_stim.train.main` (the command users train with),
then measures the full network and a few elastic depths spanning the FLOPs range on the test split, BN re-estimated
per configuration (`timm_stim.validate.evaluate_depths`). Prints a table, writes `demo.json` and `demo.png`
(accuracy against FLOPs) into `--output`.

`run(opts)` is the same job for Python callers (`benchmarks/finetune.py` runs it per tag, and with
`--from-scratch`, the same schedule from random initialisation).
"""
from __future__ import annotations

import argparse
import gzip
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import struct
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from timm.data import resolve_data_config
from timm.models import create_model, get_pretrained_cfg, load_checkpoint, split_model_name_tag

from . import train
from .data import FASHION_MNIST_DIR, fit_channels
from .depth import check_depths, depth_ranges, find_stages
from .elastic import depth_profile
from .loaders import create_split_loader
from .models.weights import MANIFEST_NAME, WeightsEntry, find_entry, weights_dir
from .sampling import build_space
from .trainer import StimConfig, add_stim_args
from .validate import evaluate_depths, parse_depths, plot_robustness

__all__ = ['build_parser', 'main', 'run', 'resolve_source', 'stim_flags', 'train_argv', 'pick_depths', 'trained_space',
           'DemoError', 'Source']

_logger = logging.getLogger('demo')

PROG = 'timm-stim-demo'
DEFAULT_MODEL = 'cifar_resnet20_stim'
# ST++ with one sub-network over the st space: the demo's settings when the weights record none (or are a baseline)
DEFAULT_STIM = ('--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st')
INPUT_SIZE = (1, 28, 28)  # Fashion-MNIST at its own size, one channel
NUM_CLASSES = 10
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 256
BN_IMAGES = 2000  # BN re-estimated on 2,000 training-augmented images, after training and per configuration
FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
         't10k-labels-idx1-ubyte.gz')


class DemoError(Exception):
    """A bad input: reported as one line (`timm-stim-demo: error: ...`), exit code 2."""


# ------------------------------------------------------------------------------------------------- flags
def _threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Fine-tune released ST++ weights on Fashion-MNIST and measure the full network and a few '
                    'elastic depths (accuracy and FLOPs).')
    p.add_argument('--model', default=None, metavar='MODEL[.TAG]',
                   help=f'model and pretrained tag (default: {DEFAULT_MODEL} with its default tag, i.e. the first '
                        f'{DEFAULT_MODEL} tag of the weights manifest)')
    p.add_argument('--epochs', type=train._positive_int, default=1, metavar='N')
    p.add_argument('--lr', type=float, default=0.02, help='SGD (Nesterov) learning rate, cosine to 0 per step')
    p.add_argument('--output', default='output/demo', metavar='DIR',
                   help='where the run directory, demo.json and demo.png go')
    p.add_argument('--data-dir', default=FASHION_MNIST_DIR, metavar='DIR',
                   help="Fashion-MNIST's *-ubyte.gz files (Debian package dataset-fashion-mnist)")
    p.add_argument('--train-subset', type=train._positive_int, default=None, metavar='N',
                   help='fine-tune on a class-balanced subset of N training images (quick looks, tests)')
    p.add_argument('--test-subset', type=train._positive_int, default=None, metavar='N',
                   help='evaluate on a class-balanced subset of N test images (quick looks, tests)')
    p.add_argument('--depths', type=parse_depths, nargs='+', default=None, metavar='D1,D2,...',
                   help="depth configurations to measure, e.g. '3,3,3 2,2,3 1,1,1' (default: the full network, "
                        "three in between and the smallest, spanning the FLOPs range)")
    p.add_argument('--threads', type=train._positive_int, default=_threads_default(), metavar='N',
                   help='torch CPU threads (default: every core this process may use)')
    p.add_argument('--no-amp', action='store_true',
                   help='float32 throughout (default: bfloat16 autocast when the CPU / GPU supports it, unless the '
                        'weights were trained in float32, as MobileNetV3 is here: bfloat16 slows its depthwise '
                        'convolutions)')
    p.add_argument('--from-scratch', action='store_true',
                   help='same schedule from random initialisation (the comparison of benchmarks/finetune.py)')
    p.add_argument('--seed', type=int, default=0)
    return p


# ----------------------------------------------------------------------------------------------- checks
def check_dataset(data_dir: str) -> None:
    missing = [f for f in FILES if not (Path(data_dir) / f).is_file()]
    if missing:
        raise DemoError(f'Fashion-MNIST not found at {data_dir} (missing {", ".join(missing)}): install Debian\'s '
                        f'package with `apt-get install dataset-fashion-mnist` (or run .ci/setup), or pass '
                        f'--data-dir DIR holding the four *-ubyte.gz files.')


def _idx_count(path: Path) -> int:
    """Number of items in a gzipped IDX file, from its header."""
    with gzip.open(path, 'rb') as f:
        return struct.unpack('>I', f.read(8)[4:8])[0]


@dataclass
class Source:
    """Where the fine-tuning starts: `arch` with pretrained `tag` (None: no weights) and its manifest entry."""
    arch: str
    tag: Optional[str]
    entry: Optional[WeightsEntry]

    @property
    def name(self) -> str:
        return f'{self.arch}.{self.tag}' if self.tag else self.arch


def _list_tags(arch: str) -> List[str]:
    import timm
    return timm.list_pretrained(f'{arch}.*')


def resolve_source(model: Optional[str], need_weights: bool = True) -> Source:
    """The model and pretrained tag to start from: `model` as given (`arch` alone means its default tag, as
    `timm.create_model(arch, pretrained=True)` resolves it). A DemoError, one line, for an unknown model, an
    unknown tag, or (with `need_weights`) a model without released weights."""
    name = model or DEFAULT_MODEL
    arch, tag = split_model_name_tag(name)
    try:
        train._check_model(argparse.Namespace(model=arch, stim_mode='off'))  # unknown name, with close names
    except ValueError as e:
        raise DemoError(str(e)) from None
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        tags = _list_tags(arch)
        raise DemoError(f'{name}: no such pretrained tag; released for {arch}: {", ".join(tags) or "none yet"}.') \
            from None
    has_weights = cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)
    if not has_weights:
        if not need_weights:
            return Source(arch, None, None)
        import timm
        released = timm.list_pretrained('*_stim*')
        listed = ', '.join(released) if released else "none yet; timm.list_pretrained('*_stim*') lists them"
        raise DemoError(
            f'no released weights for {arch} yet (no {arch} tag in {weights_dir() / MANIFEST_NAME}): pass '
            f'--model MODEL.TAG with a released tag ({listed}), or --from-scratch to run the same schedule from '
            f'random initialisation.')
    return Source(arch, cfg.tag or None, find_entry(arch, cfg.tag))


# --------------------------------------------------------------------------------------- training command
def _stim_parser() -> Tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """A parser of the `--stim-*` flags alone (`add_stim_args`, so a new knob is carried over too), and its group."""
    parser = argparse.ArgumentParser()
    return parser, add_stim_args(parser)


def _flags(values: Dict[str, Any]) -> List[str]:
    """The `--stim-*` flags whose value in `values` differs from its default; `--stim-mode` always."""
    _, group = _stim_parser()
    out = []
    for action in group._group_actions:
        key = action.dest
        value = values.get(key, action.default)
        if value == action.default and key != 'stim_mode':  # the mode is always written out
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else '--no-' + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def stim_flags(entry: Optional[WeightsEntry]) -> Tuple[List[str], str]:
    """The `--stim-*` flags the weights were trained with (the manifest entry's `train_args`, else its `command`),
    and where they came from. Baseline weights (`--stim-mode off`) and weights without a record get
    `DEFAULT_STIM`: the demo always fine-tunes with ST++."""
    values: Dict[str, Any] = {}
    where = ''
    if entry is not None and entry.train_args.get('stim_mode'):
        values, where = dict(entry.train_args), f'the recorded training arguments of {entry.name}'
    elif entry is not None and entry.command:
        tokens = shlex.split(entry.command)
        known, _ = train.build_parser().parse_known_args(tokens[1:] if tokens and not tokens[0].startswith('-')
                                                          else tokens)
        values, where = vars(known), f'the recorded command of {entry.name}'
    mode = values.get('stim_mode')
    if mode in (None, 'off'):
        why = 'baseline weights' if mode == 'off' else 'no recorded ST settings'
        return list(DEFAULT_STIM), f'the demo default ({why})'
    return _flags(values), where


def _method(stim: Sequence[str]) -> str:
    """'ST++' or 'ST', from the `--stim-mode` of the flags."""
    return 'ST' if list(stim)[list(stim).index('--stim-mode') + 1] == 'st' else 'ST++'


def trained_in_low_precision(entry: Optional[WeightsEntry]) -> bool:
    """False when the weights' recorded training ran in float32 (their train_args record no `amp`): the demo then
    fine-tunes in float32 too. Weights without a record, and random initialisation, count as low precision."""
    return entry is None or not entry.train_args or bool(entry.train_args.get('amp'))


def bf16_supported(device: torch.device) -> bool:
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train_argv(opts: argparse.Namespace, source: Source, stim: Sequence[str], amp: bool, output: str,
               experiment: str, log_interval: int, zero_init_last: bool = True) -> List[str]:
    """The `timm-stim-train` flags of the fine-tuning run (every value the demo chooses is written out).
    `zero_init_last`: the architecture has that argument (ResNets; not MobileNetV3), which random initialisation
    then sets to False so that every residual branch starts alive, as the sub-networks need."""
    argv = ['--dataset', 'fashion-mnist', '--data-dir', opts.data_dir,
            '--model', source.name, *([] if opts.from_scratch else ['--pretrained']),
            '--num-classes', str(NUM_CLASSES), '--input-size', *map(str, INPUT_SIZE),
            '--epochs', str(opts.epochs), '-b', str(BATCH_SIZE),
            '--opt', 'sgd', '--momentum', '0.9', '--lr', str(opts.lr), '--weight-decay', '5e-4',
            '--no-filter-bias-and-bn', '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '0',
            '--smoothing', '0', *(['--model-kwargs', 'zero_init_last=False'] if zero_init_last else []),
            '--crop-padding', '4', '--hflip', '0.5',
            '--channels-last', *(['--amp', '--amp-dtype', 'bfloat16'] if amp else ['--no-amp']),
            *stim, '--stim-bn-recalib', str(BN_IMAGES), '--val-split', '', '--seed', str(opts.seed),
            '--log-interval', str(log_interval), '--checkpoint-hist', '1', '--no-plot',
            '--output', output, '--experiment', experiment]
    if opts.train_subset:
        argv += ['--train-subset', str(opts.train_subset)]
    return argv


# --------------------------------------------------------------------------------------------- depths
def trained_space(model: torch.nn.Module, stim: Sequence[str]) -> List[List[int]]:
    """Per-stage kept-sets that the `--stim-*` flags `stim` train (their sampling space on `model`)."""
    args = _stim_parser()[0].parse_args(list(stim))
    return build_space(StimConfig.from_args(args).space, depth_ranges(find_stages(model)))


def pick_depths(model: torch.nn.Module, input_size: Sequence[int], count: int = 5,
                space: Optional[Sequence[Sequence[int]]] = None) -> List[Tuple[int, ...]]:
    """`count` configurations spanning the FLOPs range: the full network, the smallest, and between them the
    ones nearest to evenly spaced FLOPs; among equal FLOPs the most balanced one (kept fractions of the stages
    closest), then the one keeping more of the later stages. Full network first, FLOPs decreasing. With `space`
    (per-stage kept-sets) only the configurations it holds, which the fine-tune trains, and the full network."""
    stages = find_stages(model)
    profile = depth_profile(model, input_size)
    if space is not None:
        full = max(p['flops'] for p in profile)
        profile = [p for p in profile if p['flops'] == full or all(d in k for d, k in zip(p['depths'], space))]
    lo, hi = min(p['flops'] for p in profile), max(p['flops'] for p in profile)

    def spread(depths):
        fr = [(d - s.min_depth) / max(s.num_blocks - s.min_depth, 1) for s, d in zip(stages, depths)]
        return max(fr) - min(fr)

    picks: List[Tuple[int, ...]] = []
    for i in range(count):
        target = hi - (hi - lo) * i / max(count - 1, 1)
        best = min(profile, key=lambda p: (abs(p['flops'] - target), spread(p['depths']),
                                           tuple(-d for d in reversed(p['depths']))))
        if tuple(best['depths']) not in picks:
            picks.append(tuple(best['depths']))
    flops = {tuple(p['depths']): p['flops'] for p in profile}
    return sorted(picks, key=lambda d: -flops[d])


def _configs(opts: argparse.Namespace, source: Source, stim: Sequence[str], skeleton: torch.nn.Module
             ) -> List[Tuple[int, ...]]:
    """The configurations to measure, checked before any training (on a skeleton of the architecture): `--depths`,
    else `pick_depths` within the space that the fine-tune's `--stim-*` flags train."""
    try:
        stages = find_stages(skeleton)
    except TypeError as e:
        raise DemoError(f'--model {source.name}: {e}') from None
    if not opts.depths:
        return pick_depths(skeleton, INPUT_SIZE, space=trained_space(skeleton, stim))
    try:
        return [check_depths(stages, d) for d in opts.depths]
    except ValueError as e:
        raise DemoError(f'--depths: {e}') from None


# ---------------------------------------------------------------------------------------------- progress
def _fit(msg: str, width: int) -> str:
    """A progress line in `width` characters: spaces collapsed, then the loss parts and LR dropped (the ETA at the
    end stays), then cut."""
    msg = ' '.join(msg.split())
    for part in (r' main: \S+', r' KL: \S+', r' LR: \S+'):
        if len(msg) <= width:
            break
        msg = re.sub(part, '', msg)
    return msg[:width]


class _ProgressHandler(logging.StreamHandler):
    """Log lines as usual; on a terminal, the training progress lines ('Train: ...') rewrite one line in place."""

    def __init__(self, stream=None):
        super().__init__(stream or sys.stderr)
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.inline = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if self.tty and record.getMessage().startswith('Train:'):
                self.stream.write('\r' + _fit(msg, shutil.get_terminal_size((100, 20)).columns - 1) + '\x1b[K')
                self.inline = True
            else:
                self.stream.write(('\n' if self.inline else '') + msg + self.terminator)
                self.inline = False
            self.flush()
        except Exception:  # noqa: BLE001  (logging's own contract)
            self.handleError(record)


def _setup_logging() -> Optional[_ProgressHandler]:
    if logging.getLogger().handlers:  # keep the caller's logging (tests, notebooks, benchmarks)
        return None
    from timm.utils.log import FormatterNoInfo
    handler = _ProgressHandler()
    handler.setFormatter(FormatterNoInfo())
    logging.root.addHandler(handler)
    logging.root.setLevel(logging.INFO)
    return handler


# -------------------------------------------------------------------------------------------- evaluation
def _evaluate(opts: argparse.Namespace, model_name: str, checkpoint: str, configs, amp: bool
              ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The fine-tuned weights on the test split, per configuration with BN re-estimated on training images."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = create_model(model_name, num_classes=NUM_CLASSES, in_chans=INPUT_SIZE[0])
    load_checkpoint(model, checkpoint)
    model.to(device).to(memory_format=torch.channels_last)
    data_config = fit_channels(resolve_data_config({'input_size': INPUT_SIZE}, model=model), INPUT_SIZE[0])
    data_args = argparse.Namespace(
        data_dir=opts.data_dir, dataset='fashion-mnist', dataset_download=False, fast_data=None,
        data_cache_dir=None, class_map='', batch_size=EVAL_BATCH_SIZE, seed=opts.seed, channels_last=True,
        workers=0)
    test = create_split_loader(data_args, data_config, 'test', opts.test_subset, False, device)
    train_data = create_split_loader(data_args, data_config, 'train', opts.train_subset, True, device, augment=True)
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext
    rows = evaluate_depths(model, configs, test, train_data, BN_IMAGES, device, autocast, True, INPUT_SIZE)
    info = dict(test_images=len(test.dataset), bn_images=min(BN_IMAGES, len(train_data.dataset)),
                mean=list(data_config['mean']), std=list(data_config['std']))
    return rows, info


def format_table(result: Dict[str, Any]) -> str:
    rows = result['results']
    how = 'from random initialisation' if result['from_scratch'] else f'from {result["model"]}'
    lines = [f'Fashion-MNIST test split ({result["test_images"]:,} images), {result["epochs"]} epoch(s) of '
             f'{_method(result["stim"])} '
             f'{how}; BN re-estimated per configuration on {result["bn_images"]:,} training images:']
    labels = [','.join(map(str, r['depths'])) + (' (full)' if r['full'] else '') for r in rows]
    width = max([16] + [len(x) + 2 for x in labels])
    lines.append(f'  {"depths":<{width}}{"MFLOPs":>8}{"of full":>9}{"top-1 %":>10}')
    for label, r in zip(labels, rows):
        lines.append(f'  {label:<{width}}{r["flops"] / 1e6:>8.2f}{100 * r["flops_share"]:>8.0f}%{r["top1"]:>10.2f}')
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------- run
def run(opts: argparse.Namespace, argv: Optional[Sequence[str]] = None, quiet: bool = False) -> Dict[str, Any]:
    """Fine-tune and measure; returns the JSON dict (also written to `<output>/demo.json`). DemoError on bad input;
    `timm_stim.train.main`'s own exits (SystemExit) pass through."""
    t0 = time.time()
    check_dataset(opts.data_dir)
    source = resolve_source(opts.model, need_weights=not opts.from_scratch)
    stim, stim_from = stim_flags(source.entry)
    skeleton = create_model(source.arch, num_classes=NUM_CLASSES, in_chans=INPUT_SIZE[0])
    configs = _configs(opts, source, stim, skeleton)
    torch.set_num_threads(opts.threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    amp = not opts.no_amp and bf16_supported(device) and trained_in_low_precision(source.entry)
    n_all = _idx_count(Path(opts.data_dir) / FILES[0])
    n_train = min(opts.train_subset or n_all, n_all)
    per_epoch = max(n_train // BATCH_SIZE, 1)
    handler = _setup_logging()
    tty = handler is not None and handler.tty
    log_interval = max(1, per_epoch // (100 if tty else 10))
    experiment = 'from-scratch' if opts.from_scratch else 'finetune'
    argv_train = train_argv(opts, source, stim, amp, opts.output, experiment, log_interval,
                            zero_init_last='zero_init_last' in inspect.signature(type(skeleton)).parameters)
    say = (lambda *a, **k: None) if quiet else print
    what = f'training {source.arch} from random initialisation' if opts.from_scratch else \
        f'fine-tuning {source.name}' + (f' ({source.entry.dataset} weights)' if source.entry and source.entry.dataset
                                        else '')
    say(f'{PROG}: {what} on Fashion-MNIST, {n_train:,} images x {opts.epochs} '
        f'epoch(s), {" ".join(stim)} (from {stim_from}), {opts.threads} thread(s), '
        f'{"bfloat16" if amp else "float32"}; then {len(configs)} depth configurations on the test split.',
        flush=True)

    t_train = time.time()
    res = train.main(argv_train)
    t_eval = time.time()
    run_dir = res['output_dir']
    checkpoint = os.path.join(run_dir, 'last.pth.tar')
    rows, info = _evaluate(opts, source.name, checkpoint, configs, amp)
    t_end = time.time()

    keep = ('depths', 'full', 'flops', 'params', 'flops_share', 'top1', 'top5', 'loss', 'bn_images')
    rows = [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keep if k in r} for r in rows]
    entry = source.entry
    result = dict(
        model=source.name, from_scratch=bool(opts.from_scratch),
        pretrained=None if entry is None else dict(
            tag=entry.name, dataset=entry.dataset, file=entry.file, sha256=entry.sha256, metrics=entry.metrics,
            mode=entry.mode),
        dataset='fashion-mnist', data_dir=opts.data_dir, train_images=n_train,
        input_size=list(INPUT_SIZE), epochs=opts.epochs, lr=opts.lr, batch_size=BATCH_SIZE,
        precision='bfloat16' if amp else 'float32', threads=opts.threads, stim=stim, stim_from=stim_from,
        command=' '.join([PROG] + list(sys.argv[1:] if argv is None else argv)),
        train_command=' '.join(['timm-stim-train'] + [shlex.quote(a) for a in argv_train]),
        run_dir=run_dir, checkpoint=checkpoint, **info, results=rows,
        seconds=dict(setup=round(t_train - t0, 1), train=round(t_eval - t_train, 1),
                     evaluate=round(t_end - t_eval, 1), total=round(t_end - t0, 1)))
    return result


def write_outputs(result: Dict[str, Any], output: str) -> Tuple[str, Optional[str]]:
    """`demo.json` and `demo.png` (accuracy against MFLOPs; None without matplotlib) in `output`."""
    os.makedirs(output, exist_ok=True)
    out_json = os.path.join(output, 'demo.json')
    png = None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f'{PROG}: matplotlib is not installed: no plot (pip install matplotlib).')
    else:
        how = 'from scratch' if result['from_scratch'] else f'from {result["model"]}'
        png = plot_robustness(result['results'], os.path.join(output, 'demo.png'),
                              f'Fashion-MNIST, {result["epochs"]} epoch(s) {_method(result["stim"])} {how}')
    result['plot'] = png
    with open(out_json, 'w') as f:
        json.dump(result, f, indent=2)
    return out_json, png


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    opts = build_parser().parse_args(argv)
    try:
        result = run(opts, argv)
    except DemoError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        raise SystemExit(2)
    out_json, png = write_outputs(result, opts.output)
    print()
    print(format_table(result))
    print(f'\nNumbers: {out_json}' + (f'\nPlot:    {png}' if png else ''))
    print(f'Took {result["seconds"]["total"]:.0f} s ({result["seconds"]["train"]:.0f} s training, '
          f'{result["seconds"]["evaluate"]:.0f} s measuring).')
    return result


def cli() -> None:
    """Console-script entry point (`timm-stim-demo`)."""
    main()


if __name__ == '__main__':
    cli()
