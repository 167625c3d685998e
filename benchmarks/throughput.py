#!/usr/bin/env python3
"""Baseline training throughput: timm-stim's in-memory tensor data path vs a plain PyTorch loop.

Plain loop: torchvision `ImageFolder` + `DataLoader(num_workers=2)` with RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize. Ours: `timm_stim.data.TensorLoader` (decoded once into a uint8 cache,
whole-batch crop / flip / normalise) feeding `StimulativeTrainer(mode='off')`, optionally with channels-last and
per-block `torch.compile` (`timm-stim-train --channels-last --torchcompile`). Same model, batch, optimizer and
loss (SGD momentum 0.9, cross-entropy). Variants run interleaved for several rounds (the median counts), so a
load change on the machine hits all of them alike.

    python benchmarks/throughput.py --data-dir ../shared/data/cifar10 --model cifar_resnet20

Writes benchmarks/results/throughput.json (command, commit, machine, numbers). Target: ours >= 1.2x plain.

    python benchmarks/throughput.py --sweep --out benchmarks/results/throughput_precision.json

measures instead float32 against bfloat16 autocast (`--amp --amp-dtype bfloat16`), baseline and ST++ (K=1), for
the CIFAR ResNets and the timm `_stim` models at 32x32, and for the CIFAR ResNets one thread, two threads, and two
one-thread processes side by side (the way the long runs share this machine's two cores). On a CPU without
bfloat16 instructions (AVX2 only), where bfloat16 is emulated, the one-thread check is enough:

    python benchmarks/throughput.py --sweep --sweep-models cifar_resnet20 resnet18_stim --sweep-layouts 1x1t \
        --out benchmarks/results/throughput_precision_avx2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import timm_stim  # noqa: E402,F401
from timm_stim.data import TensorLoader, load_image_tensors  # noqa: E402
from timm_stim.depth import compile_blocks  # noqa: E402
from timm_stim.models import CIFAR10_MEAN as MEAN, CIFAR10_STD as STD  # noqa: E402
from timm_stim.trainer import StimulativeTrainer  # noqa: E402



def _model(name: str, channels_last: bool = False, compiled: bool = False) -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10).train()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compiled:
        compile_blocks(m)
    return m


def _time_steps(step, batches, warmup: int, steps: int) -> float:
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def plain_loop(args, model_name: str, channels_last: bool = False) -> float:
    """torchvision ImageFolder + DataLoader(num_workers) + a hand-written step (the reference)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = ImageFolder(os.path.join(args.data_dir, 'train'), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         drop_last=True, persistent_workers=False)
    model = _model(model_name, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(x, y):
        loss = crit(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        return _time_steps(step, loader, args.warmup, args.steps)
    finally:
        del loader


def ours(args, model_name: str, data, channels_last: bool, compiled: bool, epoch: int) -> float:
    """timm-stim baseline: TensorLoader + StimulativeTrainer(mode='off')."""
    loader = TensorLoader(data, args.batch_size, True, MEAN, STD, seed=0, channels_last=channels_last)
    loader.set_epoch(epoch)
    model = _model(model_name, channels_last, compiled)
    task = StimulativeTrainer(model, criterion=nn.CrossEntropyLoss(), mode='off', verbose=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x, y):
        loss = task(x, y)['loss']
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _time_steps(step, loader, args.warmup + (3 if compiled else 0), args.steps)


def data_only(args, data) -> dict:
    """Loader img/s with no model: what each data path costs on its own."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    dl = torch.utils.data.DataLoader(ImageFolder(os.path.join(args.data_dir, 'train'), transform=tf),
                                     batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
    out = {}
    for name, loader in (('plain_imagefolder_dataloader', dl),
                         ('ours_tensor_loader', TensorLoader(data, args.batch_size, True, MEAN, STD, seed=0))):
        out[name] = round(_time_steps(lambda x, y: None, loader, 3, 4 * args.steps), 1)
    return out


def plot(result: dict, out_png: Path) -> None:
    """Bar chart of median img/s per variant, ratio to the plain loop on each bar."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(result['img_per_s'])
    vals = [result['img_per_s'][k]['median'] for k in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.barh(names, vals, color=['C7'] + ['C0'] * (len(names) - 1))
    for b, k in zip(bars, names):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f' {result["ratio_vs_plain"][k]:.2f}x', va='center')
    ax.set_xlabel('training img/s (median of rounds)')
    ax.set_title(f'{result["setup"]["model"]}, batch {result["setup"]["batch_size"]}, '
                 f'{result["machine"]["cpu_count"]} CPU cores')
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ precision / threads sweep (--sweep)
# timed steps of batch 128 per model, so that each measurement takes a few seconds on this CPU
SWEEP_MODELS = {'cifar_resnet20': 20, 'cifar_resnet56': 8, 'resnet18_stim': 8, 'resnet50_stim': 4,
                'wide_resnet50_2_stim': 2, 'mobilenetv3_large_100_stim': 6}
LAYOUTS = {'1x1t': (1, 1), '1x2t': (1, 2), '2x1t': (2, 1)}  # (processes side by side, threads each)


def sweep_worker(model_name: str, precision: str, mode: str, steps: int, threads: int, data_dir: str) -> float:
    """img/s of one training process: channels-last, SGD, `StimulativeTrainer(mode)` (stpp: K=1), autocast.
    `mode` may also be a JSON object of `StimConfig` fields (an arm of benchmarks/cifar10.py, see arm_cost.py)."""
    from contextlib import nullcontext
    torch.set_num_threads(threads)
    data = load_image_tensors('', data_dir, 'train', subset=128 * (steps + 8))
    loader = TensorLoader(data, 128, True, MEAN, STD, seed=0, channels_last=True)
    model = _model(model_name, channels_last=True)
    stim = json.loads(mode) if mode.startswith('{') else dict(mode=mode, **({'subnets': 1} if mode == 'stpp' else {}))
    task = StimulativeTrainer(model, criterion=nn.CrossEntropyLoss(), verbose=False, **stim)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if precision == 'bf16' else nullcontext
    if task.stim.mode != 'off':  # every sub-network input size once, so one-off kernel set-up is not timed
        for side in range(int(task.stim.min_scale * 32), 33):
            with autocast():
                model(torch.randn(4, 3, side, side).contiguous(memory_format=torch.channels_last)).sum().backward()
        opt.zero_grad(set_to_none=True)

    def step(x, y):
        with autocast():
            loss = task(x, y)['loss']
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _time_steps(step, loader, 3, steps)


def sweep_point(args, model_name: str, precision: str, mode: str, layout: str, steps: Optional[int] = None) -> float:
    """Total img/s of `layout`: n processes side by side with t threads each (summed); `steps` timed steps each
    (default: the model's in SWEEP_MODELS)."""
    import subprocess
    n, t = LAYOUTS[layout]
    steps = steps or SWEEP_MODELS[model_name]
    cmd = [sys.executable, __file__, '--worker', model_name, precision, mode, str(steps), str(t),
           '--data-dir', args.data_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(t))
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f'worker failed: {model_name} {precision} {mode} {layout}')
    return sum(float(o.strip().splitlines()[-1]) for o in outs)


def sweep(args, argv) -> None:
    """float32 vs bfloat16 autocast, baseline and ST++ (K=1), one vs two threads and two one-thread processes side
    by side, for the CIFAR ResNets (every layout) and the timm `_stim` models (one thread) at 32x32."""
    machine = machine_info(device='cpu', load_key='loadavg_start')
    rows = []
    for model_name in args.sweep_models:
        layouts = [k for k in (LAYOUTS if model_name.startswith('cifar_') else ['1x1t']) if k in args.sweep_layouts]
        for mode in ('off', 'stpp'):
            for layout in layouts:
                rates = {p: round(sweep_point(args, model_name, p, mode, layout), 1) for p in ('fp32', 'bf16')}
                rows.append(dict(model=model_name, mode=mode, layout=layout, img_per_s=rates,
                                 bf16_speedup=round(rates['bf16'] / rates['fp32'], 2)))
                print(json.dumps(rows[-1]), flush=True)
    result = dict(command=command_line('benchmarks/throughput.py', argv), commit=git_commit(), machine=machine,
                  setup=dict(batch_size=128, input=32, channels_last=True, optimizer='SGD momentum 0.9',
                             stpp='K=1, default min_scale, every input size warmed up first',
                             layouts={k: f'{n} process(es) x {t} thread(s), img/s summed'
                                      for k, (n, t) in LAYOUTS.items()},
                             timed_steps=SWEEP_MODELS, warmup_steps=3),
                  rows=rows)
    write_report(result, Path(args.out), None, end_key=('machine', 'loadavg_end'))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sweep', action='store_true',
                   help='precision / threads sweep instead of the data-path comparison (writes --out)')
    p.add_argument('--sweep-models', nargs='+', default=list(SWEEP_MODELS), choices=list(SWEEP_MODELS))
    p.add_argument('--sweep-layouts', nargs='+', default=list(LAYOUTS), choices=list(LAYOUTS),
                   help='thread layouts of the CIFAR ResNets (the timm models are measured at 1x1t only)')
    p.add_argument('--worker', nargs=5, default=None, help=argparse.SUPPRESS)
    p.add_argument('--data-dir', default=str(ROOT / '..' / 'shared' / 'data' / 'cifar10'))
    p.add_argument('--model', default='cifar_resnet20')
    p.add_argument('-b', '--batch-size', type=int, default=128)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--steps', type=int, default=25)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile variants')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'throughput.json'))
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, 'train')):
        raise FileNotFoundError(f'{args.data_dir}/train not found: pass --data-dir with a CIFAR-10 image folder.')
    if args.worker:
        m, prec, mode, steps, threads = args.worker
        print(sweep_worker(m, prec, mode, int(steps), int(threads), args.data_dir))
        return
    if args.sweep:
        return sweep(args, argv)

    machine = machine_info(device='cpu', load_key='loadavg_start')
    t0 = time.perf_counter()
    data = load_image_tensors('', args.data_dir, 'train')
    cache_s = time.perf_counter() - t0

    # name -> None (plain loop, NCHW), 'cl' (plain loop, channels-last) or (channels_last, compiled) for ours
    variants = {'plain_imagefolder_dataloader': None, 'plain_channels_last': 'cl', 'ours': (False, False),
                'ours_channels_last': (True, False)}
    if not args.no_compile:
        variants.update({'ours_compile_blocks': (False, True), 'ours_channels_last_compile_blocks': (True, True)})
    rates = {k: [] for k in variants}
    errors = {}
    for r in range(args.rounds):
        for name, cfg in variants.items():
            if name in errors:
                continue
            try:
                if cfg is None or cfg == 'cl':
                    rate = plain_loop(args, args.model, channels_last=cfg == 'cl')
                else:
                    rate = ours(args, args.model, data, *cfg, epoch=r)
            except Exception as e:  # e.g. no C++ compiler for inductor: record, keep going
                errors[name] = f'{type(e).__name__}: {e}'[:500]
                continue
            rates[name].append(rate)
            print(f'round {r}: {name:36s} {rate:8.1f} img/s', flush=True)

    loader_rates = data_only(args, data)
    print(f'data only: {loader_rates}', flush=True)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    plain = med['plain_imagefolder_dataloader']
    ours_best = max((k for k in med if k.startswith('ours')), key=lambda k: med[k])
    result = dict(
        command=command_line('benchmarks/throughput.py', argv), commit=git_commit(), machine=machine,
        setup=dict(model=args.model, batch_size=args.batch_size, dataloader_workers=args.workers,
                   warmup_steps=args.warmup, timed_steps=args.steps, rounds=args.rounds,
                   train_images=len(data), cache_load_or_build_s=round(cache_s, 2)),
        img_per_s={k: dict(median=round(med[k], 1), rounds=[round(x, 1) for x in v]) for k, v in rates.items() if v},
        ratio_vs_plain={k: round(v / plain, 3) for k, v in med.items()},
        data_only_img_per_s=loader_rates,
        best_ours=ours_best,
        best_ratio=round(med[ours_best] / plain, 3),
        # like for like: both loops with channels-last, so only the data path differs
        channels_last_ratio=(round(med['ours_channels_last'] / med['plain_channels_last'], 3)
                             if {'ours_channels_last', 'plain_channels_last'} <= set(med) else None),
        target_ratio=1.2,
        errors=errors,
    )
    print(json.dumps({k: result[k] for k in ('ratio_vs_plain', 'best_ours', 'best_ratio', 'channels_last_ratio')}, indent=2))
    write_report(result, Path(args.out), plot, end_key=('machine', 'loadavg_end'))


if __name__ == '__main__':
    main()
