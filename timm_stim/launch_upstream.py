#!/usr/bin/env python3
"""Run an upstream timm script (`train.py`, `validate.py`), given by path, with timm-stim loaded into it.

    python -m timm_stim.launch_upstream path/to/pytorch-image-models/train.py \\
        --stim-mode stpp --stim-subnets 6 -- --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim ...
    python -m timm_stim.launch_upstream path/to/pytorch-image-models/validate.py -- \\
        --data-dir ../shared/data/cifar10 --model cifar_resnet20_stim --checkpoint run/model_best.pth.tar
    torchrun --nproc_per_node=2 -m timm_stim.launch_upstream path/to/train.py --stim-mode stpp -- ...

The upstream scripts are not part of the timm wheel: take them from a clone of pytorch-image-models checked out
at the tag of the installed timm (`git checkout v$(python -c 'import timm; print(timm.__version__)')`).

Nothing of upstream is copied: the script is executed as `__main__` (runpy) after two changes to the running
process: `import timm_stim` (registers the `*_stim` models, which upstream validate.py cannot load by itself: it
has no --device-modules flag) and `timm.task.ClassificationTask` replaced by a `StimulativeTrainer` subclass
carrying the --stim-* knobs (upstream train.py binds the name with `from timm.task import ...` when it runs).
The --stim-* flags go before `--`; everything else goes to the upstream script unchanged. Distillation
(train.py --kd-model-name) keeps upstream's own tasks, without ST: the launcher warns. validate.py ignores the
--stim-* knobs. Upstream defaults to --device cuda: on a CPU pass `--device cpu` after `--`.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .trainer import StimConfig, StimulativeTrainer, add_stim_args

__all__ = ['main', 'split_stim_args', 'stim_task_class', 'kd_warning']

_PROG = 'timm-stim-launch-upstream'


def _stim_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG, allow_abbrev=False, add_help=False,
        usage=f'{_PROG} UPSTREAM_SCRIPT [--stim-* flags] [--] [upstream script flags]',
        description='Run an upstream timm script (train.py with StimulativeTrainer as its task, or validate.py) '
                    'with timm_stim imported.')
    add_stim_args(p)
    return p


def _stim_flags(parser: argparse.ArgumentParser) -> List[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith('--stim-'))


def split_stim_args(argv: Sequence[str]) -> Tuple[StimConfig, List[str]]:
    """(the resolved `StimConfig` of the --stim-* flags before `--`, the arguments for the upstream script)."""
    parser = _stim_parser()
    argv = list(argv)
    cut = argv.index('--') if '--' in argv else len(argv)
    ours, theirs = argv[:cut], argv[cut + 1:]
    late = [a for a in theirs if a.startswith('--stim-')]
    if late:
        parser.error(f'{" ".join(late)} after "--": --stim-* flags go before "--" (everything after it is passed '
                     f'to the upstream script, which does not know them)')
    ns, rest = parser.parse_known_args(ours)
    unknown = [a for a in rest if a.startswith('--stim-')]
    if unknown:
        parser.error(f'unknown flag(s) {" ".join(unknown)}: the --stim-* flags are {" ".join(_stim_flags(parser))}')
    return StimConfig.from_args(ns), rest + theirs


def kd_warning(argv: Sequence[str]) -> Optional[str]:
    """The launcher's one-line warning for upstream train.py's distillation, given the launcher's arguments after
    the script: with `--kd-model-name` (or a prefix argparse accepts) upstream builds its own KD task in place of
    `ClassificationTask`, so the `StimulativeTrainer` never runs and the --stim-* flags are ignored. None without
    it."""
    argv = list(argv)
    names = [a.split('=', 1)[0] for a in argv]
    kd = next((n for n in names if len(n) >= len('--kd-m') and '--kd-model-name'.startswith(n)), None)
    if kd is None:
        return None
    given = sorted({n for n in names[:argv.index('--') if '--' in argv else len(argv)] if n.startswith('--stim-')})
    ignored = f'{", ".join(given)} ignored' if given else 'the --stim-* defaults ignored'
    return (f'{_PROG}: warning: {kd} makes upstream train.py build its own distillation task in place of the '
            f'StimulativeTrainer, so this run trains WITHOUT ST ({ignored}); drop {kd} to train with ST.')


def stim_task_class(stim: Union[StimConfig, Dict[str, Any]]) -> type:
    """A `ClassificationTask`-signature class that builds `StimulativeTrainer(..., stim=stim)`."""
    cfg = stim if isinstance(stim, StimConfig) else StimConfig(**stim)

    class StimClassificationTask(StimulativeTrainer):
        def __init__(self, model, criterion=None, criterion_kwargs=None, device=None, dtype=None, verbose=True):
            super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, stim=cfg, device=device,
                             dtype=dtype, verbose=verbose)

    return StimClassificationTask


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        _stim_parser().print_help()
        raise SystemExit(0 if argv else 2)
    script, rest = argv[0], argv[1:]
    if not os.path.isfile(script):
        _stim_parser().error(f'upstream script not found: {script} (the first argument is the path of upstream '
                             f"timm's train.py or validate.py)")
    stim, upstream_argv = split_stim_args(rest)
    warning = kd_warning(rest)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    import timm.task
    import timm_stim  # noqa: F401  (registers the *_stim models for upstream's create_model)

    original = timm.task.ClassificationTask
    timm.task.ClassificationTask = stim_task_class(stim)
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
