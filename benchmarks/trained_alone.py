#!/usr/bin/env python3
"""Is a sub-network as good as the same network trained alone? (issue 27, question 1)

    python benchmarks/trained_alone.py        # -> benchmarks/results/trained_alone.json
    python benchmarks/trained_alone.py subnet cifar_resnet56_stim.stpp_s075_e30_cifar10 3,3,3   # a missing sub-network
    python benchmarks/trained_alone.py timing   # step cost of each run compared, on a quiet CPU (pause runs first)

Reads `benchmarks/results/cifar10.json` (the campaign's runs, each with its depth sweep: top-1 of every
configuration with BN re-estimated on 2,000 training images) and pairs, at the same epochs and recipe:
* ResNet-20 ST++ (`stpp_scale075`) at (1,1,1) and (2,2,2) with ResNet-8 and ResNet-14 trained alone (`baseline`),
* ResNet-56 ST++ at (3,3,3) with ResNet-20 trained alone,
and each full ST++ network with its own baseline. Every run trained on the same 50,000 CIFAR-10 train images and
is reported on the 10,000 test images. Cost: the ST++ run's training hours against the sum of the separate runs
it replaces, twice: the runs' own training hours (one-thread runs sharing a 2-core CPU with another run, tests and
helpers, so they move with the load: ResNet-14 alone took 0.98 h with seed 0 and 0.60 h with seeds 1 and 2), and,
from `timing`, one-thread training img/s of each (model, arm) at the runs' precision, in fresh processes interleaved
round-robin on a quiet CPU: the cost of the ST++ run against the sum of the runs it replaces, in ResNet-20 baseline
epochs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit  # noqa: E402

RESULTS = ROOT / 'benchmarks' / 'results'
OUT = RESULTS / 'trained_alone.json'
ST_ARM = 'stpp_scale075'
# (ST++ model, depths) -> the architecture that sub-network is, trained alone
PAIRS = [('cifar_resnet20_stim', (1, 1, 1), 'cifar_resnet8'), ('cifar_resnet20_stim', (2, 2, 2), 'cifar_resnet14'),
         ('cifar_resnet20_stim', (3, 3, 3), 'cifar_resnet20'), ('cifar_resnet56_stim', (3, 3, 3), 'cifar_resnet20'),
         ('cifar_resnet56_stim', (9, 9, 9), 'cifar_resnet56')]


SUBNETS = RESULTS / 'trained_alone_subnets.json'  # sub-networks a run's sweep did not include (`subnet` command)


def _sub_top1(run: Dict[str, Any], depths: Sequence[int]) -> Optional[float]:
    """The run's sweep row of `depths`, else a `subnet` measurement of the tag released from this run."""
    for row in (run.get('robustness') or {}).get('configs', []):
        if tuple(row['depths']) == tuple(depths):
            return row['top1']
    extra = json.loads(SUBNETS.read_text()) if SUBNETS.exists() else {}
    for m in extra.get('measured', []):
        if m['run'] == run['run'] and tuple(m['depths']) == tuple(depths):
            return m['top1']
    return None


def subnet(tag: str, depths: Sequence[int]) -> None:
    """Top-1 of one sub-network of a released tag with BN re-estimated on 2,000 training-augmented images (as the
    campaign's sweeps), CIFAR-10 test, float32; appended to trained_alone_subnets.json under the tag's run."""
    import timm
    import timm_stim
    from timm_stim.models import weights
    from elastic import RECALIB_IMAGES, RECALIB_SEED, Bench
    model = timm.create_model(tag, pretrained=True).eval()
    timm_stim.elastic.forget_stats(model)
    bench = Bench(model)
    timm_stim.recalibrate_bn(model, bench.bn_batches(RECALIB_SEED), RECALIB_IMAGES, depths=depths)
    entry = weights.find_entry(*tag.split('.', 1))
    run = Path(entry.source.split(' (')[0]).parent.name
    row = dict(tag=tag, run=run, depths=list(depths), top1=bench.top1(model, bench.test, depths),
               bn_images=RECALIB_IMAGES, precision='float32',
               command=command_line('benchmarks/trained_alone.py'))
    data = json.loads(SUBNETS.read_text()) if SUBNETS.exists() else {'measured': []}
    data['measured'] = [m for m in data['measured'] if (m['tag'], m['depths']) != (tag, list(depths))] + [row]
    SUBNETS.write_text(json.dumps(data, indent=1) + '\n')
    print(row)


def _summary(values: List[float]) -> Dict[str, Any]:
    return dict(mean=round(statistics.mean(values), 2), sd=round(statistics.stdev(values), 2) if len(values) > 1
                else None, n=len(values), values=values)


def compare(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for model, depths, alone in PAIRS:
        for epochs in sorted({r['epochs'] for r in runs if r['model'] == model and r['arm'] == ST_ARM}):
            st = [r for r in runs if r['model'] == model and r['arm'] == ST_ARM and r['epochs'] == epochs
                  and r.get('finished')]
            ref = [r for r in runs if r['model'] == alone and r['arm'] == 'baseline' and r['epochs'] == epochs
                   and r.get('finished')]
            st_top = [(r['seed'], _sub_top1(r, depths)) for r in st]
            st_top = [(s, t) for s, t in st_top if t is not None]
            if not st_top or not ref:
                continue
            st_hours = statistics.mean(r['train_hours'] for r in st)
            out.append(dict(
                st_model=model, st_arm=ST_ARM, dataset='cifar10', depths=list(depths), trained_alone=alone,
                epochs=epochs,
                subnetwork=_summary([t for _, t in st_top]), subnetwork_seeds=[s for s, _ in st_top],
                alone=_summary([r['top1'] for r in ref]), alone_seeds=[r['seed'] for r in ref],
                minus=round(statistics.mean(t for _, t in st_top) - statistics.mean(r['top1'] for r in ref), 2),
                st_hours=round(st_hours, 2), alone_hours=round(statistics.mean(r['train_hours'] for r in ref), 2)))
    return out


def cost(runs: List[Dict[str, Any]], epochs: int = 30) -> Dict[str, Any]:
    """One ResNet-20 ST++ run against ResNet-8 + ResNet-14 + ResNet-20 each trained alone (mean hours per run)."""
    def hours(model, arm):
        hs = [r['train_hours'] for r in runs if r['model'] == model and r['arm'] == arm and r['epochs'] == epochs
              and r.get('finished')]
        return round(statistics.mean(hs), 2) if hs else None
    alone = {m: hours(m, 'baseline') for m in ('cifar_resnet8', 'cifar_resnet14', 'cifar_resnet20')}
    return dict(epochs=epochs, st_hours=hours('cifar_resnet20_stim', ST_ARM), alone_hours=alone,
                alone_total=round(sum(alone.values()), 2) if None not in alone.values() else None)


TIMED = [('cifar_resnet8', 'baseline'), ('cifar_resnet14', 'baseline'), ('cifar_resnet20', 'baseline'),
         ('cifar_resnet20_stim', ST_ARM)]  # ResNet-20 ST++ against the three networks it replaces, and its baseline


def timing(rounds: int = 3, steps: int = 40) -> Dict[str, Any]:
    """Median one-thread training img/s of each `TIMED` (model, arm) with the arm's exact `--stim-*` flags
    (`throughput.sweep_worker`, batch 128, 32x32, the precision the recipe picks on this CPU), each in a fresh
    process, round-robin for `rounds` rounds; cost per epoch relative to the ResNet-20 baseline."""
    import arm_cost
    import cifar10
    from _common import machine_info
    from timm_stim.bf16_conv import cpu_name, native_cpu_bfloat16
    precision = 'bf16' if native_cpu_bfloat16() else 'fp32'
    machine = machine_info(threads=1, load_key='loadavg_start')
    rates = arm_cost.interleaved_rates(TIMED, precision, steps, rounds, str(cifar10.DATA))
    base = statistics.median(rates[('cifar_resnet20', 'baseline')])
    rows = [dict(model=m, arm=a, img_per_s=statistics.median(r), rounds=r,
                 cost_vs_resnet20_baseline=round(base / statistics.median(r), 3)) for (m, a), r in rates.items()]
    return dict(rows=rows, precision=precision, cpu=cpu_name(), threads=1, batch_size=128, timed_steps=steps,
                machine=machine, command=command_line('benchmarks/trained_alone.py'), commit=git_commit(),
                note='training runs paused while timed')


def step_cost_summary(t: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """From `timing`: one ResNet-20 ST++ epoch and the three networks it replaces, in ResNet-20 baseline epochs."""
    if not t:
        return None
    cost = {(r['model'], r['arm']): r['cost_vs_resnet20_baseline'] for r in t['rows']}
    alone = {m: cost[(m, a)] for m, a in TIMED if a == 'baseline'}
    return dict(st=cost[('cifar_resnet20_stim', ST_ARM)], alone=alone, alone_total=round(sum(alone.values()), 3))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == 'timing':  # python benchmarks/trained_alone.py timing (runs paused)
        old, t = json.loads(OUT.read_text()) if OUT.exists() else {}, timing()
        OUT.write_text(json.dumps(dict(old, timing=t, step_cost=step_cost_summary(t)), indent=1) + '\n')
        print(f'wrote {OUT}')
        return
    if len(sys.argv) > 1 and sys.argv[1] == 'subnet':  # python benchmarks/trained_alone.py subnet TAG 3,3,3
        subnet(sys.argv[2], tuple(int(d) for d in sys.argv[3].split(',')))
        return
    data = json.loads((RESULTS / 'cifar10.json').read_text())
    report = dict(command=command_line('benchmarks/trained_alone.py'), commit=git_commit(), source='cifar10.json',
                  note='sub-network top-1: BN re-estimated on 2,000 training images per configuration (the run\'s '
                       'sweep); trained alone: the run\'s final top-1; CIFAR-10 test, same recipe and train images',
                  pairs=compare(data['runs']), cost=cost(data['runs']))
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    if old.get('timing'):  # measured apart, on a quiet CPU: kept until measured again
        report.update(timing=old['timing'], step_cost=step_cost_summary(old['timing']))
    OUT.write_text(json.dumps(report, indent=1) + '\n')
    for p in report['pairs']:
        print(f"{p['st_model']} {tuple(p['depths'])} e{p['epochs']}: {p['subnetwork']['mean']} "
              f"(n={p['subnetwork']['n']}) vs {p['trained_alone']} alone {p['alone']['mean']} (n={p['alone']['n']}): "
              f"{p['minus']:+.2f}")
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
