#!/usr/bin/env python3
"""Run an upstream timm `train.py`, given by path, with `StimulativeTrainer` swapped in for its task.

    python -m timm_stim.launch_upstream path/to/pytorch-image-models/train.py \\
        --stim-mode stpp --stim-subnets 6 -- --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim ...
    torchrun --nproc_per_node=2 -m timm_stim.launch_upstream path/to/train.py --stim-mode stpp ...

Nothing of upstream is copied: the script is executed as `__main__` (runpy) after two changes to the running
process: `import timm_stim` (registers the `*_stim` models) and `timm.task.ClassificationTask` replaced by a
`StimulativeTrainer` subclass carrying the --stim-* knobs. upstream train.py binds the name with
`from timm.task import ClassificationTask` when it is executed, so patching the attribute beforehand is enough.
The --stim-* flags are removed from the command line before upstream parses it; everything else goes to
upstream unchanged (a `--` separator is optional). Distillation (--kd-model-name) keeps upstream's tasks.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .trainer import MODES, StimulativeTrainer

__all__ = ['main', 'split_stim_args', 'stim_task_class']


def _stim_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_stim.launch_upstream', allow_abbrev=False, add_help=False,
                                description='Run upstream timm train.py with StimulativeTrainer.')
    p.add_argument('--stim-mode', default='stpp', choices=MODES)
    p.add_argument('--stim-subnets', type=int, default=None)
    p.add_argument('--stim-space', default=None)
    p.add_argument('--stim-loss', default=None, choices=('kl', 'kl-'))
    p.add_argument('--stim-temp', type=float, default=1.0)
    p.add_argument('--stim-weight', type=float, default=1.0)
    p.add_argument('--stim-min-scale', type=float, default=None)
    p.add_argument('--stim-amplitude', type=float, default=None)
    p.add_argument('--stim-main-normalized', action=argparse.BooleanOptionalAction, default=None)
    p.add_argument('--stim-seed', type=int, default=0)
    return p


def split_stim_args(argv: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
    """(StimulativeTrainer keyword knobs, the remaining arguments for upstream train.py)."""
    parser = _stim_parser()
    ns, rest = parser.parse_known_args(list(argv))
    leftovers = [a for a in rest if a.startswith('--stim-')]
    if leftovers:
        parser.error(f'unknown stim flag(s) {leftovers}; known: '
                     f'{sorted(o for a in parser._actions for o in a.option_strings)}')
    if rest and rest[0] == '--':
        rest = rest[1:]
    knobs = dict(mode=ns.stim_mode, subnets=ns.stim_subnets, space=ns.stim_space, loss=ns.stim_loss,
                 temperature=ns.stim_temp, weight=ns.stim_weight, min_scale=ns.stim_min_scale,
                 amplitude=ns.stim_amplitude, main_on_normalized=ns.stim_main_normalized, seed=ns.stim_seed)
    return knobs, rest


def stim_task_class(knobs: Dict[str, Any]) -> type:
    """A `ClassificationTask`-signature class that builds `StimulativeTrainer(..., **knobs)`."""

    class StimClassificationTask(StimulativeTrainer):
        def __init__(self, model, criterion=None, criterion_kwargs=None, device=None, dtype=None, verbose=True):
            super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                             verbose=verbose, **knobs)

    return StimClassificationTask


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        _stim_parser().print_help()
        raise SystemExit(0 if argv else 2)
    script, rest = argv[0], argv[1:]
    if not os.path.isfile(script):
        _stim_parser().error(f'upstream train.py not found: {script} (first argument must be its path)')
    knobs, upstream_argv = split_stim_args(rest)

    import timm.task
    import timm_stim  # noqa: F401  (registers the *_stim models for upstream's create_model)

    original = timm.task.ClassificationTask
    timm.task.ClassificationTask = stim_task_class(knobs)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [script] + upstream_argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name='__main__')
    finally:
        timm.task.ClassificationTask = original
        sys.argv, sys.path[:] = old_argv, old_path


if __name__ == '__main__':
    main()
