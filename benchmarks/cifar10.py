#!/usr/bin/env python3
"""The CIFAR-10 weights campaign: launch or resume each run of the plan, and collect the results JSON.

Every run uses `benchmarks/recipes/cifar10.yaml`; the arms differ only in their `--stim-*` flags (`ARMS`). Run
directories live outside the repository (`--runs-dir`, default `$TIMM_STIM_RUNS` or ~/timm_stim_runs) and every
run checkpoints each epoch and every 100 steps, so `run` on an existing directory resumes it exactly. Checkpoints
stay in the run directories, never in git (only released weights are committed).

    python benchmarks/cifar10.py run baseline --model cifar_resnet20 --seed 0      # launch or resume (1 thread)
    python benchmarks/cifar10.py status                                            # where each run stands
    python benchmarks/cifar10.py collect                                           # -> benchmarks/results/cifar10.json
    python benchmarks/cifar10.py queue --after PID baseline:cifar_resnet56:0:30 stpp_scale075:cifar_resnet56_stim:0:30

`collect` reads each run's summary.csv / args.yaml and, for finished runs, the robustness sweep written by
`timm-stim-validate --robustness auto` (BN re-estimated per configuration; every configuration up to 64 of them,
else the full network and the same seeded 20 for every run of that architecture), run once per finished run at
the data config the run recorded (timm's architectures: 32x32, CIFAR mean / std). `run` makes that sweep itself
when its run ends, in the same slot; `collect` makes any that is missing.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, git_commit, machine_info  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm_stim.bf16_conv import native_cpu_bfloat16  # noqa: E402
from timm_stim.cards import HEADLINE_RUNS  # noqa: E402
from timm_stim.summary import precision_launches  # noqa: E402

RECIPE = ROOT / 'benchmarks' / 'recipes' / 'cifar10.yaml'
DATA = (ROOT / '..' / 'shared' / 'data' / 'cifar10').resolve()
OUT = ROOT / 'benchmarks' / 'results' / 'cifar10.json'

# arm -> (flags, description). Stage 1 of the weights issue: which ST++ for CIFAR (one sub-network per step).
ARMS: Dict[str, Any] = {
    'baseline': (['--stim-mode', 'off'], 'plain training, same recipe'),
    'st': (['--stim-mode', 'st'], 'ST: plain KL, full-size input, st space'),
    'stpp_st_space': (['--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st'],
                      'ST++ (KL-, smaller inputs 0.43) over the st space'),
    'stpp': (['--stim-mode', 'stpp', '--stim-subnets', '1'], 'ST++ with the stpp inter-stage space'),
    'stpp_scale075': (['--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st', '--stim-min-scale', '0.75'],
                      'ST++ over the st space, minimum input scale 0.75'),
    'stpp_amp2': (['--stim-mode', 'stpp', '--stim-subnets', '1', '--stim-space', 'st', '--stim-amplitude', '2'],
                  'ST++ over the st space, KL- amplitude 2'),
    # Stage 4: what a user would pick instead, at the ST++ run's wall-clock (more epochs: --epochs).
    'droppath005': (['--stim-mode', 'off', '--drop-path', '0.05'], "baseline with timm's stochastic depth 0.05"),
    'droppath01': (['--stim-mode', 'off', '--drop-path', '0.1'], "baseline with timm's stochastic depth 0.1"),
    # Controls of MobileNetV3's ST++ gain (issue 27): stpp's normalised main loss alone, and a gentler lr.
    'main_normalized': (['--stim-mode', 'off', '--stim-loss', 'kl-', '--stim-main-normalized', '--stim-amplitude', '1'],
                        'baseline with the main cross-entropy on A * LN(z), A = 1, as stpp; no sub-network'),
    'baseline_lr005': (['--stim-mode', 'off', '--lr', '0.05'], 'plain training at lr 0.05'),
}
# Per-architecture exceptions to the recipe (benchmarks/recipes/timm_archs.md): MobileNetV3 trains in float32
# (bfloat16 is 2.2x slower here for its depthwise convolutions) and has no `zero_init_last` to set.
# timm's own architectures keep their ImageNet layers but not their ImageNet cfg: they get a 10-class head and
# train and evaluate at CIFAR's 32x32 with CIFAR-10 mean / std and no resize (the CIFAR ResNets' cfgs say so).
CIFAR_DATA_FLAGS = ['--num-classes', '10', '--img-size', '32', '--crop-pct', '1.0', '--mean', '0.4914', '0.4822', '0.4465',
                    '--std', '0.2470', '0.2435', '0.2616']
MODEL_FLAGS: Dict[str, List[str]] = {
    'resnet18_stim': CIFAR_DATA_FLAGS,
    'resnet50_stim': CIFAR_DATA_FLAGS,
    'wide_resnet50_2_stim': CIFAR_DATA_FLAGS,
    'mobilenetv3_large_100_stim': CIFAR_DATA_FLAGS + ['--no-amp', '--model-kwargs'],
}
# Stage 5: ST++ as a short fine-tune of the released stage-1 baseline (`ft_<arm>`, on top of <arm>'s flags).
FINETUNE_FROM = {'cifar_resnet20_stim': 'weights/cifar_resnet20.e30_cifar10.safetensors'}
FINETUNE_FLAGS = ['--lr', '0.01', '--warmup-epochs', '0']


def arm_flags(arm: str, model: str) -> List[str]:
    """The --stim-* (and stage-5 fine-tune) flags of an arm; `ft_<arm>` starts from the released baseline."""
    if arm.startswith('ft_'):
        if model not in FINETUNE_FROM:
            raise SystemExit(f'{arm}: no released baseline to fine-tune for {model} (FINETUNE_FROM)')
        return ARMS[arm[3:]][0] + ['--initial-checkpoint', FINETUNE_FROM[model]] + FINETUNE_FLAGS
    return ARMS[arm][0]


def arm_description(arm: str) -> str:
    if arm.startswith('ft_'):
        return (f'{ARMS[arm[3:]][1]}, as a fine-tune of the released 30-epoch baseline '
                f'({" ".join(FINETUNE_FLAGS)})')
    return ARMS[arm][1]


def arm_names() -> List[str]:
    return list(ARMS) + ['ft_' + a for a in ARMS if a.startswith('stpp')]


def _runs_dir(args) -> Path:
    return Path(args.runs_dir) / 'cifar10'


def _name(model: str, arm: str, seed: int, epochs: int) -> str:
    return f'{model}-{arm}-s{seed}-e{epochs}'


def train_command(model: str, arm: str, seed: int, epochs: int, run_dir: Path) -> List[str]:
    """The timm-stim-train command of one run (relative paths as a user in the repository root would type)."""
    return ['timm-stim-train', '-c', 'benchmarks/recipes/cifar10.yaml', '--data-dir', '../shared/data/cifar10',
            '--model', model, '--seed', str(seed), '--epochs', str(epochs), *MODEL_FLAGS.get(model, []),
            *arm_flags(arm, model),
            '--output', str(run_dir.parent), '--experiment', run_dir.name]


def _args(run_dir: Path) -> Dict[str, Any]:
    import yaml
    return yaml.safe_load(open(run_dir / 'args.yaml'))


def run(args) -> int:
    """Launch the run, or resume it from its newest checkpoint, then sweep its depth configurations in the same slot
    (`sweep`, what `collect` reads); blocks until both end (use nohup / & for more) and returns the first non-zero
    exit code. A finished run is only swept, if it has not been."""
    run_dir = _runs_dir(args) / _name(args.model, args.arm, args.seed, args.epochs)
    if len(_summary(run_dir)) >= args.epochs:
        swept = (run_dir / SWEEP).exists()
        print(f'{run_dir.name} has finished its {args.epochs} epochs: ' +
              ('nothing to run' if swept else 'sweeping its depth configurations'), flush=True)
        return 0 if swept else sweep(run_dir, args.model, args.threads)
    cmd = train_command(args.model, args.arm, args.seed, args.epochs, run_dir)
    if (run_dir / 'last.pth.tar').exists() or list(run_dir.glob('recovery-*.pth.tar')):
        if '--initial-checkpoint' in cmd:  # a resumed fine-tune restores its weights from the run directory
            i = cmd.index('--initial-checkpoint')
            del cmd[i:i + 2]
        cmd += ['--resume', str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'command.txt').write_text(' '.join(train_command(args.model, args.arm, args.seed, args.epochs,
                                                                run_dir)) + '\n')
    flags = launch_precision(cmd, getattr(args, 'precision', 'auto'))  # the launch logs it in precision.txt
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    exe = [sys.executable, '-m', 'timm_stim.train'] + cmd[1:] + flags
    with open(run_dir / 'train.log', 'a') as log:
        rc = subprocess.run(exe, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc == 0 and len(_summary(run_dir)) >= args.epochs:
        return sweep(run_dir, args.model, args.threads)
    return rc


SWEEP = 'robustness.json'


def launch_precision(cmd: List[str], choice: str = 'auto') -> List[str]:
    """The flags one launch adds to the run's command. The recipe's bfloat16 autocast pays off only on a CPU with
    bfloat16 instructions; on another ('auto', or 'float32' anywhere) the run trains, or goes on, in float32: the
    speed changes, not the recipe. Each launch of `timm-stim-train` records its precision in precision.txt."""
    if choice == 'float32' or (choice == 'auto' and not native_cpu_bfloat16()):
        return [] if '--no-amp' in cmd else ['--no-amp']  # MobileNetV3's recipe is float32 already
    return []


def sweep(run_dir: Path, model: str, threads: Optional[int] = None) -> int:
    """Top-1 of the run's depth configurations with BN re-estimated (`timm-stim-validate --robustness auto`) into
    `run_dir/robustness.json` (log: `sweep.log`); returns the exit code."""
    cmd = [sys.executable, '-m', 'timm_stim.validate', '--data-dir', str(DATA), '--model', model,
           '--checkpoint', str(run_dir / 'last.pth.tar'), '--robustness', 'auto', '--results-file',
           str(run_dir / SWEEP)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **({'OMP_NUM_THREADS': str(threads)} if threads else {}))
    with open(run_dir / 'sweep.log', 'a') as log:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def parse_spec(spec: str) -> argparse.Namespace:
    """'ARM:MODEL:SEED:EPOCHS' (e.g. 'stpp_scale075:cifar_resnet56_stim:0:30') as `run`'s arguments."""
    try:
        arm, model, seed, epochs = spec.split(':')
        if arm not in arm_names():
            raise ValueError(f'unknown arm {arm!r} (one of {", ".join(arm_names())})')
        return argparse.Namespace(arm=arm, model=model, seed=int(seed), epochs=int(epochs))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'{spec!r}: want ARM:MODEL:SEED:EPOCHS ({e})') from e


def queue(args) -> int:
    """Run `args.specs` one after another, after process `--after` has ended (one core's share of the campaign:
    start one queue per core). A run that fails is reported and the queue goes on; returns the number that failed."""
    while args.after and _alive(args.after):
        time.sleep(20)
    failed = 0
    for spec in args.specs:
        print(f'{time.strftime("%F %T")} start {spec.arm} {spec.model} seed {spec.seed}, {spec.epochs} epochs',
              flush=True)
        rc = run(argparse.Namespace(**vars(args), **vars(spec)))
        failed += rc != 0
        print(f'{time.strftime("%F %T")} end (exit code {rc})', flush=True)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _summary(run_dir: Path) -> List[Dict[str, str]]:
    path = run_dir / 'summary.csv'
    return list(csv.DictReader(open(path))) if path.exists() else []


def status(args) -> None:
    """Each run: epochs done and last top-1; a finished one whether it has been swept, an unfinished one its log's age
    and its last ETA line."""
    for d in sorted(_runs_dir(args).glob('*')):
        rows = _summary(d)
        last = rows[-1] if rows else {}
        line = f'{d.name:45s} epochs done {len(rows):3d}  top1 {last.get("eval_top1", "-")}'
        log = d / 'train.log'
        epochs = int(_args(d)['epochs']) if (d / 'args.yaml').exists() else None
        if epochs is not None and len(rows) >= epochs:
            line += '  swept' if (d / SWEEP).exists() else '  not swept yet (run or collect sweeps it)'
        elif epochs is not None and log.exists():
            eta = [x for x in log.read_text(errors='replace').splitlines() if 'ETA' in x]
            age = (time.time() - log.stat().st_mtime) / 60
            line += (f'  log written {age:.0f} min ago' + (f', {eta[-1].split("ETA:")[-1].strip()}'
                                                           if eta and 'ETA:' in eta[-1] else ''))
        print(line)


def _robustness(run_dir: Path, model: str) -> Optional[Dict[str, Any]]:
    out = run_dir / SWEEP
    if not out.exists() and sweep(run_dir, model) != 0:
        raise RuntimeError(f'the sweep of {run_dir.name} failed: see {run_dir / "sweep.log"}')
    res = json.loads(out.read_text())['results']
    subs = [r['top1'] for r in res if not r['full']]
    return dict(configs=[{k: r[k] for k in ('depths', 'top1', 'flops', 'flops_share')} for r in res],
                sub_mean=round(sum(subs) / len(subs), 2) if subs else None, sub_min=min(subs) if subs else None)


def _keep_recorded(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """`runs` plus the committed results' runs whose directories are not on this machine (a machine laid anew keeps
    only the repository): the results file is the record, so a collect never drops a measured run."""
    here = {r['run'] for r in runs}
    kept = [r for r in (json.loads(OUT.read_text())['runs'] if OUT.exists() else []) if r['run'] not in here]
    if kept:
        print(f'kept from {OUT.name} (no run directory here): ' + ', '.join(r['run'] for r in kept))
    return sorted(runs + kept, key=lambda r: r['run'])


def collect(args) -> None:
    runs = []
    for d in sorted(_runs_dir(args).glob('*')):
        rows = _summary(d)
        if not rows or not (d / 'args.yaml').exists():
            continue
        a = _args(d)
        model, seed, epochs = a['model'], a['seed'], a['epochs']
        arm = next((k for k in arm_names() if d.name == _name(model, k, seed, epochs)), None)
        top1 = [float(r['eval_top1']) for r in rows]
        done = len(rows) == epochs
        runs.append(dict(
            run=d.name, arm=arm, model=model, dataset='cifar10', seed=seed, epochs=epochs, epochs_done=len(rows),
            finished=done, top1=top1[-1] if done else None,  # what the model cards average: finished runs only
            command=(d / 'command.txt').read_text().strip() if (d / 'command.txt').exists() else None,
            stim={k: v for k, v in a.items() if k.startswith('stim_')},
            top1_final=top1[-1], top1_best=max(top1), curve_top1=top1,
            img_per_s=[round(float(r['train_img_per_s']), 1) for r in rows if r.get('train_img_per_s')],
            train_hours=_train_hours(rows),
            precision_launches=precision_launches(d) or None,
            robustness=_robustness(d, model) if done and not args.no_robustness else None))
    runs = _keep_recorded(runs)
    report = dict(recipe=RECIPE.read_text(), arms={k: arm_description(k) for k in arm_names()}, commit=git_commit(),
                  machine=machine_info(threads=1), runs=runs,
                  command='python benchmarks/cifar10.py collect')
    OUT.write_text(json.dumps(report, indent=1))
    print(f'wrote {OUT} ({len(runs)} runs)')
    plot(runs)


TRAIN_IMAGES = 50_000


def _train_hours(rows: List[Dict[str, str]]) -> float:
    """Training wall-clock (one thread) implied by each epoch's logged img/s; evaluation and BN re-estimation excluded."""
    return round(sum(TRAIN_IMAGES / float(r['train_img_per_s']) for r in rows
                     if float(r.get('train_img_per_s') or 0) > 0) / 3600, 3)


def _groups(runs: List[Dict[str, Any]], model: str) -> Dict[str, List[Dict[str, Any]]]:
    """A base architecture's runs by '<arm> e<epochs>' (seeds together), in the order they appear."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        if r['model'].replace('_stim', '') == model:
            out.setdefault(f"{r['arm']} e{r['epochs']}", []).append(r)
    return out


def _robustness_panel(ax, title: str, groups: Dict[str, List[Dict[str, Any]]], colors: Dict[str, str]) -> None:
    """Top-1 of every depth configuration against its MFLOPs, averaged over a group's finished seeds (a line through
    the mean at each FLOPs level where levels are shared); the full network ringed; a group keeps its colour
    (`colors`) in every panel."""
    for label, items in groups.items():
        done = [r['robustness'] for r in items if r['robustness']]
        if not done:
            continue
        cfgs = [dict(c, top1=sum(d['configs'][i]['top1'] for d in done) / len(done))
                for i, c in enumerate(done[0]['configs'])]
        subs = [d['sub_mean'] for d in done if d.get('sub_mean') is not None]  # none: one configuration (ResNet-8)
        note = f' (sub mean {statistics.fmean(subs):.1f})' if subs else ''
        ax.scatter([c['flops'] / 1e6 for c in cfgs], [c['top1'] for c in cfgs], s=8, alpha=.6, color=colors[label],
                   label=f'{label}, {len(done)} seed{"s" * (len(done) > 1)}{note}')
        levels = sorted({c['flops'] for c in cfgs})
        if len(levels) <= len(cfgs) / 2:  # configurations share FLOPs levels (CIFAR ResNets): a line through means
            ax.plot([f / 1e6 for f in levels], [statistics.fmean(c['top1'] for c in cfgs if c['flops'] == f)
                                                for f in levels], color=colors[label], lw=1, alpha=.8)
        full = max(cfgs, key=lambda c: c['flops'])
        ax.scatter([full['flops'] / 1e6], [full['top1']], s=60, facecolors='none', edgecolors=colors[label])
    ax.set(xlabel='MFLOPs', ylabel='top-1 (%)', title=title)
    ax.grid(alpha=.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def headline_panels(groups: Dict[str, List[Dict[str, Any]]], chosen: str,
                    epochs: int) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """ResNet-20's two robustness panels: stage 1 (every arm at `epochs` from scratch), and the chosen ST++ arm
    against what a user would train instead (the baseline at any schedule, stochastic depth, the fine-tune)."""
    first = {k: g for k, g in groups.items() if g[0]['epochs'] == epochs and g[0]['arm'] in ARMS
             and not g[0]['arm'].startswith('droppath')}
    instead = {k: g for k, g in groups.items() if g[0]['arm'] in ('baseline', chosen, f'ft_{chosen}')
               or g[0]['arm'].startswith('droppath')}
    return {f'stage 1: which ST++ ({epochs} epochs)': first,
            f'`{chosen}` against what a user would train instead': instead}


def plot(runs: List[Dict[str, Any]]) -> None:
    """cifar10_curves.png (top-1 per epoch, a panel per architecture, a colour per arm and schedule),
    cifar10_robustness.png (ResNet-20, the README's picture) and cifar10_robustness_<model>.png per other
    architecture: every depth configuration's top-1 against its FLOPs, mean over seeds, the full network ringed."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print('matplotlib not installed: no plots')
        return
    models = sorted({r['model'].replace('_stim', '') for r in runs}) or ['cifar_resnet20']
    cols = min(3, len(models))
    rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        groups = _groups(runs, model)
        for i, (label, items) in enumerate(groups.items()):
            for j, r in enumerate(items):
                ax.plot(range(1, len(r['curve_top1']) + 1), r['curve_top1'], color=f'C{i % 10}', lw=1,
                        label=label if j == 0 else None)
        lowest = min((min(r['curve_top1']) for items in groups.values() for r in items if r['curve_top1']),
                     default=40)
        # a fall below 40 % (an unstable start, cards.setbacks) stays in view
        ax.set(xlabel='epoch', ylabel='top-1 (%)', title=f'{model} (one line per seed)',
               ylim=(max(0, min(40, lowest - 5)), 100))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=6)
        ax.grid(alpha=.3)
    for ax in list(axes.flat)[len(models):]:
        ax.axis('off')
    fig.suptitle('CIFAR-10 validation top-1 per epoch')
    fig.tight_layout()
    fig.savefig(OUT.with_name('cifar10_curves.png'), dpi=120)
    written = [OUT.with_name('cifar10_curves.png')]
    title = 'every depth configuration, BN re-estimated'
    for model in models:
        groups = _groups(runs, model)
        if not any(r['robustness'] for items in groups.values() for r in items):
            continue  # no finished, swept run yet: no empty figure
        colors = {label: f'C{i % 10}' for i, label in enumerate(groups)}
        if model == HEADLINE_RUNS['model']:
            panels = headline_panels(groups, HEADLINE_RUNS['chosen'], HEADLINE_RUNS['epochs'])
        else:
            panels = {'': groups}
        fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.5), squeeze=False, sharey=True)
        for ax, (what, part) in zip(axes.flat, panels.items()):
            _robustness_panel(ax, what or f'{model}: {title}', part, colors)
        if len(panels) > 1:
            fig.suptitle(f'{model}: {title}')
        fig.tight_layout()
        name = 'cifar10_robustness.png' if model == HEADLINE_RUNS['model'] else f'cifar10_robustness_{model}.png'
        path = OUT.with_name(name)
        fig.savefig(path, dpi=120)
        written.append(path)
    print('wrote ' + ', '.join(str(p.name) for p in written))


PRECISIONS = ('auto', 'recipe', 'float32')
PRECISION_HELP = ("the recipe's bfloat16 autocast where this CPU has bfloat16 instructions, else float32 (auto); "
                  "the recipe's anyway (recipe); float32 (float32). Each launch is logged in the run's precision.txt")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs-dir', default=os.environ.get('TIMM_STIM_RUNS', str(Path.home() / 'timm_stim_runs')))
    sub = p.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('run', help='launch or resume one run (blocks)')
    r.add_argument('arm', choices=arm_names())
    r.add_argument('--model', default='cifar_resnet20')
    r.add_argument('--seed', type=int, default=0)
    r.add_argument('--epochs', type=int, default=30)
    r.add_argument('--threads', type=int, default=1)
    r.add_argument('--precision', choices=PRECISIONS, default='auto', help=PRECISION_HELP)
    sub.add_parser('status', help='epochs done and last top-1 of every run')
    c = sub.add_parser('collect', help='write benchmarks/results/cifar10.json')
    c.add_argument('--no-robustness', action='store_true')
    q = sub.add_parser('queue', help='run several runs one after another (blocks; one queue per core)')
    q.add_argument('specs', nargs='+', type=parse_spec, metavar='ARM:MODEL:SEED:EPOCHS')
    q.add_argument('--after', type=int, metavar='PID', help='start when this process has ended')
    q.add_argument('--threads', type=int, default=1)
    q.add_argument('--precision', choices=PRECISIONS, default='auto', help=PRECISION_HELP)
    args = p.parse_args(argv)
    rc = {'run': run, 'status': status, 'collect': collect, 'queue': queue}[args.cmd](args)
    raise SystemExit(rc or 0)


if __name__ == '__main__':
    main()
