#!/usr/bin/env python3
"""Baseline parity: `timm-stim-train --stim-mode off` against a plain PyTorch loop, side by side on CIFAR-10.

Both arms train CIFAR ResNet-20 on `../shared/data/cifar10` with the same hyper-parameters: SGD with Nesterov
momentum 0.9, lr 0.1, batch 128, weight decay 5e-4, one warm-up epoch then cosine per step, no label smoothing,
4-px pad crop and horizontal flip, channels-last, float32 or bfloat16 autocast. The plain loop is written here
with torch only (its own augmentation, `torch.optim.SGD` over every parameter, `OneCycleLR` peaking at 15 % of the
steps with constant momentum, timm's model with default BN init); the command arms differ from each other only
in the flags listed in `ARMS`, which isolate the suspected causes of a gap (timm's weight-decay filter of BN /
bias, the zero-initialised last BN of each block). Each arm is one process with one thread; `--jobs 2` runs two
side by side. Command arms train with `--stim-bn-recalib 0` and are evaluated afterwards three ways: stored BN
statistics, BN re-estimated on 2,000 training-augmented images (the released protocol, our default) and on
2,000 un-augmented ones, so the BN protocol's effect is read off the same weights.

    python benchmarks/parity.py --epochs 8 --arms plain ours_v0 --precision bf16 --jobs 2

Results accumulate in benchmarks/results/parity.json (one entry per arm / seed / precision / epochs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info  # noqa: E402

OUT = ROOT / 'benchmarks' / 'results' / 'parity.json'
DATA = (ROOT / '..' / 'shared' / 'data' / 'cifar10').resolve()

RECIPE = dict(model='cifar_resnet20', batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
              warmup_epochs=1, label_smoothing=0.0, crop_padding=4, hflip=0.5, channels_last=True)

# command arms: the flags each adds to the common recipe (the baseline, --stim-mode off)
ARMS: Dict[str, Dict[str, Any]] = {
    'plain': dict(kind='plain', zero_init_last=False, doc='plain torch loop, WD on every parameter, default BN init'),
    'plain_zero_init': dict(kind='plain', zero_init_last=True, doc='plain torch loop, zero-init last BN'),
    'ours_v0': dict(kind='ours', flags=[], doc="the command's earlier recipe: timm's WD filter, zero-init last BN"),
    'ours_wd_all': dict(kind='ours', flags=['--no-filter-bias-and-bn'], doc='WD on every parameter'),
    'ours_no_zero_init': dict(kind='ours', flags=['--model-kwargs', 'zero_init_last=False'],
                              doc='default BN init'),
    'ours_wd_all_no_zero_init': dict(kind='ours', flags=['--no-filter-bias-and-bn', '--model-kwargs',
                                                         'zero_init_last=False'],
                                     doc='WD on every parameter and default BN init'),
}


def _ours_cmd(arm: str, epochs: int, seed: int, precision: str, run_dir: Path) -> List[str]:
    r = RECIPE
    cmd = [sys.executable, '-m', 'timm_stim.train', '--data-dir', str(DATA), '--model', r['model'],
           '--stim-mode', 'off', '--epochs', str(epochs), '-b', str(r['batch_size']), '--lr', str(r['lr']),
           '--momentum', str(r['momentum']), '--weight-decay', str(r['weight_decay']), '--sched', 'cosine',
           '--sched-on-updates', '--warmup-epochs', str(r['warmup_epochs']), '--smoothing', '0',
           '--crop-padding', str(r['crop_padding']), '--channels-last', '--seed', str(seed), '--log-interval', '100',
           '--checkpoint-hist', '1', '--stim-bn-recalib', '0', '--no-plot',
           '--output', str(run_dir.parent), '--experiment', run_dir.name]
    if precision == 'bf16':
        cmd += ['--amp', '--amp-dtype', 'bfloat16']
    return cmd + ARMS[arm]['flags']


def _run_arm(arm: str, epochs: int, seed: int, precision: str, runs: Path) -> Dict[str, Any]:
    run_dir = runs / f'{arm}-s{seed}-{precision}-e{epochs}'
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    if ARMS[arm]['kind'] == 'plain':
        cmd = [sys.executable, __file__, '--worker', arm, '--epochs', str(epochs), '--seed', str(seed),
               '--precision', precision, '--run-dir', str(run_dir)]
    else:
        cmd = _ours_cmd(arm, epochs, seed, precision, run_dir)
    t0 = time.time()
    with open(run_dir / 'log.txt', 'w') as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.time() - t0
    if rc != 0:
        raise RuntimeError(f'{arm} seed {seed} failed (exit {rc}); see {run_dir / "log.txt"}')
    entry = dict(arm=arm, doc=ARMS[arm]['doc'], seed=seed, precision=precision, epochs=epochs, wall_s=round(wall, 1),
                 command=' '.join(cmd[1:]).replace(str(ROOT) + '/', '').replace(str(DATA), '../shared/data/cifar10'))
    if ARMS[arm]['kind'] == 'plain':
        entry.update(json.loads((run_dir / 'result.json').read_text()))
    else:
        rows = list(csv.DictReader(open(run_dir / 'summary.csv')))
        entry['curve_top1'] = [round(float(r['eval_top1']), 2) for r in rows]
        entry['top1'] = entry['curve_top1'][-1]
        entry['bn_protocols'] = _bn_protocols(run_dir / 'last.pth.tar', seed, precision)
    return entry


# ------------------------------------------------------------------------------------------ BN protocols
def _bn_protocols(ckpt_path: Path, seed: int, precision: str) -> Dict[str, float]:
    """Top-1 of the final weights with stored BN statistics and with BN re-estimated on 2,000 training images,
    augmented (the released protocol) or not."""
    import torch
    from contextlib import nullcontext
    import timm
    import timm_stim  # noqa: F401
    from timm_stim.data import TensorLoader, load_image_tensors
    from timm_stim.depth import recalibrate_bn
    from timm_stim.models import CIFAR10_MEAN, CIFAR10_STD
    torch.set_num_threads(2)
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    model = timm.create_model(RECIPE['model'])
    model.load_state_dict(ckpt['state_dict'])
    stored = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = (load_image_tensors('', str(DATA), s) for s in ('train', 'validation'))
    common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=seed + 1)
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if precision == 'bf16' else nullcontext
    out = {}
    for name, loader in (('stored', None),
                         ('train_aug', TensorLoader(train, 128, True, padding=4, hflip=0.5, **common)),
                         ('train_plain', TensorLoader(train, 128, False, shuffle=True, **common))):
        model.load_state_dict(stored)
        if loader is not None:
            with autocast():
                recalibrate_bn(model, iter(loader), 2000)
        out[name] = _accuracy(model, TensorLoader(val, 500, False, **common), autocast)
    return out


def _accuracy(model, loader, autocast) -> float:
    import torch
    model.eval()
    correct = n = 0
    with torch.no_grad(), autocast():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            n += y.numel()
    return round(100. * correct / n, 2)


# ------------------------------------------------------------------------------------------- plain loop
def _plain_worker(arm: str, epochs: int, seed: int, precision: str, run_dir: Path) -> None:
    """The plain loop: torch only, apart from decoding the same JPEGs and building the same timm model."""
    from contextlib import nullcontext
    import torch
    import torch.nn.functional as F
    import timm
    import timm_stim  # noqa: F401  (registers cifar_resnet20)
    from timm_stim.data import load_image_tensors
    from timm_stim.models import CIFAR10_MEAN, CIFAR10_STD
    torch.manual_seed(seed)
    r = RECIPE
    train, val = (load_image_tensors('', str(DATA), s) for s in ('train', 'validation'))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255
    model = timm.create_model(r['model'], zero_init_last=ARMS[arm]['zero_init_last'])
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=r['lr'], momentum=r['momentum'], nesterov=True,
                          weight_decay=r['weight_decay'])
    steps_per_epoch = len(train) // r['batch_size']
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r['lr'], total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy='cos', cycle_momentum=False)
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if precision == 'bf16' else nullcontext
    p, curve, t0 = r['crop_padding'], [], time.time()

    def prep(x):
        return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train))
        for i in range(steps_per_epoch):
            idx = order[i * r['batch_size']:(i + 1) * r['batch_size']]
            x = F.pad(train.images[idx], (p, p, p, p))
            oy, ox = torch.randint(0, 2 * p + 1, (2, len(idx)))
            x = torch.stack([x[j, :, t:t + 32, l:l + 32] for j, (t, l) in enumerate(zip(oy.tolist(), ox.tolist()))])
            flip = torch.rand(len(idx)) < r['hflip']
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with autocast():
                loss = F.cross_entropy(model(prep(x)), train.targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for i in range(0, len(val), 500):
                correct += (model(prep(val.images[i:i + 500])).argmax(1) == val.targets[i:i + 500]).sum().item()
        curve.append(round(100. * correct / len(val), 2))
        print(f'epoch {epoch}: loss {loss.item():.4f} top1 {curve[-1]:.2f} ({time.time() - t0:.0f}s)', flush=True)
    (run_dir / 'result.json').write_text(json.dumps(dict(top1=curve[-1], curve_top1=curve)))


# ------------------------------------------------------------------------------------------------ report
def _merge(entries: List[Dict[str, Any]], argv) -> None:
    report = json.loads(OUT.read_text()) if OUT.exists() else {'runs': []}
    key = lambda e: (e['arm'], e['seed'], e['precision'], e['epochs'])  # noqa: E731
    runs = {key(e): e for e in report['runs']}
    for e in entries:
        e['commit'], e['dirty'] = git_commit(), git_dirty()
        runs[key(e)] = e
    report.update(benchmark='baseline parity: timm-stim-train --stim-mode off vs a plain torch loop',
                  recipe=RECIPE, arms={k: v['doc'] for k, v in ARMS.items()}, machine=machine_info(threads=1),
                  last_command=command_line('benchmarks/parity.py', argv),
                  runs=sorted(runs.values(), key=lambda e: (e['epochs'], e['precision'], e['arm'], e['seed'])))
    report['summary'] = _summary(report['runs'])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))


def _summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean top-1 per (epochs, precision, arm), and each arm's gap to the plain loop."""
    groups: Dict[str, List[float]] = {}
    for e in runs:
        groups.setdefault(f"e{e['epochs']}-{e['precision']}-{e['arm']}", []).append(e['top1'])
    out = {k: dict(n=len(v), mean=round(sum(v) / len(v), 2), min=min(v), max=max(v)) for k, v in groups.items()}
    for k, v in out.items():
        plain = out.get(k.rsplit('-', 1)[0] + '-plain')
        if plain and not k.endswith('-plain'):
            v['minus_plain'] = round(v['mean'] - plain['mean'], 2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arms', nargs='+', default=['plain', 'ours_wd_all_no_zero_init'], choices=sorted(ARMS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--precision', nargs='+', default=['bf16'], choices=('fp32', 'bf16'))
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--jobs', type=int, default=2, help='arms trained side by side, one thread each')
    p.add_argument('--runs-dir', default=os.environ.get('TIMM_STIM_RUNS', str(Path.home() / 'timm_stim_runs')),
                   help='run directories (outside the repository)')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--seed', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--run-dir', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _plain_worker(args.worker, args.epochs, args.seed, args.precision[0], Path(args.run_dir))
    if not (DATA / 'train').is_dir():
        raise SystemExit(f'CIFAR-10 not found at {DATA}')
    runs = Path(args.runs_dir) / 'parity'
    jobs = [(a, args.epochs, s, prec, runs) for prec in args.precision for s in args.seeds for a in args.arms]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run_arm, *j) for j in jobs]
        for f in futures:
            entry = f.result()
            _merge([entry], argv)  # one at a time, as each arm ends: a stopped benchmark keeps what finished
            print(f"{entry['arm']} seed {entry['seed']} {entry['precision']}: top1 {entry['top1']} "
                  f"({entry['wall_s']:.0f} s) {entry.get('bn_protocols', '')}", flush=True)
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
