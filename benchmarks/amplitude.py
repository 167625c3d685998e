#!/usr/bin/env python3
"""KL- amplitude ablation: held-out top-1 of short seeded CIFAR-10 runs for A in {1, sqrt(10), 10}.

ST++'s KL- (arXiv:2305.02507 §3.1) compares A * LN(z) (non-affine layer norm over the classes). The released code
uses A = 1; keeping the ImageNet logit norm would give A = sqrt(1000 / C) = 10 for CIFAR-10. Every variant trains
`cifar_resnet20` from the same initialisation on the same batches (same flips, same order) with the same SGD
schedule and, for ST / ST++, the same sub-network draws; only the loss differs:

- `off`: the baseline (cross-entropy on the raw logits);
- `stpp_A{a}_{norm|raw}`: ST++ with K=1 sub-network (KL-, random smaller inputs) with amplitude A = a, the main
  cross-entropy on A * LN(z) (`norm`, the released recipe) or on the raw logits (`raw`);
- `st`: ST with K=1 (plain KL, full-size input).

After training, BN statistics are re-estimated with the full network (as ST prescribes; the same for every
variant) and the full network is evaluated on held-out images. The script also records, at initialisation, the
gradient norm (over all parameters) of the main loss for each A: the gradient through LN is
A / std(z) * (centred, projected softmax error), so with small initial logits a large A multiplies the step.

    python benchmarks/amplitude.py --threads 1    # 5,000 train / 1,000 val images at 16x16, 6 epochs (~8 min)
    python benchmarks/amplitude.py --epochs 2 --variants off stpp_A1_norm --noise-seeds 0

A single seed is noisy at this size: `--noise-seeds N` (default 1) adds baseline runs with other seeds (other
initialisation and batches) and reports them apart, as a yardstick for the differences between variants.

Writes benchmarks/results/amplitude.json (command, commit, machine, settings, numbers) and amplitude.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
import timm  # noqa: E402
import timm_stim  # noqa: E402,F401  (registers cifar_resnet20)
from timm_stim import StimulativeTrainer, run_subnetworks, subnetwork  # noqa: E402
from timm_stim.losses import kl_minus, normalize_logits  # noqa: E402
from timm_stim.sampling import DepthSampler, build_space  # noqa: E402
from timm_stim.depth import depth_ranges, find_stages  # noqa: E402

AMPLITUDES = (1.0, math.sqrt(10.0), 10.0)
MODEL = 'cifar_resnet20'
NUM_CLASSES = 10


def _variants() -> Dict[str, Dict]:
    out = {'off': dict(mode='off')}
    for a in AMPLITUDES:
        for norm in (True, False):
            out[f'stpp_A{a:.3g}_{"norm" if norm else "raw"}'] = dict(
                mode='stpp', subnets=1, amplitude=a, main_on_normalized=norm)
    out['st'] = dict(mode='st', subnets=1)
    return out


VARIANTS = _variants()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--train-images', type=int, default=5000, help='multiple of 10 (equal per class)')
    p.add_argument('--val-images', type=int, default=1000, help='held-out images, multiple of 10')
    p.add_argument('--side', type=int, default=16, help='images are downsampled (antialiased) to side x side')
    p.add_argument('--batch-size', type=int, default=50)
    p.add_argument('--lr', type=float, default=0.05)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--noise-seeds', type=int, default=1,
                   help='extra baseline runs with seeds seed+1.. (other init and batches), to gauge seed noise')
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'amplitude.json'))
    p.add_argument('--no-plot', action='store_true')
    p.add_argument('--replot', action='store_true', help='only redraw the PNG from an existing --out JSON')
    args = p.parse_args(argv)
    for name in ('train_images', 'val_images'):
        n = getattr(args, name)
        if n < NUM_CLASSES or n % NUM_CLASSES:
            p.error(f'--{name.replace("_", "-")} must be a positive multiple of {NUM_CLASSES}, got {n}')
    if args.noise_seeds < 0:
        p.error('--noise-seeds must be >= 0')
    for name in ('epochs', 'side', 'batch_size', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.batch_size > args.train_images:
        p.error(f'--batch-size {args.batch_size} exceeds --train-images {args.train_images}')
    return args


# ------------------------------------------------------------------------------------------------- data
def _test_helpers():
    """tests/conftest.py's plain CIFAR-10 subset loader and normaliser (one JPEG decoder for the project)."""
    spec = importlib.util.spec_from_file_location('_timm_stim_test_conftest', ROOT / 'tests' / 'conftest.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_data(args) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    helpers = _test_helpers()
    if helpers.cifar10_dir() is None:
        raise FileNotFoundError('CIFAR-10 JPEG folder (train/, val/ of <class>/*.jpg) not found at '
                                '../shared/data/cifar10 relative to the repository root.')
    x, y = helpers.load_cifar10_subset('train', args.train_images // NUM_CLASSES)
    xv, yv = helpers.load_cifar10_subset('val', args.val_images // NUM_CLASSES)
    x, xv = (helpers.normalize_cifar10(t) for t in (x, xv))
    if args.side != x.shape[-1]:
        x, xv = (F.interpolate(t, size=args.side, mode='bilinear', antialias=True) for t in (x, xv))
    return x, y, xv, yv


def make_batches(n: int, args, seed: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(indices, horizontal-flip mask) of every step of every epoch, drawn once and shared by all variants."""
    g = torch.Generator().manual_seed(seed)
    steps = n // args.batch_size
    batches = []
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(steps):
            batches.append((perm[i * args.batch_size:(i + 1) * args.batch_size],
                            (torch.rand(args.batch_size, generator=g) < 0.5).view(-1, 1, 1, 1)))
    return batches


def _batch(x, idx, flip):
    return torch.where(flip, x[idx].flip(-1), x[idx])


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(MODEL, num_classes=NUM_CLASSES)


@torch.no_grad()
def _accuracy(model, x, y, depths=None, batch: int = 500) -> float:
    model.eval()
    with subnetwork(model, depths):
        correct = sum((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
                      for i in range(0, len(x), batch))
    return correct / len(x)


# ------------------------------------------------------------------------------------------ measurements
def _param_grad_norm(model: torch.nn.Module, loss: torch.Tensor) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)  # sub-nets skip blocks
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])).item()


def init_gradients(x, y, args) -> Dict:
    """Gradient norms at initialisation (first training batch, train-mode BN) of the main loss for each A.

    `main`: cross-entropy on the raw logits (`raw`) or on A * LN(z); `kl_minus`: KL- between the full network and
    the first sampled ST++ sub-network (same draw as in training), for each A. Also the logits' std over classes,
    the scale the LN divides by.
    """
    idx, flip = make_batches(len(x), args, args.seed)[0]
    xb, yb = _batch(x, idx, flip), y[idx]
    model = _model(args.seed).train()
    sampler = DepthSampler(build_space('stpp', depth_ranges(find_stages(model))), seed=args.seed)
    plan = [(sampler.sample_depths(), sampler.sample_size(xb.shape[-2], 0.43))]
    z, z_sub = run_subnetworks(model, xb, plan)
    res = dict(batch_size=len(xb), logit_std_mean=z.detach().std(-1, unbiased=False).mean().item(),
               first_subnet_plan=[list(plan[0][0]), plan[0][1]],
               main={'raw': _param_grad_norm(model, F.cross_entropy(z, yb))}, kl_minus={})
    for a in AMPLITUDES:
        key = f'A{a:.3g}'
        res['main'][key] = _param_grad_norm(model, F.cross_entropy(normalize_logits(z, a), yb))
        res['kl_minus'][key] = _param_grad_norm(model, kl_minus(z, z_sub, amplitude=a))
    res['main_ratio_to_raw'] = {k: v / res['main']['raw'] for k, v in res['main'].items()}
    return res


def train_variant(name: str, x, y, xv, yv, batches, args, seed: int) -> Dict:
    model = _model(seed)
    trainer = StimulativeTrainer(model, verbose=False, seed=seed, **VARIANTS[name])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / len(batches))))
    per_epoch = len(batches) // args.epochs
    epochs, losses, kls, correct, seen = [], [], [], 0, 0
    t0 = time.perf_counter()
    model.train()
    for step, (idx, flip) in enumerate(batches):
        out = trainer(_batch(x, idx, flip), y[idx])
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        sched.step()
        if not torch.isfinite(out['loss']):
            raise FloatingPointError(f'{name}: non-finite loss at step {step}')
        losses.append(out['loss_main'].item())
        kls.append(out['loss_kl'].sum().item())
        correct += (out['output'].argmax(-1) == y[idx]).sum().item()
        seen += len(idx)
        if (step + 1) % per_epoch == 0:
            epochs.append(dict(epoch=len(epochs) + 1, loss_main=sum(losses) / len(losses),
                               loss_kl=sum(kls) / len(kls), train_top1=correct / seen))
            losses, kls, correct, seen = [], [], 0, 0
    train_s = time.perf_counter() - t0
    top1_no_recal = _accuracy(model, xv, yv)
    # ST re-estimates BN with the full network (sub-network passes disturb the running statistics)
    g = torch.Generator().manual_seed(seed + 10_000)
    n_recal = min(1000, len(x))
    perm = torch.randperm(len(x), generator=g)[:n_recal]
    trainer.recalibrate_bn([x[perm[i:i + 200]] for i in range(0, n_recal, 200)], num_images=n_recal)
    return dict(config=VARIANTS[name], top1=_accuracy(model, xv, yv), top1_no_bn_recal=top1_no_recal,
                train_s=round(train_s, 1), steps=len(batches), epochs=epochs)


# ------------------------------------------------------------------------------------------------- plot
def plot(report: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    res = report['results']
    names = list(res)
    acc = [100 * res[n]['top1'] for n in names]
    colors = ['0.5' if n == 'off' else 'tab:purple' if n == 'st' else
              'tab:blue' if n.endswith('_norm') else 'tab:orange' for n in names]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw=dict(width_ratios=[2.2, 1]))
    bars = ax.bar(range(len(names)), acc, color=colors)
    ax.bar_label(bars, fmt='%.1f', fontsize=8)
    if 'off' in res:
        ax.axhline(100 * res['off']['top1'], color='0.5', ls='--', lw=0.8)
        other = [100 * r['top1'] for r in report.get('baseline_other_seeds', {}).values()]
        if other:
            ax.plot([names.index('off') + 0.3] * len(other), other, 'rD', ms=5, label='baseline, other seeds')
            ax.legend(fontsize=7, loc='lower right')
    ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
    ax.set_ylabel('held-out top-1 (%)')
    s = report['settings']
    ax.set_title(f'{MODEL}, CIFAR-10 {s["train_images"]} imgs @ {s["side"]}px, {s["epochs"]} epochs\n'
                 f'blue: main CE on A*LN(z), orange: on raw z', fontsize=9)
    g = report['init_gradients']
    amps = list(g['kl_minus'])
    ax2.axhline(g['main']['raw'], color='0.5', ls='--', lw=0.8, label='CE on raw z')
    ax2.bar([i - 0.2 for i in range(len(amps))], [g['main'][k] for k in amps], 0.4, color='tab:blue',
            label='CE on A*LN(z)')
    ax2.bar([i + 0.2 for i in range(len(amps))], [g['kl_minus'][k] for k in amps], 0.4, color='tab:green',
            label='KL- (first sub-net)')
    ax2.set_xticks(range(len(amps)), amps, fontsize=8)
    ax2.set_yscale('log')
    ax2.set_ylabel('|grad| over all parameters')
    ax2.set_title('gradient norms at initialisation', fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log(name: str, r: Dict) -> Dict:
    print(f'{name:18s} top1 {100 * r["top1"]:5.1f}%  (no BN recal {100 * r["top1_no_bn_recal"]:5.1f}%)  '
          f'train top1 by epoch ' + ' '.join(f'{100 * e["train_top1"]:.0f}' for e in r['epochs']) +
          f'  {r["train_s"]:.0f}s', flush=True)
    return r


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        if not out.is_file():
            raise FileNotFoundError(f'--replot needs an existing report at {out}; run without --replot first.')
        plot(json.loads(out.read_text()), out.with_suffix('.png'))
        return None
    t_start = time.perf_counter()
    x, y, xv, yv = load_data(args)
    torch.set_num_threads(args.threads)  # after the test helpers, which set their own default
    batches = make_batches(len(x), args, args.seed)
    report = dict(
        command=command_line('benchmarks/amplitude.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(args.threads),
        settings=dict(model=MODEL, data='../shared/data/cifar10 (JPEG ImageFolder), first N/10 sorted files '
                                        'per class', train_images=len(x), val_images=len(xv), side=args.side,
                      downsample='bilinear, antialias', epochs=args.epochs, batch_size=args.batch_size,
                      steps=len(batches), noise_seeds=args.noise_seeds, augmentation='random horizontal flip',
                      optimizer=f'SGD(lr={args.lr}, momentum=0.9, nesterov, weight_decay=5e-4), cosine to 0 '
                                f'per step', seed=args.seed,
                      same_for_all_variants='initial weights, batch order, flips, LR schedule, sub-network draws',
                      stpp='K=1, KL-, space stpp, random smaller inputs min_scale=0.43, T=1, lambda=1',
                      eval='full network, raw-logit argmax; BN re-estimated with the full network on 1,000 '
                           'training images first (top1_no_bn_recal: before)', variants=VARIANTS),
        init_gradients=init_gradients(x, y, args),
        results={},
    )
    g = report['init_gradients']
    print(f'init: logit std {g["logit_std_mean"]:.3f}; |grad| main ' +
          ', '.join(f'{k} {v:.3g}' for k, v in g['main'].items()) + '; KL- ' +
          ', '.join(f'{k} {v:.3g}' for k, v in g['kl_minus'].items()))
    for name in args.variants:
        report['results'][name] = _log(name, train_variant(name, x, y, xv, yv, batches, args, args.seed))
    if args.noise_seeds:
        report['baseline_other_seeds'] = {}
        for seed in range(args.seed + 1, args.seed + 1 + args.noise_seeds):
            r = train_variant('off', x, y, xv, yv, make_batches(len(x), args, seed), args, seed)
            report['baseline_other_seeds'][str(seed)] = _log(f'off (seed {seed})', r)
    report['runtime_s'] = round(time.perf_counter() - t_start, 1)
    print(f'runtime {report["runtime_s"]:.0f}s')
    write_report(report, out, plot, args.no_plot)
    return report


if __name__ == '__main__':
    main()
