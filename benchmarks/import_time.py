#!/usr/bin/env python3
"""What `import timm_stim` adds to `import timm`: wall time and the modules it pulls in.

Every repeat is a fresh interpreter (the OS file cache is warm, the Python import state is not) that times
`import timm`, then `import timm_stim`, with `time.perf_counter` around each; the report gives the medians of
`import timm` and of `import timm, timm_stim` and of their difference (the added time). A warm-up run first lets
Python write the bytecode cache of timm_stim's own files, as an installed package has it (this checkout may run
with PYTHONDONTWRITEBYTECODE; it is unset for the measured runs). One more run under `python -X importtime`
lists the modules `import timm_stim` loads beyond `import timm`, with their cumulative import time, and which of
the heavy optional modules (matplotlib, ...) are loaded at all.

    python benchmarks/import_time.py                 # 15 repeats, ~1-2 min on 2 busy CPU cores
    python benchmarks/import_time.py --repeats 5

Writes benchmarks/results/import_time.json (command, commit, machine, numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

# loaded lazily by timm_stim (only by the commands / functions that need them); timm itself may load some
WATCHED = ('matplotlib', 'huggingface_hub', 'safetensors', 'yaml', 'torchvision', 'PIL', 'numpy', 'timm.task',
           'timm.loss', 'timm.data', 'timm.utils', 'timm_stim.trainer', 'timm_stim.data', 'timm_stim.train')

_PROBE = r'''
import json, sys, time
t0 = time.perf_counter()
import timm
t1 = time.perf_counter()
before = set(sys.modules)
import timm_stim
t2 = time.perf_counter()
print(json.dumps(dict(timm=1e3 * (t1 - t0), both=1e3 * (t2 - t0), file=timm_stim.__file__,
                      added=sorted(set(sys.modules) - before),
                      watched={m: (m in before, m in sys.modules) for m in WATCHED})))
'''


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'import_time.json'))
    return p.parse_args(argv)


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONDONTWRITEBYTECODE'}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _probe() -> Dict[str, Any]:
    code = f'WATCHED = {WATCHED!r}\n' + _PROBE
    out = subprocess.run([sys.executable, '-c', code], env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _importtime() -> List[Dict[str, Any]]:
    """Modules loaded by `import timm_stim` after `import timm` (`-X importtime`), slowest first."""
    out = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'import timm; import timm_stim'], env=_env(),
                         capture_output=True, text=True, check=True).stderr.splitlines()
    rows, after_timm = [], False
    for line in out:
        if not line.startswith('import time:') or '|' not in line:
            continue
        _, self_us, cum_us, name = (part.strip() for part in line.replace('import time:', '|').split('|'))
        if not self_us.isdigit():
            continue
        if name == 'timm' and not after_timm:
            after_timm = True
            continue
        if after_timm:
            rows.append(dict(module=name, self_ms=int(self_us) / 1e3, cumulative_ms=int(cum_us) / 1e3))
    return sorted(rows, key=lambda r: -r['cumulative_ms'])


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    first = _probe()  # warm-up: writes timm_stim's bytecode cache
    if not first['file'].startswith(str(ROOT)):
        raise SystemExit(f'timm_stim was imported from {first["file"]}, not from {ROOT}')
    runs = [_probe() for _ in range(args.repeats)]
    timm_ms = [r['timm'] for r in runs]
    both_ms = [r['both'] for r in runs]
    added_ms = [r['both'] - r['timm'] for r in runs]
    breakdown = _importtime()
    report = dict(
        command=command_line('benchmarks/import_time.py', argv), commit=git_commit(), dirty=git_dirty(),
        machine=machine_info(threads=1),
        method='fresh interpreter per repeat, perf_counter around `import timm` then `import timm_stim`; '
               'bytecode cache written by a warm-up run; medians over the repeats',
        repeats=args.repeats,
        import_timm_ms=round(statistics.median(timm_ms), 1),
        import_timm_and_timm_stim_ms=round(statistics.median(both_ms), 1),
        added_ms=round(statistics.median(added_ms), 1),
        added_ms_min_max=[round(min(added_ms), 1), round(max(added_ms), 1)],
        added_share=round(statistics.median(added_ms) / statistics.median(timm_ms), 4),
        modules_added=runs[-1]['added'],
        watched={m: dict(after_import_timm=v[0], after_import_timm_stim=v[1]) for m, v in runs[-1]['watched'].items()},
        importtime_after_timm=[dict(r, self_ms=round(r['self_ms'], 2), cumulative_ms=round(r['cumulative_ms'], 2))
                               for r in breakdown[:15]],
        samples=dict(import_timm_ms=[round(v, 1) for v in timm_ms], added_ms=[round(v, 1) for v in added_ms]),
    )
    print(f'import timm: {report["import_timm_ms"]} ms; import timm, timm_stim: '
          f'{report["import_timm_and_timm_stim_ms"]} ms; added {report["added_ms"]} ms '
          f'({100 * report["added_share"]:.1f} %), median of {args.repeats}')
    write_report(report, Path(args.out))
    return report


if __name__ == '__main__':
    main()
