"""Helpers shared by the benchmark scripts: run provenance (git commit, machine) and writing the JSON reports."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]

__all__ = ['ROOT', 'git', 'git_commit', 'git_dirty', 'load_avg', 'machine_info', 'command_line', 'write_report']


def git(*args: str) -> str:
    """`git <args>` in the repository root, stripped stdout; 'unknown' when git or the repository is missing."""
    try:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def git_commit() -> str:
    """`git rev-parse HEAD` of the repository."""
    return git('rev-parse', 'HEAD')


def git_dirty() -> bool:
    """True when tracked files differ from HEAD (the numbers then come from uncommitted code)."""
    return bool(git('status', '--porcelain', '--untracked-files=no'))


def load_avg() -> Optional[tuple]:
    """`os.getloadavg()`, or None where the platform has none."""
    return os.getloadavg() if hasattr(os, 'getloadavg') else None


def machine_info(threads: Optional[int] = None, device: Optional[str] = None,
                 load_key: str = 'load_avg') -> Dict[str, Any]:
    """Platform, CPU (model name and instruction set), CPU count, torch / timm versions and the load average at call time (under `load_key`).

    `device`: what the benchmark runs on; by default 'cuda' when available, else 'cpu'.
    """
    import timm
    from timm_stim.bf16_conv import cpu_name
    return {
        'platform': platform.platform(), 'processor': platform.processor() or platform.machine(), 'cpu': cpu_name(),
        'cpu_count': os.cpu_count(), 'torch_threads': threads if threads is not None else torch.get_num_threads(),
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'device': device or ('cuda' if torch.cuda.is_available() else 'cpu'),
        load_key: load_avg(),
    }


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that produced a report: `sys.argv` when run from the shell, else `script` + `argv`."""
    if argv is None:
        return ' '.join([Path(sys.executable).name, *sys.argv])
    return ' '.join(['python', script, *argv])


def write_report(report: Dict[str, Any], out: Path, plot_fn: Optional[Callable[[Dict[str, Any], Path], None]] = None,
                 no_plot: bool = False, end_key: Sequence[str] = ('machine', 'load_avg_end')) -> None:
    """Record the load average at the end under `report[end_key[0]]...[end_key[-1]]`, write `report` as JSON to
    `out` (creating its folder), draw `plot_fn(report, out.with_suffix('.png'))` unless `no_plot`, print where."""
    out = Path(out)
    node = report
    for key in end_key[:-1]:
        node = node[key]
    node[end_key[-1]] = load_avg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if plot_fn is not None and not no_plot:
        try:
            plot_fn(report, out.with_suffix('.png'))
        except ImportError as e:  # no matplotlib: the JSON is written, the picture is optional
            print(f'no plot ({e})', file=sys.stderr)
    print(f'wrote {out}')
