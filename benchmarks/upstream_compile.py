#!/usr/bin/env python3
"""What upstream timm train.py's `--torchcompile` costs with `StimulativeTrainer` as its task.

Upstream v1.0.27 and later call `task.compile(backend, mode)` before DDP: `StimulativeTrainer.compile` compiles
each residual block (`depth.compile_blocks`, static shapes). Upstream v1.0.23 to v1.0.26 wrap the whole task,
`torch.compile(task)`. Random smaller sub-network inputs (ST++: side uniform in [int(0.43 H), H]) give every
block new input shapes, so both recompile while new sizes appear. This script runs the same seeded training
steps eagerly and under each route, and records per-step wall time, the graphs dynamo compiled and the
graph breaks it reported.

    python benchmarks/upstream_compile.py --threads 1 --steps 40

Writes benchmarks/results/upstream_compile.json (command, commit, machine, numbers).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import timm_stim  # noqa: E402,F401
from timm_stim.trainer import StimulativeTrainer  # noqa: E402

ROUTES = ('eager', 'task.compile', 'torch.compile(task)')


def _run(route: str, args: argparse.Namespace) -> Dict[str, Any]:
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    task = StimulativeTrainer(model, criterion=torch.nn.CrossEntropyLoss(), mode='stpp', subnets=args.subnets,
                              verbose=False)
    opt = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.05, momentum=0.9)
    step_fn = task
    if route == 'task.compile':
        task.compile(backend=args.backend)  # what upstream >= v1.0.27 calls
    elif route == 'torch.compile(task)':
        step_fn = torch.compile(task, backend=args.backend)  # what upstream v1.0.23 .. v1.0.26 does
    g = torch.Generator().manual_seed(1)
    times, sizes = [], set()
    t_start = time.perf_counter()
    for _ in range(args.steps):
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
        y = torch.randint(0, 10, (args.batch_size,), generator=g)
        t0 = time.perf_counter()
        out = step_fn(x, y)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        sizes.update(out['sizes'])
        if time.perf_counter() - t_start > args.max_seconds:
            break
    tail = times[len(times) // 2:]
    return dict(route=route, steps=len(times), step_s=times, first_step_s=times[0],
                median_second_half_s=statistics.median(tail), total_s=sum(times), distinct_sizes=len(sizes),
                unique_graphs=int(counters['stats']['unique_graphs']), dynamo_stats=dict(counters['stats']),
                graph_breaks=int(sum(counters['graph_break'].values())))


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='cifar_resnet20')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--subnets', type=int, default=6)
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--max-seconds', type=float, default=600., help='stop a route after this long')
    p.add_argument('--backend', default='inductor')
    p.add_argument('--routes', nargs='+', default=list(ROUTES), choices=ROUTES)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'upstream_compile.json'))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = dict(command=command_line('benchmarks/upstream_compile.py', argv), commit=git_commit(),
                  dirty=git_dirty(), machine=machine_info(args.threads, 'cpu'), config=vars(args), results=[])
    for route in args.routes:
        res = _run(route, args)
        print(f'{route:>20}: {res["steps"]} steps, first {res["first_step_s"]:.1f}s, total {res["total_s"]:.1f}s, '
              f'median 2nd half {res["median_second_half_s"]:.3f}s, {res["unique_graphs"]} graphs, '
              f'{res["graph_breaks"]} graph breaks, {res["distinct_sizes"]} input sizes', flush=True)
        report['results'].append(res)
        write_report(report, Path(args.out), no_plot=True)  # after every route: a slow one may be stopped
    return report


if __name__ == '__main__':
    main()
