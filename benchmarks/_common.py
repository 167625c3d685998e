"""Helpers shared by the benchmark scripts: run provenance (git commit, machine) for the JSON reports."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]

__all__ = ['ROOT', 'git', 'git_commit', 'git_dirty', 'machine_info', 'command_line']


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


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """Platform, CPU count, torch / timm versions and the load average at call time."""
    import timm
    return dict(
        platform=platform.platform(), processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), torch_threads=threads if threads is not None else torch.get_num_threads(),
        python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
        device='cuda' if torch.cuda.is_available() else 'cpu',
        load_avg=os.getloadavg() if hasattr(os, 'getloadavg') else None,
    )


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that produced a report: `sys.argv` when run from the shell, else `script` + `argv`."""
    if argv is None:
        return ' '.join([Path(sys.executable).name, *sys.argv])
    return ' '.join(['python', script, *argv])
