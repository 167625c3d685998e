#!/usr/bin/env python3
"""Eval throughput of the `*_stim` models against their timm base models, and of elastic depths against FLOPs.

1. `<arch>_stim` vs `<arch>`: same weights, same input, eval + no_grad. The two are timed interleaved (one
   batch of each in turn, alternating which goes first), so that drift and other processes hit both alike.
   Every batch is timed twice: CPU time of this process (`time.process_time`; with one torch thread this is
   the work done, unaffected by other processes taking the cores) and wall time. img/s is images per second of
   the median batch time; the ratio uses CPU time, the wall-time ratio is recorded next to it. The ratio `_stim / base` should be 1.00 +- 0.03: a `_stim`
   model adds nothing to the forward at full depth.
2. Elastic depth: for a few models, a representative set of depth configurations (evenly spaced in FLOPs,
   always the smallest and the full network) is set with `set_depth` and timed round-robin; the time share
   (batch time / full network's) is reported next to the FLOPs share from `depth_profile`.

Batch sizes are chosen per model so that one batch is about `--gflops-per-batch` GFLOPs (inputs are small to
keep the run short on a CPU: CIFAR models at 32x32, ImageNet models at `--img-size`).

    python benchmarks/inference.py                     # all *_stim models, ~10 min on 2 CPU cores
    python benchmarks/inference.py --models resnet18_stim cifar_resnet20_stim --rounds 10

Writes benchmarks/results/inference.json (command, commit, machine, settings, numbers) and inference.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import timm_stim  # noqa: E402
from timm_stim.models import STIM_BASES  # noqa: E402

ELASTIC_DEFAULT = ['cifar_resnet20_stim', 'cifar_resnet56_stim', 'resnet50_stim', 'mobilenetv3_large_100_stim']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=None, help='`_stim` names (default: all registered)')
    p.add_argument('--elastic-models', nargs='+', default=ELASTIC_DEFAULT)
    p.add_argument('--img-size', type=int, default=112, help='input side of the ImageNet models')
    p.add_argument('--gflops-per-batch', type=float, default=2.0, help='sets each model\'s batch size')
    p.add_argument('--max-batch', type=int, default=64)
    p.add_argument('--rounds', type=int, default=25, help='timed batches per model (and per depth)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--configs', type=int, default=7, help='depth configurations per elastic model')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (1: far less noise when other processes share the cores)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'inference.json'))
    p.add_argument('--no-plot', action='store_true')
    p.add_argument('--replot', action='store_true', help='only redraw the PNG from an existing --out JSON')
    return p.parse_args(argv)


def _side(name: str, args) -> int:
    return timm.models.get_pretrained_cfg(name).input_size[-1] if name.startswith('cifar_') else args.img_size


def _batch(flops_per_image: int, args) -> int:
    return int(min(args.max_batch, max(1, round(args.gflops_per_batch * 1e9 / flops_per_image))))


def interleaved(fns: Sequence[Callable[[], None]], rounds: int, warmup: int) -> Tuple[List[float], List[float]]:
    """Time each fn `rounds` times, round-robin (order rotated every round).

    Returns the median CPU time and the median wall time of each fn's batches.
    """
    cpu: List[List[float]] = [[] for _ in fns]
    wall: List[List[float]] = [[] for _ in fns]
    for r in range(warmup + rounds):
        order = list(range(len(fns)))
        k = r % len(fns)
        for i in order[k:] + order[:k]:
            c, w = time.process_time(), time.perf_counter()
            fns[i]()
            if r >= warmup:
                cpu[i].append(time.process_time() - c)
                wall[i].append(time.perf_counter() - w)
    return [statistics.median(t) for t in cpu], [statistics.median(t) for t in wall]


@torch.no_grad()
def bench_pair(name: str, args) -> Dict:
    base_name = STIM_BASES[name]
    torch.manual_seed(0)
    base = timm.create_model(base_name).eval()
    stim = timm.create_model(name).eval()
    stim.load_state_dict(base.state_dict(), strict=True)
    side = _side(name, args)
    flops = stim.depth_profile(input_size=(3, side, side), depths=[timm_stim.full_depths(stim)])[0]['flops']
    batch = _batch(flops, args)
    x = torch.randn(batch, 3, side, side)
    assert torch.equal(stim(x), base(x))
    (c_base, c_stim), (w_base, w_stim) = interleaved([lambda: base(x), lambda: stim(x)], args.rounds, args.warmup)
    res = dict(model=name, base=base_name, input_size=[3, side, side], batch=batch, gflops_per_image=flops / 1e9,
               base_img_s=batch / c_base, stim_img_s=batch / c_stim, ratio=c_base / c_stim,
               base_img_s_wall=batch / w_base, stim_img_s_wall=batch / w_stim, ratio_wall=w_base / w_stim)
    print(f'{name:28s} vs {base_name:24s} batch {batch:3d} @ {side:3d}px: {res["base_img_s"]:8.1f} / '
          f'{res["stim_img_s"]:8.1f} img/s (CPU time) ratio {res["ratio"]:.3f} (wall: {res["ratio_wall"]:.3f})',
          flush=True)
    return res


def _representative(profile: List[Dict], n: int) -> List[Dict]:
    """`n` configurations evenly spaced in FLOPs share, always including the smallest and the full network."""
    ranked = sorted(profile, key=lambda p: p['flops'])
    if len(ranked) <= n:
        return ranked
    idx = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
    return [ranked[i] for i in idx]


@torch.no_grad()
def bench_elastic(name: str, args) -> Dict:
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    side = _side(name, args)
    profile = model.depth_profile(input_size=(3, side, side))
    chosen = _representative(profile, args.configs)
    batch = _batch(chosen[-1]['flops'], args)
    x = torch.randn(batch, 3, side, side)

    def at(depths):
        def fn():
            model.set_depth(depths)
            model(x)
        return fn

    cpu, wall = interleaved([at(p['depths']) for p in chosen], args.rounds, args.warmup)
    model.set_depth(None)
    configs = []
    for p, c, w in zip(chosen, cpu, wall):
        configs.append(dict(depths=list(p['depths']), gflops_per_image=p['flops'] / 1e9, flops_share=p['flops_share'],
                            params=p['params'], img_s=batch / c, time_share=c / cpu[-1],
                            img_s_wall=batch / w, time_share_wall=w / wall[-1]))
        print(f'  {name:28s} depths {str(p["depths"]):24s} FLOPs share {p["flops_share"]:.3f} '
              f'time share {c / cpu[-1]:.3f} ({batch / c:.1f} img/s CPU time; wall share {w / wall[-1]:.3f})',
              flush=True)
    return dict(model=name, input_size=[3, side, side], batch=batch, num_valid_depths=len(profile),
                configs=configs)


def plot(report: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(18, 5.5))
    pairs = report['stim_vs_base']
    a.axvspan(0.97, 1.03, color='tab:green', alpha=0.15, label='1.00 +- 0.03')
    a.plot([p['ratio'] for p in pairs], range(len(pairs)), 'o', label='CPU time')
    a.plot([p['ratio_wall'] for p in pairs], range(len(pairs)), 'x', color='gray', label='wall time')
    a.set_yticks(range(len(pairs)), [p['model'] for p in pairs])
    a.axvline(1.0, color='k', lw=0.8)
    a.set_xlim(0.9, 1.1)
    a.set_xlabel('img/s ratio  _stim / timm base (eval)')
    a.legend(loc='lower right', fontsize=8)
    for m in report['elastic']:
        cs = m['configs']
        b.plot([x['flops_share'] for x in cs], [x['time_share'] for x in cs], 'o', label=m['model'])
        c.plot([x['gflops_per_image'] for x in cs], [x['img_s'] for x in cs], 'o-', label=m['model'])
    b.plot([0, 1], [0, 1], 'k--', lw=0.8, label='time share = FLOPs share')
    b.set_xlabel('FLOPs share of the full network')
    b.set_ylabel('time share (CPU time per batch)')
    b.set_title('elastic depths: time vs FLOPs')
    b.legend(fontsize=8)
    c.set_xscale('log')
    c.set_yscale('log')
    c.set_xlabel('GFLOPs per image (depth_profile)')
    c.set_ylabel('img/s per CPU-second (eval, set_depth)')
    c.set_title('elastic depths: img/s vs FLOPs')
    c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix('.png'))
        return
    torch.set_num_threads(args.threads)
    models = args.models or timm.list_models('*_stim')
    unknown = [m for m in models + args.elastic_models if m not in STIM_BASES]
    if unknown:
        raise SystemExit(f'unknown `_stim` models {unknown}; choose from {sorted(STIM_BASES)}')
    t0 = time.time()
    report = dict(
        command=command_line('benchmarks/inference.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(args.threads, device='cpu', load_key='load_avg_start'), settings=dict(
        img_size_imagenet=args.img_size, img_size_cifar=32, gflops_per_batch=args.gflops_per_batch,
        max_batch=args.max_batch, rounds=args.rounds, warmup=args.warmup, configs_per_model=args.configs,
        statistic='median batch time; CPU time (process_time) primary, wall time recorded', mode='eval, torch.no_grad, float32, NCHW'))
    report['stim_vs_base'] = [bench_pair(m, args) for m in models]
    report['elastic'] = [bench_elastic(m, args) for m in args.elastic_models]
    ratios = [p['ratio'] for p in report['stim_vs_base']]
    walls = [p['ratio_wall'] for p in report['stim_vs_base']]
    report['summary'] = dict(
        ratio_min=min(ratios), ratio_max=max(ratios), ratio_median=statistics.median(ratios),
        within_3pct=all(abs(r - 1) <= 0.03 for r in ratios), wall_ratio_min=min(walls), wall_ratio_max=max(walls),
        seconds=time.time() - t0)
    write_report(report, Path(args.out), plot, args.no_plot, end_key=('summary', 'load_avg_end'))
    print(json.dumps(report['summary']))


if __name__ == '__main__':
    main()
