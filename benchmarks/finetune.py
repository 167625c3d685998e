#!/usr/bin/env python3
"""Fine-tuning check (issue 11): do released `_stim` weights transfer, at every depth, better than random init?

For each `_stim` tag (arguments; default: every `_stim` tag of the weights manifest) this runs the demo's job
(`timm_stim.demo.run`: Fashion-MNIST, 1 input channel from the pretrained first conv, ST++ with the tag's recorded
`--stim-*` settings, a short SGD schedule through `timm-stim-train`, then the full network and a few elastic depths
on the test split with BN re-estimated per configuration) twice with the same schedule and configurations:
from the tag's weights, and from random initialisation (`--from-scratch`).

    python benchmarks/finetune.py                                  # every _stim tag, the demo's defaults
    python benchmarks/finetune.py cifar_resnet20_stim.<tag> --epochs 2 --threads 2
    python benchmarks/finetune.py --train-subset 256 --test-subset 200 --out /tmp/f.json   # a smoke test
    python benchmarks/finetune.py wide_resnet50_2_stim.<tag> --arm pretrained &   # one arm per core, side by side:
    python benchmarks/finetune.py wide_resnet50_2_stim.<tag> --arm scratch        # each keeps the other's result

Writes benchmarks/results/finetune.json (command, commit, machine, settings, per tag both arms' full-network and
per-depth top-1 with FLOPs, seconds) and finetune.png (top-1 against MFLOPs, both arms per tag). Run directories go
under `--runs-dir` (default output/benchmark-finetune, git-ignored).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm_stim import demo  # noqa: E402
from timm_stim.models.weights import read_manifest  # noqa: E402

OUT = ROOT / 'benchmarks' / 'results' / 'finetune.json'
# the settings that make results comparable; the rest is description, and precision is each tag's own
SCHEDULE = ('dataset', 'input_size', 'epochs', 'lr', 'batch_size', 'train_images', 'test_images', 'bn_images')
# the demo's flags this script passes through (same names, same defaults)
ARMS = ('pretrained', 'scratch')
PASSED = ('epochs', 'lr', 'data_dir', 'train_subset', 'test_subset', 'depths', 'threads', 'no_amp', 'seed')


def stim_tags() -> List[str]:
    """Every `_stim` tag of the weights manifest (`<model>.<tag>`), in manifest order."""
    return [e.name for e in read_manifest(strict=False) if e.model.endswith('_stim')]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('tags', nargs='*', metavar='MODEL.TAG', help='default: every _stim tag of the manifest')
    defaults = demo.build_parser()
    for action in defaults._actions:  # the demo's own flags, so that both measure the same job
        if action.dest in PASSED:
            kwargs = dict(default=action.default, help=action.help, metavar=action.metavar)
            if action.nargs == 0:
                p.add_argument(*action.option_strings, action='store_true', help=action.help)
            else:
                p.add_argument(*action.option_strings, type=action.type, nargs=action.nargs, **kwargs)
    p.add_argument('--arm', choices=ARMS, action='append', dest='arms',
                   help='run only this arm (repeatable; default: both); the other arm\'s result already in --out '
                        'under the same schedule is kept, so two processes can share two cores')
    p.add_argument('--runs-dir', default=str(ROOT / 'output' / 'benchmark-finetune'), metavar='DIR')
    p.add_argument('--out', default=str(OUT), metavar='FILE')
    p.add_argument('--no-plot', action='store_true')
    return p.parse_args(argv)


def demo_opts(args: argparse.Namespace, tag: str, from_scratch: bool) -> argparse.Namespace:
    """The demo's options for one arm (its parser, so that every default is the demo's)."""
    opts = demo.build_parser().parse_args(['--model', tag])
    for key in PASSED:
        setattr(opts, key, getattr(args, key))
    opts.from_scratch = from_scratch
    opts.output = str(Path(args.runs_dir) / tag.replace('/', '_') / ('scratch' if from_scratch else 'pretrained'))
    return opts


def run_arm(args: argparse.Namespace, tag: str, from_scratch: bool) -> Dict[str, Any]:
    opts = demo_opts(args, tag, from_scratch)
    result = demo.run(opts, argv=['--model', tag] + (['--from-scratch'] if from_scratch else []))
    print(demo.format_table(result), flush=True)
    return result


def plot(report: Dict[str, Any], out_png: Path) -> None:
    """finetune.png: a panel per architecture, top-1 against MFLOPs, each tag from its weights and from random init."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    by_model: Dict[str, List[str]] = {}
    for tag in report['results']:
        by_model.setdefault(tag.split('.')[0].removesuffix('_stim'), []).append(tag)
    fig, axes = plt.subplots(1, len(by_model), figsize=(6.5 * len(by_model), 4.5), squeeze=False)
    s = report['settings']
    for ax, (model, tags) in zip(axes[0], by_model.items()):
        for i, tag in enumerate(tags):
            for arm, style in (('pretrained', '-o'), ('scratch', '--s')):
                if arm not in report['results'][tag]:
                    continue
                rows = report['results'][tag][arm]['results']
                ax.plot([r['flops'] / 1e6 for r in rows], [r['top1'] for r in rows], style, color=f'C{i}',
                        label=f'{tag} ({"from the tag" if arm == "pretrained" else "random init"})')
        ax.set_xlabel(f'MFLOPs per image ({s["input_size"][1]}x{s["input_size"][2]})')
        ax.set_ylabel('Fashion-MNIST test top-1 (%)')
        ax.set_title(f'{model}: {s["epochs"]} epoch(s) of fine-tuning vs random init')
        ax.grid(alpha=.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def earlier_results(out: Path, settings: Dict[str, Any], tags: Sequence[str],
                    arms: Sequence[str] = ARMS) -> Dict[str, Any]:
    """The results already in `out` under the same schedule (`SCHEDULE`) that this measurement does not redo (other
    tags, and of `tags` the arms not in `arms`), each with the command, commit and precision that made it (older
    results get the file's), so that measuring one new tag, or one arm, does not drop the others."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    if any((old.get('settings') or {}).get(k) != settings.get(k) for k in SCHEDULE):
        return {}
    kept: Dict[str, Any] = {}
    for tag, results in old.get('results', {}).items():
        results = {arm: r for arm, r in results.items() if tag not in tags or arm not in arms}
        for r in results.values():
            for key in ('command', 'commit'):
                r.setdefault(key, old.get(key))
            r.setdefault('precision', old['settings'].get('precision'))
        if results:
            kept[tag] = results
    return kept


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    args = parse_args(argv)
    tags = args.tags or stim_tags()
    run_arms = [arm for arm in ARMS if arm in (args.arms or ARMS)]
    if not tags:
        print('benchmarks/finetune.py: error: the weights manifest has no _stim tag yet; pass MODEL.TAG arguments '
              'or release one (timm-stim-release).', file=sys.stderr)
        raise SystemExit(2)
    t0 = time.time()
    report: Dict[str, Any] = dict(
        command=command_line('benchmarks/finetune.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(args.threads), settings=None, results={})
    for tag in tags:
        try:
            arms = {arm: run_arm(args, tag, arm == 'scratch') for arm in run_arms}
        except demo.DemoError as e:
            print(f'benchmarks/finetune.py: error: {e}', file=sys.stderr)
            raise SystemExit(2)
        first = arms[run_arms[0]]
        report['settings'] = report['settings'] or dict(
            dataset='fashion-mnist (Debian dataset-fashion-mnist), test split', input_size=first['input_size'],
            epochs=first['epochs'], lr=first['lr'], batch_size=first['batch_size'], threads=first['threads'],
            train_images=first['train_images'], test_images=first['test_images'],
            bn_images=first['bn_images'],
            schedule='SGD Nesterov 0.9, cosine per step to 0, no warm-up, weight decay 5e-4 on every parameter, '
                     'pad-crop 4 and flip, BN re-estimated after training and per configuration',
            arms='pretrained: the tag\'s weights, first conv summed to 1 channel by timm, 10-class head kept; '
                 'scratch: random initialisation (zero_init_last=False where the architecture has it); same flags '
                 'otherwise')
        report['results'][tag] = {
            arm: dict(stim=r['stim'], precision=r['precision'], train_command=r['train_command'], seconds=r['seconds'],
                      full_top1=next(x['top1'] for x in r['results'] if x['full']), results=r['results'],
                      command=report['command'], commit=report['commit'])
            for arm, r in arms.items()}
    report['runtime_s'] = round(time.time() - t0, 1)
    earlier = earlier_results(Path(args.out), report['settings'], tags, run_arms)
    for tag, arms in report['results'].items():  # with the other arm measured earlier, in ARMS order
        merged = {**earlier.pop(tag, {}), **arms}
        report['results'][tag] = {arm: merged[arm] for arm in ARMS if arm in merged}
    report['results'] = {**earlier, **report['results']}
    for tag in tags:
        res = report['results'][tag]
        if set(res) == set(ARMS):
            print(f'{tag}: full network {res["pretrained"]["full_top1"]:.2f} from the tag, '
                  f'{res["scratch"]["full_top1"]:.2f} from random init '
                  f'({res["pretrained"]["full_top1"] - res["scratch"]["full_top1"]:+.2f})', flush=True)
        else:
            print(f'{tag}: {", ".join(res)} measured; run the other arm (--arm) to compare', flush=True)
    write_report(report, Path(args.out), plot, args.no_plot)
    return report


if __name__ == '__main__':
    main()
