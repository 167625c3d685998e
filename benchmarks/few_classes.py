#!/usr/bin/env python3
"""ST++ on few classes (issue 28): fine-tuning the default `cifar_resnet20_stim` tag on 2, 3 and 10 classes.

ST++'s KL- and its main cross-entropy work on A * LN(z) (arXiv:2305.02507 §3.1, A = 1 as released). With 2 classes
LN(z) is exactly (+1, -1) whatever z, so both terms have zero gradient; the class-count rule of
`timm_stim.losses.logit_amplitude` uses raw logits there (plain KL, main CE on z) and keeps A = 1 from 3 classes
on. For each class count this fine-tunes the tag (`timm.create_model('cifar_resnet20_stim', pretrained=True)`, the
demo's default) on a class subset of Fashion-MNIST for one epoch with three arms, on the same data (same images,
batch order and augmentation, same head initialisation, and for the two ST++ arms the same sub-network draws):

- `stpp_rule`: the tag's recorded `--stim-*` flags (what `timm-stim-demo` fine-tunes with), amplitude unset: the rule;
- `stpp_A1`: the same with `--stim-amplitude 1`: A * LN(z) at every class count (the behaviour before the rule);
- `off`: `--stim-mode off`, the plain fine-tune.

Then the full network and the sub-networks that `timm_stim.demo.pick_depths` picks (the demo's configurations,
spanning the FLOPs range within the space the tag's flags train) on held-out test images, BN re-estimated per
configuration on 2,000 augmented training images (`timm_stim.validate.evaluate_depths`, as the demo does). The
sub-network mean is the mean top-1 over those configurations except the full network.

    python benchmarks/few_classes.py --threads 1              # 2, 3, 10 classes x 3 arms x seeds 0, 1 (~20 min)
    python benchmarks/few_classes.py --counts 2 --arms stpp_rule off --seeds 0 --out /tmp/f.json   # a quick look

One epoch of fine-tuning from a new head is noisy (a few points between seeds at 3 classes): every arm runs with
each of `--seeds` and the table gives the mean, each seed next to it. An arm whose settings, amplitude resolved,
are those of an arm already run (`stpp_A1` from 3 classes on, where the rule gives A = 1) is the same computation
and is not run again: its entry says so (`identical_to`); tests/test_losses.py checks that equality bit for bit.

The loop is hand-written around `StimulativeTrainer` because `timm-stim-train` has no class filter for the
Fashion-MNIST files; it follows the demo's fine-tuning flags (`timm_stim.demo.train_argv`): batch 128, SGD Nesterov
0.9, lr 0.02 cosine to 0 per step, no warm-up, weight decay 5e-4 on every parameter, pad-crop 4 and flip, no label
smoothing, 1 input channel (timm sums the pretrained first conv), bfloat16 autocast where the CPU supports it.

Writes benchmarks/results/few_classes.json (command, commit, machine, precision, settings, per class count and arm:
full top-1, sub-network mean, every configuration, the logits rule the trainer used, mean gradient norm per step,
seconds) and few_classes.png.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm.data import resolve_data_config  # noqa: E402
from timm.models import create_model  # noqa: E402

from timm_stim import demo  # noqa: E402
from timm_stim.data import ImageTensors, TensorLoader, fit_channels, load_image_tensors, subset_indices  # noqa: E402
from timm_stim.losses import logit_amplitude  # noqa: E402
from timm_stim.trainer import StimConfig, StimulativeTrainer, add_stim_args  # noqa: E402
from timm_stim.validate import evaluate_depths  # noqa: E402

OUT = ROOT / 'benchmarks' / 'results' / 'few_classes.json'
# Fashion-MNIST labels: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
# 9 Ankle boot. Few-class subsets of confusable tops, so that accuracy is not at its ceiling; 3 contains 2.
CLASSES: Dict[int, Tuple[int, ...]] = {2: (0, 6), 3: (0, 2, 6), 10: tuple(range(10))}
ARMS = ('stpp_rule', 'stpp_A1', 'off')
ARM_HELP = {
    'stpp_rule': "the tag's --stim-* flags, amplitude unset (the class-count rule)",
    'stpp_A1': "the tag's --stim-* flags with --stim-amplitude 1 (A * LN(z) at every class count)",
    'off': '--stim-mode off (plain fine-tune)',
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', default=None, metavar='MODEL[.TAG]', help="default: the demo's (the default tag)")
    p.add_argument('--counts', type=int, nargs='+', default=sorted(CLASSES), choices=sorted(CLASSES))
    p.add_argument('--arms', nargs='+', default=list(ARMS), choices=ARMS)
    p.add_argument('--train-images', type=int, default=12000,
                   help='class-balanced training images per class count (12,000: all of the 2-class subset)')
    p.add_argument('--test-images', type=int, default=2000, help='class-balanced test images per class count')
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--lr', type=float, default=demo.build_parser().get_default('lr'))
    p.add_argument('--data-dir', default=demo.build_parser().get_default('data_dir'))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--no-amp', action='store_true', help='float32 (default: bfloat16 autocast where supported)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1],
                   help='one run per seed and arm (head initialisation, batch order, augmentation, sub-network draws); '
                        'the table gives the mean')
    p.add_argument('--out', default=str(OUT), metavar='FILE')
    p.add_argument('--no-plot', action='store_true')
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------- data
def class_subset(data: ImageTensors, classes: Sequence[int], n: Optional[int]) -> ImageTensors:
    """The images of `classes`, labels renumbered 0..len(classes)-1 in that order, a class-balanced subset of `n`."""
    keep = torch.isin(data.targets, torch.tensor(classes))
    images, targets = data.images[keep], data.targets[keep]
    remap = torch.full((int(data.targets.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    targets = remap[targets]
    idx = torch.tensor(subset_indices(targets.tolist(), n), dtype=torch.long)
    return ImageTensors(images[idx], targets[idx], [data.classes[c] for c in classes])


def stim_config(flags: Sequence[str]) -> StimConfig:
    """The resolved `StimConfig` of `--stim-*` flags (the parser every command uses)."""
    parser = argparse.ArgumentParser()
    add_stim_args(parser)
    return StimConfig.from_args(parser.parse_args(list(flags)))


def arm_flags(arm: str, tag_flags: Sequence[str]) -> List[str]:
    if arm == 'off':
        return ['--stim-mode', 'off']
    return list(tag_flags) + (['--stim-amplitude', '1'] if arm == 'stpp_A1' else [])


# ------------------------------------------------------------------------------------------------ one arm
def fine_tune(model_name: str, num_classes: int, cfg: StimConfig, train: ImageTensors, data_config: Dict[str, Any],
              epochs: int, lr: float, seed: int, amp: bool) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Fine-tune the pretrained model on `train` with `cfg` (the demo's schedule); the model and a training record."""
    torch.manual_seed(seed)  # the new head (2 / 3 classes) starts the same in every arm
    model = create_model(model_name, pretrained=True, num_classes=num_classes, in_chans=demo.INPUT_SIZE[0])
    model = model.to(memory_format=torch.channels_last)
    task = StimulativeTrainer(model, stim=cfg, verbose=False)
    loader = TensorLoader(train, demo.BATCH_SIZE, True, data_config['mean'], data_config['std'],
                          input_size=demo.INPUT_SIZE, seed=seed, padding=4, hflip=0.5, channels_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    autocast = partial(torch.autocast, device_type='cpu', dtype=torch.bfloat16) if amp else nullcontext
    grad_norms, loss_main, loss_kl, correct, seen = [], [], [], 0, 0
    t0 = time.time()
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            with autocast():
                out = task(x, y)
            opt.zero_grad(set_to_none=True)
            out['loss'].backward()
            grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
            grad_norms.append(float(torch.stack(grads).norm()))
            opt.step()
            sched.step()
            loss_main.append(float(out['loss_main']))
            loss_kl.append(float(out['loss_kl'].sum()))
            correct += int((out['output'].argmax(-1) == y).sum())
            seen += y.numel()
    record = dict(logit_rule=task.logit_rule, amplitude=task.amplitude, steps=total,
                  grad_norm_mean=sum(grad_norms) / len(grad_norms), grad_norm_first=grad_norms[0],
                  loss_main_first=loss_main[0], loss_main_last=sum(loss_main[-5:]) / len(loss_main[-5:]),
                  loss_kl_mean=sum(loss_kl) / len(loss_kl), train_top1=100 * correct / seen,
                  train_s=round(time.time() - t0, 1))
    return model, record


def measure(model: torch.nn.Module, configs, test: ImageTensors, train: ImageTensors, data_config: Dict[str, Any],
            seed: int, amp: bool) -> List[Dict[str, Any]]:
    """Top-1 per configuration on `test`, BN re-estimated per configuration on augmented training images."""
    common = dict(input_size=demo.INPUT_SIZE, channels_last=True)
    test_loader = TensorLoader(test, demo.EVAL_BATCH_SIZE, False, data_config['mean'], data_config['std'], **common)
    bn_loader = TensorLoader(train, demo.BATCH_SIZE, True, data_config['mean'], data_config['std'], seed=seed + 1,
                             padding=4, hflip=0.5, shuffle=True, **common)
    autocast = partial(torch.autocast, device_type='cpu', dtype=torch.bfloat16) if amp else nullcontext
    rows = evaluate_depths(model, configs, test_loader, bn_loader, demo.BN_IMAGES, torch.device('cpu'), autocast,
                           True, demo.INPUT_SIZE)
    return [dict(depths=r['depths'], full=r['full'], flops_share=round(r['flops_share'], 4), top1=round(r['top1'], 2),
                 bn_images=r['bn_images']) for r in rows]


def run_arm(arm: str, model_name: str, num_classes: int, flags: Sequence[str], train: ImageTensors,
            test: ImageTensors, data_config: Dict[str, Any], configs, args: argparse.Namespace, amp: bool,
            seed: int) -> Dict[str, Any]:
    t0 = time.time()
    cfg = stim_config(flags)
    model, record = fine_tune(model_name, num_classes, cfg, train, data_config, args.epochs, args.lr, seed, amp)
    rows = measure(model, configs, test, train, data_config, seed, amp)
    sub = [r['top1'] for r in rows if not r['full']]
    result = dict(full_top1=next(r['top1'] for r in rows if r['full']), sub_mean_top1=round(sum(sub) / len(sub), 2),
                  **record, configs=rows, seconds=round(time.time() - t0, 1))
    print(f'  {num_classes} classes, {arm:<9} seed {seed}: full {result["full_top1"]:6.2f}  sub-network mean '
          f'{result["sub_mean_top1"]:6.2f}  grad norm {record["grad_norm_mean"]:.3g}  ({result["seconds"]:.0f} s; '
          f'{record["logit_rule"]})', flush=True)
    return result


def run_seeds(arm: str, model_name: str, num_classes: int, flags: Sequence[str], train: ImageTensors,
              test: ImageTensors, data_config: Dict[str, Any], configs, args: argparse.Namespace, amp: bool
              ) -> Dict[str, Any]:
    """`run_arm` once per seed; the means over seeds, then each seed's record."""
    runs = {str(seed): run_arm(arm, model_name, num_classes, flags, train, test, data_config, configs, args, amp,
                               seed) for seed in args.seeds}
    mean = lambda key: round(sum(r[key] for r in runs.values()) / len(runs), 2)  # noqa: E731
    return dict(flags=list(flags), logit_rule=next(iter(runs.values()))['logit_rule'], full_top1=mean('full_top1'),
                sub_mean_top1=mean('sub_mean_top1'), seeds=runs)


# ---------------------------------------------------------------------------------------------------- plot
def plot(report: Dict[str, Any], out_png: Path) -> None:
    """Two panels (full network, sub-network mean): top-1 per class count, one bar per arm."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    counts = list(report['results'])
    arms = [a for a in ARMS if any(a in report['results'][c] for c in counts)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(arms)
    for ax, key, title in zip(axes, ('full_top1', 'sub_mean_top1'), ('full network', 'sub-network mean')):
        for i, arm in enumerate(arms):
            xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(counts))]
            res = [report['results'][c].get(arm, {}) for c in counts]
            bars = ax.bar(xs, [r.get(key, float('nan')) for r in res], width, label=f'{arm}: {ARM_HELP[arm]}',
                          color=f'C{i}', alpha=.8)
            ax.bar_label(bars, fmt='%.1f', fontsize=7)
            for x, r in zip(xs, res):  # each seed
                pts = [s[key] for s in r.get('seeds', {}).values()]
                ax.plot([x] * len(pts), pts, 'k.', ms=4)
        names = report['settings']['classes']
        ax.set_xticks(range(len(counts)), [f'{c} classes' + (f'\n({", ".join(names[c])})' if int(c) < 10 else '')
                                           for c in counts], fontsize=8)
        ax.set_ylabel('Fashion-MNIST test top-1 (%)')
        ax.set_ylim(0, 105)
        ax.set_title(title)
        ax.grid(axis='y', alpha=.3)
    axes[0].legend(fontsize=7, loc='lower left')
    s = report['settings']
    fig.suptitle(f'{s["model"]}: {s["epochs"]} epoch fine-tune on Fashion-MNIST class subsets ({report["precision"]}); '
                 f'bars: mean, dots: seeds {", ".join(map(str, s["seeds"]))}', fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    demo.check_dataset(args.data_dir)
    source = demo.resolve_source(args.model)
    tag_flags, flags_from = demo.stim_flags(source.entry)
    amp = not args.no_amp and demo.bf16_supported(torch.device('cpu')) and demo.trained_in_low_precision(source.entry)
    skeleton = create_model(source.arch, num_classes=10, in_chans=demo.INPUT_SIZE[0])
    configs = demo.pick_depths(skeleton, demo.INPUT_SIZE, space=demo.trained_space(skeleton, tag_flags))
    data_config = fit_channels(resolve_data_config({'input_size': demo.INPUT_SIZE}, model=skeleton),
                               demo.INPUT_SIZE[0])
    train_all = load_image_tensors('fashion-mnist', args.data_dir, 'train')
    test_all = load_image_tensors('fashion-mnist', args.data_dir, 't10k')
    report: Dict[str, Any] = dict(
        command=command_line('benchmarks/few_classes.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(args.threads, 'cpu'), precision='bfloat16 autocast' if amp else 'float32',
        settings=dict(
            model=source.name, data=f'Fashion-MNIST ({args.data_dir}), train and test splits',
            classes={str(c): [train_all.classes[i] for i in CLASSES[c]] for c in args.counts},
            train_images=args.train_images, test_images=args.test_images, class_balanced=True,
            epochs=args.epochs, batch_size=demo.BATCH_SIZE, lr=args.lr, seeds=args.seeds,
            input_size=list(demo.INPUT_SIZE), tag_flags=list(tag_flags), tag_flags_from=flags_from,
            schedule='SGD Nesterov 0.9, lr cosine to 0 per step, no warm-up, weight decay 5e-4 on every parameter, '
                     'pad-crop 4 + flip, cross-entropy without smoothing; new head for 2 / 3 classes (same init '
                     'in every arm), the 10-class head kept',
            eval=f'full network and {len(configs) - 1} sub-networks (timm_stim.demo.pick_depths within the tag\'s '
                 f'space), BN re-estimated per configuration on {demo.BN_IMAGES} augmented training images',
            depth_configs=[list(c) for c in configs], arms=ARM_HELP,
            same_for_all_arms='training and test images, batch order, augmentation, head initialisation, '
                              'sub-network draws (ST++ arms)'),
        results={})
    print(f'{source.name}, flags {" ".join(tag_flags)} ({flags_from}); {report["precision"]}, '
          f'{args.threads} thread(s)', flush=True)
    for count in args.counts:
        train = class_subset(train_all, CLASSES[count], args.train_images)
        test = class_subset(test_all, CLASSES[count], args.test_images)
        results: Dict[str, Any] = {}
        done: Dict[Tuple, str] = {}  # resolved config and amplitude -> the arm already run with it
        for arm in args.arms:
            flags = arm_flags(arm, tag_flags)
            cfg = stim_config(flags)
            amplitude = logit_amplitude(count, cfg.amplitude)
            key = repr(replace(cfg, amplitude=amplitude))
            if key in done:  # the same computation (deterministic: same data, seeds, draws): not run again
                rule = StimulativeTrainer(create_model(source.arch, num_classes=count, in_chans=demo.INPUT_SIZE[0]),
                                          stim=cfg, verbose=False).logit_rule
                results[arm] = dict(results[done[key]], flags=flags, logit_rule=rule, identical_to=done[key])
                print(f'  {count} classes, {arm}: the settings of {done[key]} with the amplitude its rule gives '
                      f'(A = {amplitude}): the same computation, not run again', flush=True)
                continue
            results[arm] = run_seeds(arm, source.name, count, flags, train, test, data_config, configs, args, amp)
            done[key] = arm
        report['results'][str(count)] = results
    report['runtime_s'] = round(time.time() - t0, 1)
    print(format_table(report))
    write_report(report, Path(args.out), plot, args.no_plot)
    return report


def format_table(report: Dict[str, Any]) -> str:
    arms = [a for a in ARMS if any(a in r for r in report['results'].values())]
    seeds = ', '.join(map(str, report['settings']['seeds']))
    lines = [f'Fashion-MNIST test top-1 (%), mean over seeds {seeds} (each seed in brackets):',
             '| classes | ' + ' | '.join(f'{a} full | {a} sub-network mean' for a in arms) + ' |',
             '|---|' + '---|---|' * len(arms)]

    def cell(r, key):
        return f'{r[key]:.2f} (' + ' / '.join(f'{s[key]:.1f}' for s in r['seeds'].values()) + ')'
    for count, res in report['results'].items():
        cells = [f'{cell(res[a], "full_top1")} | {cell(res[a], "sub_mean_top1")}' if a in res else '- | -'
                 for a in arms]
        lines.append(f'| {count} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
