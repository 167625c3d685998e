#!/usr/bin/env python3
"""Is a sub-network as good as the same network trained alone? (issue 27, question 1)

    python benchmarks/trained_alone.py        # -> benchmarks/results/trained_alone.json
    python benchmarks/trained_alone.py subnet cifar_resnet56_stim.stpp_s075_e30_cifar10 3,3,3   # a missing sub-network

Reads `benchmarks/results/cifar10.json` (the campaign's runs, each with its depth sweep: top-1 of every
configuration with BN re-estimated on 2,000 training images) and pairs, at the same epochs and recipe:
* ResNet-20 ST++ (`stpp_scale075`) at (1,1,1) and (2,2,2) with ResNet-8 and ResNet-14 trained alone (`baseline`),
* ResNet-56 ST++ at (3,3,3) with ResNet-20 trained alone,
and each full ST++ network with its own baseline. Every run trained on the same 50,000 CIFAR-10 train images and
is reported on the 10,000 test images. Cost: the ST++ run's training hours against the sum of the separate runs
it replaces (one-thread runs on a shared 2-core CPU: hours are indicative, the step-cost ratio is in arm_cost.json).
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
    from elastic import BN_IMAGES, RECALIB_SEED, Bench
    model = timm.create_model(tag, pretrained=True).eval()
    timm_stim.elastic.forget_stats(model)
    bench = Bench(model)
    timm_stim.recalibrate_bn(model, bench.bn_batches(RECALIB_SEED), BN_IMAGES, depths=depths)
    entry = weights.find_entry(*tag.split('.', 1))
    run = Path(entry.source.split(' (')[0]).parent.name
    row = dict(tag=tag, run=run, depths=list(depths), top1=bench.top1(model, bench.test, depths),
               bn_images=BN_IMAGES, precision='float32',
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
                st_model=model, depths=list(depths), trained_alone=alone, epochs=epochs,
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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == 'subnet':  # python benchmarks/trained_alone.py subnet TAG 3,3,3
        subnet(sys.argv[2], tuple(int(d) for d in sys.argv[3].split(',')))
        return
    data = json.loads((RESULTS / 'cifar10.json').read_text())
    report = dict(command=command_line('benchmarks/trained_alone.py'), commit=git_commit(), source='cifar10.json',
                  note='sub-network top-1: BN re-estimated on 2,000 training images per configuration (the run\'s '
                       'sweep); trained alone: the run\'s final top-1; CIFAR-10 test, same recipe and train images',
                  pairs=compare(data['runs']), cost=cost(data['runs']))
    OUT.write_text(json.dumps(report, indent=1) + '\n')
    for p in report['pairs']:
        print(f"{p['st_model']} {tuple(p['depths'])} e{p['epochs']}: {p['subnetwork']['mean']} "
              f"(n={p['subnetwork']['n']}) vs {p['trained_alone']} alone {p['alone']['mean']} (n={p['alone']['n']}): "
              f"{p['minus']:+.2f}")
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
