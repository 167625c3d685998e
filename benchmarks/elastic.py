#!/usr/bin/env python3
"""Elastic depth with no data: ship per-depth BatchNorm statistics with every `_stim` tag and measure what a user gets.

    python benchmarks/elastic.py measure [--tags NAME ...]   # estimate, measure, re-release the tags' statistics
    python benchmarks/elastic.py measure --reestimate [--tags NAME ...]   # estimate the shipped set again
    python benchmarks/elastic.py latency [--tags NAME ...]   # batch-1 / batch-64 latency of each shipped depth
    python benchmarks/elastic.py spread --tag NAME --depths 1,1,1   # how much re-estimation (c) moves by seed
    python benchmarks/elastic.py plot

`measure`, per `_stim` tag of the manifest (CIFAR-10; float32, as `model(x)` runs for a user):
1. The configurations: every one for a network with at most `--max-all` (64) of them, else the configurations the
   tag's release measured (its manifest `depths` rows: the seeded sample and the full network) and the uniform ones.
2. For each, on training-augmented images (the recipe's re-estimation) drawn from the 45,000 train images outside
   the held-out split (`timm_stim.heldout`): top-1 on the 10,000 test images with (b) the full network's statistics
   and (c) statistics estimated on 2,000 images (`recalibrate_bn`'s default: what a user with data gets); then
   (a) statistics estimated on `--bn-images` (10,000) other images, what the tag ships, and its top-1 on the
   held-out 5,000 and on test. (a) uses more images than (c) because a 2,000-image estimate moves top-1 by a few
   tenths from draw to draw (`spread`); shipping the steadier estimate keeps (a) from being an unlucky draw.
3. Ships every measured configuration of a small network (weights under 8 MB); for a larger one the Pareto set
   (best held-out top-1 per FLOPs), cut to about 10 % of the weights file. Writes `<model>.<tag>.depths.safetensors`
   into weights/, the manifest entry's `depth_stats` and its per-depth table `depths` (the shipped-statistics top-1).
   `--reestimate` repeats (a) for the set a tag already ships (its elastic.json entry) and keeps the rest.
`latency` adds per configuration the median time of one image and of a batch of 64 (float32, eval, `--threads`),
to be run with nothing else on the CPU, and rewrites the statistics files with it (the table `budget_ms` reads).
Results: benchmarks/results/elastic.json and elastic.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
import timm  # noqa: E402
import timm_stim  # noqa: E402
from timm_stim import depth_stats  # noqa: E402
from timm_stim.data import ImageTensors, TensorLoader, load_image_tensors  # noqa: E402
from timm_stim.elastic import at_depth, depth_profile, forget_stats, list_depths, stats_table  # noqa: E402
from timm_stim.evaluation import evaluate  # noqa: E402
from timm_stim.heldout import heldout_record, split_heldout  # noqa: E402
from timm_stim.models import weights  # noqa: E402

DATA = (ROOT / '..' / 'shared' / 'data' / 'cifar10').resolve()
OUT = ROOT / 'benchmarks' / 'results' / 'elastic.json'
SHIPPED_IMAGES = 10000  # what a tag ships: estimated on more images than a user would use, so it is the steadier
RECALIB_IMAGES = 2000  # (c): what a user with data gets from recalibrate_bn's default
SHIPPED_SEED, RECALIB_SEED = 1, 2
SIZE_SHARE = 0.10  # statistics of a large network: at most ~10 % of its weights file
PARTIAL = Path.home() / '.cache' / 'timm_stim' / 'elastic_partial'  # resume points (outside the repository)
SMALL_MB = 8  # a network whose weights are smaller ships every measured configuration (they are a few kB each)


def stim_tags() -> List[str]:
    return [e.name for e in weights.read_manifest() if e.model.endswith('_stim')]


def _subset(data: ImageTensors, idx: torch.Tensor) -> ImageTensors:
    return ImageTensors(data.images[idx], data.targets[idx], data.classes)


class Bench:
    """The data of one tag: loaders for held-out, test and BN estimation at the tag's data config."""

    def __init__(self, model: torch.nn.Module):
        cfg = model.pretrained_cfg
        train = load_image_tensors('', str(DATA), 'train')
        test = load_image_tensors('', str(DATA), 'validation')
        rest, held = split_heldout(len(train))
        self.heldout_record = heldout_record(len(train))
        self.rest = _subset(train, rest)
        common = dict(mean=cfg['mean'], std=cfg['std'], input_size=cfg['input_size'], channels_last=True)
        self.heldout = TensorLoader(_subset(train, held), 250, False, **common)
        self.test = TensorLoader(test, 250, False, **common)
        self.common = common

    def bn_batches(self, seed: int):
        return iter(TensorLoader(self.rest, 128, True, seed=seed, padding=4, hflip=0.5, **self.common))

    def top1(self, model, loader, depths) -> float:
        with at_depth(model, depths):
            return round(float(evaluate(model, loader, torch.device('cpu'), channels_last=True)['top1']), 2)


def configs_of(model, entry, max_all: int) -> List[tuple]:
    """Every configuration up to `max_all`; else those the release measured, the full network, and every uniform one
    (the same blocks kept in each stage: a CIFAR ResNet-56 at (3,3,3) is a ResNet-20, comparable with one trained
    alone)."""
    every = list_depths(model)
    if len(every) <= max_all:
        return every
    measured = {tuple(r['depths']) for r in entry.depths}
    uniform = {d for d in every if len(set(d)) == 1}
    return sorted(measured | uniform | {every[-1]}, key=every.index)


def pareto(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows not beaten by a cheaper-or-equal one on held-out top-1 (the full network always stays)."""
    out, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r['flops'], -r['heldout_top1'])):
        if r['full'] or r['heldout_top1'] > best:
            out.append(r)
            best = max(best, r['heldout_top1'])
    return out


def measure_config(model, bench: 'Bench', depths: tuple, full: bool, bn_images: int,
                   prior: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Top-1 of one configuration: (b) the full network's statistics and (c) statistics re-estimated on
    `RECALIB_IMAGES` images (taken from `prior`, a row of an earlier measurement, when it has them: neither depends on
    what ships), then (a) statistics estimated on `bn_images` images (left attached: what the tag ships)."""
    if full:
        if prior and 'heldout_top1' in prior:  # the full network's own statistics: nothing to estimate
            return {k: prior[k] for k in ('heldout_top1', 'top1', 'top1_full_stats', 'top1_recalib')}
        top1 = bench.top1(model, bench.test, None)
        return dict(heldout_top1=bench.top1(model, bench.heldout, None), top1=top1, top1_full_stats=top1,
                    top1_recalib=top1)
    row = {k: prior[k] for k in ('top1_full_stats', 'top1_recalib') if prior and k in prior}
    if len(row) < 2:
        row['top1_full_stats'] = bench.top1(model, bench.test, depths)  # (b), before any estimate
        timm_stim.recalibrate_bn(model, bench.bn_batches(RECALIB_SEED), RECALIB_IMAGES, depths=depths)
        row['top1_recalib'] = bench.top1(model, bench.test, depths)  # (c)
    timm_stim.recalibrate_bn(model, bench.bn_batches(SHIPPED_SEED), bn_images, depths=depths)
    row.update(heldout_top1=bench.top1(model, bench.heldout, depths), top1=bench.top1(model, bench.test, depths),
               bn_images=bn_images)  # (a)
    return row


def measure_tag(name: str, max_all: int, bn_images: int, prior: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Measure `name` and re-release its statistics. With `prior` (its elastic.json entry) only the configurations it
    ships are estimated again, on `bn_images` images, and the same set ships; its other rows, its (b) and (c) and
    its latency are kept."""
    t0 = time.time()
    model = timm.create_model(name, pretrained=True).eval()
    entry = weights.find_entry(*name.split('.', 1))
    forget_stats(model)  # estimate afresh: never measure statistics against themselves
    bench = Bench(model)
    before = {tuple(r['depths']): r for r in (prior or {}).get('rows', [])}
    configs = configs_of(model, entry, max_all)
    if prior:
        configs = [d for d in configs if before.get(d, {}).get('shipped')]
    prof = {tuple(p['depths']): p for p in depth_profile(model, depths=configs)}
    full = list_depths(model)[-1]
    partial = PARTIAL / f'{name}.pt'  # resume point: a killed measurement goes on where it stopped
    done = torch.load(partial, weights_only=True) if partial.is_file() else dict(rows=[], table={})
    rows = done['rows']
    if done['table']:
        timm_stim.elastic.attach_depth_stats(model, done['table'])
    with torch.no_grad():
        for depths in configs[len(rows):]:
            p, old = prof[depths], before.get(depths, {})
            row = dict(depths=list(depths), full=depths == full, flops=p['flops'], params=p['params'],
                       flops_share=round(p['flops_share'], 4),
                       **{k: old[k] for k in ('latency_ms', 'latency_ms_b64') if k in old})
            row.update(measure_config(model, bench, depths, depths == full, bn_images, old))
            rows.append(row)
            PARTIAL.mkdir(parents=True, exist_ok=True)
            torch.save(dict(rows=rows, table=dict(stats_table(model))), partial)
            print(f'{name} {depths}: shipped {row["top1"]}  full-stats {row["top1_full_stats"]}  '
                  f're-estimated {row["top1_recalib"]}  held-out {row["heldout_top1"]}', flush=True)
    if prior:
        shipped = rows
    else:
        small = entry.size is not None and entry.size < SMALL_MB * 2 ** 20
        shipped = _within_size(model, entry, rows if small else pareto(rows))
    keep = {tuple(r['depths']) for r in shipped if not r['full']}
    table = {d: s for d, s in stats_table(model).items() if d in keep}
    for r in rows:
        r['shipped'] = r['full'] or tuple(r['depths']) in keep
    release(entry, table, shipped, bench.heldout_record, bn_images)
    partial.unlink()
    new = {tuple(r['depths']): r for r in rows}
    rows = [new.get(d, r) for d, r in before.items()] if prior else rows
    return dict(tag=name, configs=len(rows), shipped=len(keep) + 1, heldout=bench.heldout_record, rows=rows,
                bn_images=bn_images, seconds=round(time.time() - t0, 1))


def _within_size(model, entry, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """All rows when their statistics fit `SIZE_SHARE` of the weights file (or it is a small network), else the
    full network and the best held-out rows that do."""
    per = {tuple(r['depths']): 8 * sum(v[0].numel() for v in stats_table(model).get(tuple(r['depths']), {}).values())
           for r in rows}
    budget = SIZE_SHARE * (entry.size or 0)
    if sum(per.values()) <= budget or entry.size is None or entry.size < SMALL_MB * 2 ** 20:
        return rows
    out, used = [r for r in rows if r['full']], 0
    for r in sorted((r for r in rows if not r['full']), key=lambda r: -r['heldout_top1']):
        if used + per[tuple(r['depths'])] <= budget:
            out.append(r)
            used += per[tuple(r['depths'])]
    return sorted(out, key=lambda r: r['flops'])


def _table_rows(rows: Sequence[Dict[str, Any]], machine: Optional[str]) -> List[Dict[str, Any]]:
    """What the statistics file carries: the `list_depths(measured=True)` table."""
    keys = ('depths', 'full', 'flops_share', 'heldout_top1', 'latency_ms', 'latency_ms_b64')
    return [dict({k: r.get(k) for k in keys}, mflops=round(r['flops'] / 1e6, 2), test_top1=r['top1']) for r in rows]


def release(entry, table, rows, heldout: Dict[str, Any], bn_images: int, machine: Optional[str] = None) -> None:
    """Switch the manifest entry to a new statistics file (under the manifest lock, all or nothing) whose table is
    `rows`; the card's per-depth table becomes the shipped-statistics top-1."""
    from timm_stim.bf16_conv import cpu_name
    machine = machine or cpu_name()
    info = dict(model=entry.name, rows=_table_rows(rows, machine), machine=machine, heldout=heldout,
                bn_images=bn_images, bn_seed=SHIPPED_SEED, precision='float32',
                note='statistics estimated on training-augmented images outside the held-out split')
    fields = dict(configs=[list(d) for d in table], heldout=heldout, machine=machine, bn_images=bn_images)
    card_rows = [dict({k: r[k] for k in ('depths', 'full', 'top1', 'flops', 'params', 'flops_share', 'heldout_top1')
                       if k in r}, bn='shipped' if not r['full'] else 'own') for r in rows]
    weights.set_depth_stats(entry.name, depth_stats.to_bytes(table, info), fields, depths=card_rows)


def _load_report() -> Dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.exists() else {'tags': {}}


def measure(args) -> None:
    for name in args.tags or stim_tags():
        prior = _load_report()['tags'].get(name) if args.reestimate else None
        if args.reestimate and not prior:
            raise SystemExit(f'--reestimate: {name} has no entry in {OUT}; measure it first.')
        result = dict(measure_tag(name, args.max_all, args.bn_images, prior),
                      command=command_line('benchmarks/elastic.py'))

        def change(tags, name=name, result=result):
            old = tags.get(name) or {}
            if prior:  # the latency and spread measured before still hold; the spread's `shipped` is the new (a)
                earlier = [c for c in old.get('earlier_commands', []) + [old.get('command')] if c]
                result = dict(old, **result, earlier_commands=earlier)
                top1 = {tuple(r['depths']): r['top1'] for r in result['rows']}
                for sp in result.get('recalib_spread', []):
                    sp.update(shipped=top1[tuple(sp['depths'])], shipped_images=args.bn_images)
            tags[name] = result
        _update_tag(args, name, change)


def _update_tag(args, name: str, change) -> None:
    """Apply `change(report['tags'])` to elastic.json as read now, under a file lock (git-ignored, beside it), and
    write it: several measurements may run at once, one tag each, and each merges instead of overwriting."""
    from filelock import FileLock
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(OUT.with_name('.elastic.lock'))):
        report = _load_report()
        change(report['tags'])
        _write(report, args)


@torch.no_grad()
def latency_tag(name: str, threads: int, repeats: int) -> Dict[tuple, Dict[int, float]]:
    """Median ms per forward of each shipped configuration at batch 1 and 64, configurations interleaved round-robin
    (each round times every configuration once), so that a drift of the machine touches all alike."""
    model = timm.create_model(name, pretrained=True).eval()
    rows = list_depths(model, measured=True)
    c, h, w = model.pretrained_cfg['input_size']
    times: Dict[tuple, Dict[int, List[float]]] = {tuple(r['depths']): {1: [], 64: []} for r in rows}
    for batch, rounds in ((1, repeats), (64, max(5, repeats // 10))):
        x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
        for i in range(rounds + 2):  # two warm-up rounds
            for r in rows:
                with at_depth(model, None if r['full'] else r['depths']):
                    t = time.perf_counter()
                    model(x)
                    if i >= 2:
                        times[tuple(r['depths'])][batch].append(time.perf_counter() - t)
    return {d: {b: round(1000 * statistics.median(v), 3) for b, v in per.items()} for d, per in times.items()}


def latency(args) -> None:
    torch.set_num_threads(args.threads)
    from timm_stim.bf16_conv import cpu_name
    for name in args.tags or list(_load_report()['tags']):
        times = latency_tag(name, args.threads, args.repeats)

        def change(tags, name=name, times=times):
            for r in tags[name]['rows']:
                if tuple(r['depths']) in times:
                    r['latency_ms'], r['latency_ms_b64'] = times[tuple(r['depths'])][1], times[tuple(r['depths'])][64]
            entry = weights.find_entry(*name.split('.', 1))
            table, _ = depth_stats.load(depth_stats.resolve(entry))
            release(entry, table, [r for r in tags[name]['rows'] if r.get('shipped')], tags[name]['heldout'],
                    tags[name].get('bn_images', RECALIB_IMAGES), machine=cpu_name())
            tags[name]['latency'] = dict(threads=args.threads, precision='float32', machine=cpu_name(),
                                         note='medians; training runs paused while measured',
                                         command=command_line('benchmarks/elastic.py'))
        _update_tag(args, name, change)
        print(f'{name}: latency of {len(times)} configurations', flush=True)


@torch.no_grad()
def spread(args) -> None:
    """How much (c) itself moves: top-1 of one configuration with statistics re-estimated on 2,000 images drawn with
    each of `--seeds`, against what the tag ships; into the tag's `recalib_spread` in elastic.json."""
    depths = tuple(int(d) for d in args.depths.split(','))
    model = timm.create_model(args.tag, pretrained=True).eval()
    bench = Bench(model)
    shipped = bench.top1(model, bench.test, depths)
    forget_stats(model)
    runs = {}
    for seed in args.seeds:
        timm_stim.recalibrate_bn(model, bench.bn_batches(seed), RECALIB_IMAGES, depths=depths)
        runs[seed] = bench.top1(model, bench.test, depths)
        print(f'{args.tag} {depths} seed {seed}: {runs[seed]} (shipped {shipped})', flush=True)
    def change(tags):  # one entry per configuration: seeds measured by earlier calls are kept
        entries = tags[args.tag].setdefault('recalib_spread', [])
        old = next((e for e in entries if tuple(e['depths']) == depths), {})
        if old:
            entries.remove(old)
        by_seed = {**old.get('recalib_by_seed', {}), **{str(k): v for k, v in runs.items()}}
        by_seed = dict(sorted(by_seed.items(), key=lambda kv: int(kv[0])))
        vals = list(by_seed.values())
        entries.append(dict(depths=list(depths), shipped=shipped, shipped_seed=SHIPPED_SEED, recalib_by_seed=by_seed,
                            mean=round(statistics.fmean(vals), 3), bn_images=RECALIB_IMAGES,
                            commands=old.get('commands', []) + [command_line('benchmarks/elastic.py')],
                            sd=round(statistics.stdev(vals), 3) if len(vals) > 1 else None))
    _update_tag(args, args.tag, change)


def _write(report: Dict[str, Any], args) -> None:
    report.pop('command', None)  # each tag records the command that measured it; the file, the last one to write
    report.update(last_command=command_line('benchmarks/elastic.py'), commit=git_commit(), dirty=git_dirty(),
                  machine=machine_info(getattr(args, 'threads', None)), data=str(DATA.name), precision='float32')
    write_report(report, OUT, plot, no_plot=True)


def plot(report: Dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tags = list(report['tags'])
    fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.6), squeeze=False)
    for ax, name in zip(axes[0], tags):
        rows = sorted(report['tags'][name]['rows'], key=lambda r: r['flops'])
        x = [r['flops'] / 1e6 for r in rows]
        for key, label, style in (('top1', '(a) shipped statistics', 'o'), ('top1_full_stats', '(b) full network\'s',
                                  'x'), ('top1_recalib', '(c) re-estimated, 2,000 images', '.')):
            ax.plot(x, [r[key] for r in rows], style, label=label, alpha=0.8)
        ax.set_title(name.replace('_cifar10', ''), fontsize=8)
        ax.set_xlabel('MFLOPs')
        ax.set_ylabel('CIFAR-10 test top-1 (%)')
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('measure')
    m.add_argument('--tags', nargs='*')
    m.add_argument('--max-all', type=int, default=64, help='every configuration up to this many, else the measured')
    m.add_argument('--bn-images', type=int, default=SHIPPED_IMAGES, help='images the shipped statistics are '
                   'estimated on (default %(default)s)')
    m.add_argument('--reestimate', action='store_true', help='estimate again only the configurations a tag '
                   'already ships (its elastic.json entry), keeping its set, its (b), (c) and latency')
    lt = sub.add_parser('latency')
    lt.add_argument('--tags', nargs='*')
    lt.add_argument('--threads', type=int, default=1)
    lt.add_argument('--repeats', type=int, default=50)
    sp = sub.add_parser('spread', help='top-1 of one configuration re-estimated with several seeds')
    sp.add_argument('--tag', required=True)
    sp.add_argument('--depths', required=True, help='e.g. 1,1,1')
    sp.add_argument('--seeds', type=int, nargs='+', default=[2, 3, 4, 5, 6])
    sub.add_parser('plot')
    args = p.parse_args(argv)
    if args.cmd == 'plot':
        plot(_load_report(), OUT.with_suffix('.png'))
        return
    {'measure': measure, 'latency': latency, 'spread': spread}[args.cmd](args)


if __name__ == '__main__':
    main()
