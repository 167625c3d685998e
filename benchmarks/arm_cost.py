#!/usr/bin/env python3
"""Training cost of each arm of the CIFAR-10 campaign (`benchmarks/cifar10.py` ARMS), on a quiet machine.

One-thread training img/s of every arm's exact `--stim-*` flags (`throughput.sweep_worker`: channels-last, SGD,
the arm's precision, 32x32, batch 128), each in a fresh process, the arms interleaved for `--rounds` rounds (the
median counts). From it, the epochs a baseline gets in the wall-clock of an arm's run (stage 4 of weights issue
10: "the same wall-clock as the ST++ run"): `epochs x baseline img/s / arm img/s`. The long runs' own logged img/s
cannot give this: two runs, helpers and tests share the two cores while they train.

    python benchmarks/arm_cost.py --model cifar_resnet20 --arms baseline stpp_st_space stpp_scale075   # pause runs first
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, machine_info, write_report  # noqa: E402
import cifar10  # noqa: E402
import throughput  # noqa: E402

from timm_stim.trainer import StimConfig, add_stim_args  # noqa: E402

OUT = ROOT / 'benchmarks' / 'results' / 'arm_cost.json'


def stim_fields(arm: str) -> Dict[str, Any]:
    """The `StimConfig` fields of an arm's `--stim-*` flags (seed left out: it does not change the cost)."""
    parser = argparse.ArgumentParser()
    add_stim_args(parser)
    args, _ = parser.parse_known_args(cifar10.ARMS[arm][0])  # other flags (--drop-path) leave the cost alone
    cfg = StimConfig.from_args(args)
    return {k: v for k, v in vars(cfg).items() if k != 'seed'}


def interleaved_rates(pairs: Sequence[Tuple[str, str]], precision: str, steps: int, rounds: int,
                      data_dir: str) -> Dict[Tuple[str, str], List[float]]:
    """One-thread training img/s of each (model, arm), each point in a fresh process, the pairs round-robin for
    `rounds` rounds (so that a drift of the machine touches all alike)."""
    point = argparse.Namespace(data_dir=data_dir)
    rates: Dict[Tuple[str, str], List[float]] = {pair: [] for pair in pairs}
    for r in range(rounds):
        for model, arm in pairs:
            rate = throughput.sweep_point(point, model, precision, json.dumps(stim_fields(arm)), '1x1t', steps)
            rates[(model, arm)].append(round(rate, 1))
            print(f'round {r + 1} {model} {arm:16s} {rate:7.1f} img/s', flush=True)
    return rates


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='cifar_resnet20')
    p.add_argument('--arms', nargs='+', default=['baseline', 'stpp_st_space'], choices=list(cifar10.ARMS))
    p.add_argument('--precision', default='bf16', choices=('bf16', 'fp32'))
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=30, help='epochs of the arm runs (for the equal-wall-clock epochs)')
    p.add_argument('--data-dir', default=str(cifar10.DATA))
    p.add_argument('--out', default=str(OUT))
    args = p.parse_args(argv)
    if 'baseline' not in args.arms:
        args.arms = ['baseline'] + args.arms
    machine = machine_info(threads=1, load_key='loadavg_start')
    rates = {arm: v for (_, arm), v in interleaved_rates([(args.model, arm) for arm in args.arms], args.precision,
                                                         args.steps, args.rounds, args.data_dir).items()}
    base = statistics.median(rates['baseline'])
    rows = [dict(arm=arm, flags=cifar10.ARMS[arm][0], img_per_s=statistics.median(v), rounds=v,
                 cost_vs_baseline=round(base / statistics.median(v), 3),
                 baseline_epochs_same_wall_clock=round(args.epochs * base / statistics.median(v), 1))
            for arm, v in rates.items()]
    report = dict(command=command_line('benchmarks/arm_cost.py', argv), commit=git_commit(), machine=machine,
                  model=args.model, precision=args.precision, threads=1, batch_size=128, input=32,
                  timed_steps=args.steps, epochs=args.epochs, rows=rows)
    write_report(report, Path(args.out), end_key=('machine', 'loadavg_end'))
    for row in rows:
        print(f"{row['arm']:16s} {row['img_per_s']:7.1f} img/s  x{row['cost_vs_baseline']:.2f}  "
              f"baseline epochs at equal wall-clock: {row['baseline_epochs_same_wall_clock']}")
    return report


if __name__ == '__main__':
    main()
