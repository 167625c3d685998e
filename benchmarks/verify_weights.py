#!/usr/bin/env python3
"""Do the released tags load with `pretrained=True` offline, as a new user gets them, and reproduce their top-1?

For each tag (arguments; default: every tag of weights/manifest.json) this makes the install a user would have,
then runs `timm-stim-validate --model <model>.<tag> --pretrained` on the tag's validation data in a fresh
interpreter with `HF_HUB_OFFLINE=1`, outside the repository, and compares top-1 with the manifest's (re-measured at
release) within `--tolerance` (0.1 pt: the weights issues' bar).

- `--install clone` (default): `git clone` of the committed HEAD (large files are joined from their committed
  parts on first use), imported from the clone.
- `--install wheel`: `pip install --no-deps --target` of that clone (the wheel's contents, its _weights included).
  Files kept out of the wheel (weights/hub/) come from the Hub, which this machine cannot reach: those tags are
  reported as `needs the Hub`, not as failures.

    python benchmarks/verify_weights.py                               # every tag, from a fresh clone
    python benchmarks/verify_weights.py --install wheel
    python benchmarks/verify_weights.py cifar_resnet20_stim.stpp_s075_e30_cifar10 --out /tmp/v.json

Writes benchmarks/results/verify_weights_<install>.json (command, commit, machine, per tag: recorded and measured top-1,
difference, ok, seconds, how it was installed). Exits 1 when a measured tag misses the tolerance.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm_stim.models.weights import WeightsEntry, part_files, read_manifest  # noqa: E402

RESULTS = ROOT / 'benchmarks' / 'results'
DATA = {'cifar10': (ROOT / '..' / 'shared' / 'data' / 'cifar10').resolve()}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('tags', nargs='*', metavar='MODEL.TAG', help='default: every tag of the manifest')
    p.add_argument('--install', choices=('clone', 'wheel'), default='clone')
    p.add_argument('--tolerance', type=float, default=0.1, metavar='PT')
    p.add_argument('--data-dir', default=None, metavar='DIR', help='default: ../shared/data/<dataset>')
    p.add_argument('-b', '--batch-size', type=int, default=256)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default=None, metavar='FILE', help='default: results/verify_weights_<install>.json')
    return p.parse_args(argv)


def install(kind: str, work: Path) -> Dict[str, Any]:
    """A clone of the committed HEAD, and for `wheel` its pip-installed contents: {'path': PYTHONPATH, 'cwd': ...}."""
    clone = work / 'clone'
    subprocess.run(['git', 'clone', '-q', '--no-hardlinks', str(ROOT), str(clone)], check=True)
    if kind == 'clone':
        return dict(path=clone, cwd=clone, weights=clone / 'weights')
    site = work / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--no-index',
                    '--target', str(site), str(clone)], check=True)
    return dict(path=site, cwd=work, weights=site / 'timm_stim' / '_weights')


def _has_parts(path: Path) -> bool:
    try:
        return bool(part_files(path))
    except ValueError:  # damaged parts are in the install: measuring reports the error
        return True


def measure(entry: WeightsEntry, where: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """Top-1 of `pretrained=True` in a fresh, offline interpreter that imports timm_stim from `where`."""
    data = args.data_dir or DATA.get(entry.dataset)
    local = where['weights'] / entry.file
    if not entry.in_wheel and not local.exists() and not _has_parts(local):
        return dict(status='needs the Hub', why=f'{entry.file} is not in this install (fetched from '
                                                f'{entry.hub_id} at first use; this machine is offline)')
    env = {k: v for k, v in os.environ.items() if k not in ('TIMM_STIM_WEIGHTS_DIR', 'PYTHONPATH')}
    env.update(PYTHONPATH=str(where['path']), HF_HUB_OFFLINE='1', OMP_NUM_THREADS=str(args.threads))
    code = (f'import json, timm_stim\nfrom timm_stim.validate import main\n'
            f'r = main(["--data-dir", {str(data)!r}, "--model", {entry.name!r}, "--pretrained", "-b", '
            f'"{args.batch_size}"])\nprint("RESULT" + json.dumps(r["results"][0]["top1"]))')
    t0 = time.time()
    res = subprocess.run([sys.executable, '-c', code], cwd=where['cwd'], env=env, capture_output=True, text=True)
    seconds = round(time.time() - t0, 1)
    line = next((x for x in res.stdout.splitlines() if x.startswith('RESULT')), None)
    if res.returncode != 0 or line is None:
        return dict(status='error', seconds=seconds, error=(res.stderr or res.stdout).strip().splitlines()[-1:])
    top1 = float(line[len('RESULT'):])
    diff = round(top1 - entry.metrics['top1'], 3)
    return dict(status='ok' if abs(diff) <= args.tolerance else 'missed', measured_top1=top1,
                recorded_top1=entry.metrics['top1'], difference=diff, seconds=seconds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    entries: List[WeightsEntry] = [e for e in read_manifest(ROOT / 'weights') if not args.tags or e.name in args.tags]
    unknown = set(args.tags) - {e.name for e in entries}
    if unknown:
        print(f'verify_weights.py: error: not in weights/manifest.json: {", ".join(sorted(unknown))}', file=sys.stderr)
        return 2
    if git_dirty():
        print('verify_weights.py: note: tracked files differ from HEAD; the clone checks the committed HEAD',
              file=sys.stderr)
    report: Dict[str, Any] = dict(command=command_line('benchmarks/verify_weights.py', argv), commit=git_commit(),
                                  machine=machine_info(args.threads, 'cpu'), install=args.install,
                                  tolerance=args.tolerance, results={})
    with tempfile.TemporaryDirectory(prefix='verify-weights-') as work:
        where = install(args.install, Path(work))
        for entry in entries:
            report['results'][entry.name] = r = measure(entry, where, args)
            print(f'{entry.name}: {r["status"]}' + (f' ({r["measured_top1"]:.2f} vs recorded '
                                                     f'{r["recorded_top1"]:.2f})' if 'measured_top1' in r else
                                                     f' {r.get("why") or r.get("error")}'), flush=True)
    write_report(report, Path(args.out or RESULTS / f'verify_weights_{args.install}.json'))
    return 1 if any(r['status'] in ('missed', 'error') for r in report['results'].values()) else 0


if __name__ == '__main__':
    raise SystemExit(main())
