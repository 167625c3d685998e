#!/usr/bin/env python3
"""Training-step overhead of ST / ST++ against the plain baseline, next to the FLOPs-implied overhead.

For each model, one run times training steps (forward + backward + SGD step through `StimulativeTrainer`) of
the baseline (`off`), `st` (K=1), `stpp` K=1 and `stpp` K=6 on the same batch. Modes are interleaved round-robin
(one step of each mode in turn) so that drift and noise from other processes hit every mode alike; the median
step time of each mode is reported as a ratio to the baseline's. The FLOPs-implied ratio counts the FLOPs of
the very plans (sub-network depths and input sizes) that were timed, with `torch.utils.flop_counter`: one
training step is the full pass plus K sub-network passes, each forward + backward.

    python benchmarks/overhead.py                     # resnet18 @ 32x32 and cifar_resnet20, batch 128
    python benchmarks/overhead.py --models resnet18 --steps 10 --warmup 2

Writes benchmarks/results/overhead.json (command, commit, machine, settings, numbers) and overhead.png.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import timm_stim  # noqa: E402,F401  (registers the CIFAR ResNets)
from timm_stim import StimulativeTrainer, run_subnetworks  # noqa: E402

MODES = {
    'off': dict(mode='off'),
    'st': dict(mode='st', subnets=1),
    'stpp_k1': dict(mode='stpp', subnets=1),
    'stpp_k6': dict(mode='stpp', subnets=6),
}
Plan = Tuple[Tuple[Tuple[int, ...], Optional[int]], ...]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['resnet18', 'cifar_resnet20'],
                   help='timm model names (CIFAR-size input); default: resnet18 cifar_resnet20')
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--warmup', type=int, default=3, help='untimed round-robin rounds first')
    p.add_argument('--steps', type=int, default=20, help='timed steps per mode')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'overhead.json'))
    p.add_argument('--no-plot', action='store_true')
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- FLOPs
class PassFlops:
    """FLOPs of one forward + backward of the full network or of one sub-network (cached per depths/size).

    A training step's FLOPs are additive over its passes (the KL and loss terms add no conv/matmul FLOPs), so
    a step costs flops(full) + sum_k flops(sub_k).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor):
        self.model = copy.deepcopy(model).train()
        self.x = x
        self.cache: Dict = {}

    def __call__(self, depths: Optional[Tuple[int, ...]], size: Optional[int]) -> int:
        key = (depths, size)
        if key not in self.cache:
            self.cache[key] = count_step_flops(self.model, self.x, ((depths, size),) if depths else ())
            if depths:
                self.cache[key] -= self(None, None)
        return self.cache[key]

    def step(self, plan: Plan) -> int:
        return self(None, None) + sum(self(d, s) for d, s in plan)


def count_step_flops(model: torch.nn.Module, x: torch.Tensor, plan: Plan) -> int:
    """FLOPs of run_subnetworks(model, x, plan) forward + backward (full pass plus every planned pass)."""
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        outs = run_subnetworks(model, x, list(plan))
        sum(o.float().logsumexp(-1).sum() for o in outs).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------- timing
def bench_model(name: str, args) -> Dict:
    torch.manual_seed(args.seed)
    base = timm.create_model(name, num_classes=10)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)

    runs = {}
    for mode, kw in MODES.items():
        model = copy.deepcopy(base).train()
        trainer = StimulativeTrainer(model, seed=args.seed, verbose=False, **kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[mode] = dict(trainer=trainer, opt=opt, times=[], cpu_times=[], plans=[])

    def one_step(r, record: bool):
        t0, c0 = time.perf_counter(), time.process_time()
        out = r['trainer'](x, y)
        r['opt'].zero_grad(set_to_none=True)
        out['loss'].backward()
        r['opt'].step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if record:
            r['times'].append(dt)
            r['cpu_times'].append(dc)
            r['plans'].append(tuple(zip(out['depths'], out['sizes'])))

    for i in range(args.warmup + args.steps):
        for mode in MODES:  # round-robin: one step of each mode in turn
            one_step(runs[mode], record=i >= args.warmup)

    flops = PassFlops(base, x)
    full = args.img_size
    results = {}
    base_median = statistics.median(runs['off']['times'])
    base_cpu = statistics.median(runs['off']['cpu_times'])
    base_flops = flops.step(())
    for mode, r in runs.items():
        step_flops = [flops.step(tuple((d, None if s == full else s) for d, s in plan)) for plan in r['plans']]
        median = statistics.median(r['times'])
        flops_ratio = statistics.fmean(step_flops) / base_flops
        results[mode] = dict(
            settings=MODES[mode] | {k: getattr(r['trainer'].stim, k) for k in ('subnets', 'space', 'loss', 'min_scale')},
            median_s=median, mean_s=statistics.fmean(r['times']), min_s=min(r['times']),
            ratio=median / base_median, cpu_median_s=statistics.median(r['cpu_times']),
            cpu_ratio=statistics.median(r['cpu_times']) / base_cpu, flops_per_step=statistics.fmean(step_flops), flops_ratio=flops_ratio,
            ratio_over_flops_ratio=(median / base_median) / flops_ratio,
            times_s=[round(t, 5) for t in r['times']], cpu_times_s=[round(t, 5) for t in r['cpu_times']],
            plans=[[[list(d), s] for d, s in plan] for plan in r['plans']],
        )
    # sanity check of FLOPs additivity on one real K=6 step
    plan6 = tuple((d, None if s == full else s) for d, s in runs['stpp_k6']['plans'][0])
    direct = count_step_flops(copy.deepcopy(base).train(), x, plan6)
    return dict(model=name, params=sum(p.numel() for p in base.parameters()), baseline_flops=base_flops,
                flops_additivity_check=dict(direct=direct, summed=flops.step(plan6)), modes=results)


def plot(report: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = report['results']
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, res in zip(axes[0], models):
        modes = list(res['modes'])
        xs = range(len(modes))
        ax.bar([i - 0.2 for i in xs], [res['modes'][m]['ratio'] for m in modes], 0.4, label='measured')
        ax.bar([i + 0.2 for i in xs], [res['modes'][m]['flops_ratio'] for m in modes], 0.4, label='FLOPs-implied')
        ax.set_xticks(list(xs), modes)
        ax.set_ylabel('step time / baseline')
        ax.set_title(res['model'])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = dict(
        command=command_line('benchmarks/overhead.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(args.threads, device='cpu', load_key='load_avg_start'),
        settings=dict(img_size=args.img_size, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps,
                      seed=args.seed, optimizer='SGD(lr=0.01, momentum=0.9)', modes=MODES,
                      timing='median wall time (perf_counter) of interleaved round-robin steps; step = '
                             'trainer(x, y) + zero_grad + backward + optimizer.step; cpu_ratio: same with process '
                             'CPU time (less sensitive to other processes on a shared machine)', flops='torch.utils.flop_counter.FlopCounterMode, '
                             'forward + backward of the timed plans'),
        results=[],
    )
    for name in args.models:
        if name not in timm.list_models():
            print(f'skipping {name}: not registered in timm', file=sys.stderr)
            continue
        res = bench_model(name, args)
        report['results'].append(res)
        print(f'{name} (batch {args.batch_size}, {args.img_size}x{args.img_size}, {args.steps} steps)')
        for mode, r in res['modes'].items():
            print(f'  {mode:8s} {r["median_s"] * 1e3:8.1f} ms  x{r["ratio"]:.2f}  (CPU time x{r["cpu_ratio"]:.2f})  '
                  f'FLOPs x{r["flops_ratio"]:.2f}  measured/FLOPs {r["ratio_over_flops_ratio"]:.2f}')
    write_report(report, Path(args.out), plot, args.no_plot)
    return report


if __name__ == '__main__':
    main()
