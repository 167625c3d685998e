"""What a checkpoint of `timm-stim-train` holds, how it is written, and what a `--resume` restores.

A checkpoint is timm's (`epoch`, `arch`, `optimizer`, `version`, `args`, AMP scaler, `state_dict` / `task_state`,
`state_dict_ema`, `metric`, `saver`) plus what an exact resume needs: `scheduler`, `global_step`, `world_size`,
`stim`, `data_path`, the data position `loader` ({epoch, batch}), every rank's `rng` states and, mid-epoch, the
running `meters`. Files are written whole and fsync'ed before timm's saver renames them into place; a write
that fails (a full disk) removes its partial file and leaves earlier checkpoints as they were.
"""
from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from timm import utils
from timm.task import resume_task_checkpoint
from timm.utils import CheckpointSaver, load_checkpoint_metadata

from .guards import NonFiniteLossError, nonfinite_tensors
from .models.weights import load_checkpoint_state_dict, read_torch_file, state_dict_mismatch

__all__ = ['CKPT_EXT', 'CheckpointWriteError', 'StimCheckpointSaver', 'Progress', 'find_resume_checkpoint',
           'checkpoint_misfit', 'checkpoint_model', 'resume_checkpoint', 'restore_progress', 'restore_rng',
           'gather_rng_states', 'schedule_diff']

_logger = logging.getLogger('train')

CKPT_EXT = '.pth.tar'

# flags whose change on --resume rebuilds the learning-rate schedule (from the new values, at the resumed step)
SCHEDULE_FLAGS = ('lr', 'sched', 'epochs', 'sched_on_updates', 'warmup_epochs', 'warmup_lr', 'warmup_prefix', 'min_lr',
                  'decay_rate', 'decay_epochs', 'decay_milestones', 'cooldown_epochs', 'lr_cycle_mul',
                  'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'lr_noise', 'lr_noise_pct', 'lr_noise_std')


class CheckpointWriteError(RuntimeError):
    """A checkpoint file could not be written (full disk, quota, I/O error); its partial file was removed."""


# ------------------------------------------------------------------------------------------------ RNG states
def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def gather_rng_states(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Every rank's RNG states (collective in DDP), so that a resumed DDP run draws the same random numbers."""
    mine = _rng_state()
    if not args.distributed:
        return [mine]
    out: List[Any] = [None] * args.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


# --------------------------------------------------------------------------------------------------- writing
class StimCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver (history, best, recovery files) writing the full resume state, fsync'ed.

    timm's saver writes to a temporary file and `os.replace`s it; this subclass adds the scheduler, RNG, data
    position, step and epoch meters (`extra_state()`), flushes the file to disk before the rename, and turns a
    failed write into `CheckpointWriteError` (naming the path, the partial file removed).
    """

    def __init__(self, *args, extra_state: Optional[Callable[[], Dict[str, Any]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state or (lambda: {})

    def _save(self, save_path, epoch, metric=None):
        state = {'epoch': epoch, 'arch': getattr(self.args, 'model', type(self.model).__name__.lower()),
                 'optimizer': self.optimizer.state_dict(), 'version': 2, 'args': self.args}
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
        state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        if metric is not None:
            state['metric'] = metric
        state['saver'] = self.state_dict(epoch, metric)
        state.update(self.extra_state())
        buffer = io.BytesIO()  # serialised in memory: a failed disk write then raises OSError with its errno
        torch.save(state, buffer)
        write_file(save_path, buffer.getbuffer())


def write_file(path: str, data: bytes) -> None:
    """Write `data` to `path` and fsync it; on failure remove the partial file and raise `CheckpointWriteError`."""
    try:
        with open(path, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        try:
            os.remove(path)
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = 'no space left on device' if e.errno == errno.ENOSPC else 'disk quota exceeded'
        else:
            what = e.strerror or str(e)
        folder = os.path.dirname(os.path.abspath(path))
        raise CheckpointWriteError(
            f'{what}: cannot write checkpoint {path} (partial file removed; earlier checkpoints in {folder} are '
            f'kept). Free space, then rerun the same command with --resume {folder}.') from e


# --------------------------------------------------------------------------------------------------- resuming
def find_resume_checkpoint(path: str) -> str:
    """A checkpoint file as given, or for a run directory its newest resumable checkpoint (highest step)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f'--resume {path}: no such checkpoint file or run directory.')
    candidates = [os.path.join(path, f) for f in os.listdir(path)
                  if f.endswith(CKPT_EXT) and (f.startswith('recovery-') or f == 'last' + CKPT_EXT)]
    best, best_step = None, -1
    for c in candidates:
        try:
            meta = read_torch_file(c, '--resume')
        except ValueError as e:  # a half-written file never replaces a good one, but be safe
            _logger.warning(f'skipping it: {e}')
            continue
        step = int(meta.get('global_step', -1)) if isinstance(meta, dict) else -1
        if step > best_step:
            best, best_step = c, step
    if best is None:
        raise FileNotFoundError(f'--resume {path}: no last{CKPT_EXT} or recovery-*{CKPT_EXT} checkpoint in it.')
    return best


def checkpoint_misfit(path: str, model: nn.Module, model_name: str, flag: str, use_ema: bool = False
                      ) -> Optional[str]:
    """Why the checkpoint `path` (given as `flag`) cannot go into `model` (`--model model_name`), in one line that
    names both models; None when its state dict fits. A truncated file or a refused pickle raises ValueError (one line,
    `read_torch_file`)."""
    state_dict = load_checkpoint_state_dict(path, use_ema, what=flag)
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if not problem:
        return None
    theirs = checkpoint_model(path)
    of = f'a checkpoint of {theirs}' if theirs else 'a checkpoint of another architecture'
    fix = f'pass --model {theirs}' if theirs and theirs != model_name else \
        'pass the model (and --num-classes) it was trained with'
    return f'{flag} {path} is {of}, which does not fit --model {model_name} ({problem}): {fix}.'


def checkpoint_model(path: str) -> Optional[str]:
    """The model name a timm / timm-stim train checkpoint records (`arch`, else its args' `model`); None for weights
    files and state dicts."""
    if str(path).endswith('.safetensors'):
        return None
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict):
        return None
    args = ckpt.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    return ckpt.get('arch') or args.get('model')


def schedule_diff(old_args: Optional[argparse.Namespace], args: argparse.Namespace) -> Dict[str, Any]:
    """Schedule flags whose value on --resume differs from the checkpoint's run: {flag: (old, new)}."""
    old = vars(old_args) if old_args is not None else {}
    return {k: (old[k], getattr(args, k)) for k in SCHEDULE_FLAGS if k in old and old[k] != getattr(args, k)}


def resume_checkpoint(path: str, task: Optional[nn.Module], model: nn.Module,
                      optimizer: Optional[torch.optim.Optimizer], loss_scaler: Optional[Any],
                      args: argparse.Namespace) -> Dict[str, Any]:
    """Restore model, sampler and (unless --no-resume-opt) optimizer and AMP scaler from `path` with timm's
    `resume_task_checkpoint`; refuse non-finite weights. Returns the checkpoint's entries (memory-mapped) for the
    rest of the resume: EMA, schedule, data position, saver history, RNG states."""
    keep_opt = not args.no_resume_opt
    resume_task_checkpoint(task, path, optimizer=optimizer if keep_opt else None,
                           loss_scaler=loss_scaler if keep_opt else None, log_info=utils.is_primary(args))
    bad = nonfinite_tensors(model)
    if bad:
        raise NonFiniteLossError(f'--resume {path}: the checkpoint holds non-finite weights ({bad[:3]}); '
                                 f'resume an earlier checkpoint of that run.')
    ckpt = load_checkpoint_metadata(path)
    if keep_opt and schedule_diff(ckpt.get('args'), args):  # the new --lr / schedule takes effect from here
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] = args.lr
    if utils.is_primary(args):
        _logger.info(f'Resumed model / optimizer / sampler from {path} (step {ckpt.get("global_step")}).')
    return ckpt


@dataclass
class Progress:
    """Where a run stands: the epoch and batch to train next, optimizer updates so far, the epoch's running meters
    (a mid-epoch checkpoint only)."""
    epoch: int = 0
    batch: int = 0
    num_updates: int = 0
    meters: Optional[Dict[str, float]] = None


def restore_progress(ckpt: Optional[Dict[str, Any]], args: argparse.Namespace, lr_scheduler: Optional[Any],
                     updates_per_epoch: int) -> Progress:
    """The data position and step of `ckpt` (or `--start-epoch`), with the schedule restored, or rebuilt from the
    new flags where they differ from the checkpoint's, and stepped to that position."""
    progress = Progress()
    if ckpt is not None:
        position = ckpt.get('loader') or {'epoch': ckpt['epoch'] + 1, 'batch': 0}
        epoch, batch = int(position['epoch']), int(position['batch'])
        progress = Progress(epoch, batch, int(ckpt.get('global_step', epoch * updates_per_epoch)),
                            ckpt.get('meters') if batch else None)
        diff = schedule_diff(ckpt.get('args'), args)
        if diff:
            if utils.is_primary(args):
                _logger.info(f'Schedule flags differ from the checkpoint\'s ({diff}): the schedule is rebuilt from '
                             f'the new values and continues at step {progress.num_updates}.')
        elif ckpt.get('scheduler') is not None and lr_scheduler is not None:
            lr_scheduler.load_state_dict(ckpt['scheduler'])
    if args.start_epoch is not None:
        progress.epoch, progress.batch = args.start_epoch, 0
        progress.num_updates = args.start_epoch * updates_per_epoch
    if lr_scheduler is not None and (progress.epoch > 0 or progress.batch > 0):
        lr_scheduler.step(progress.epoch)
        if not lr_scheduler.t_in_epochs:
            lr_scheduler.step_update(progress.num_updates)
    return progress


def restore_saver(saver: Optional[StimCheckpointSaver], ckpt: Optional[Dict[str, Any]], resume_path: Optional[str],
                  output_dir: Optional[str]) -> None:
    """Continue the checkpoint history and best metric of a run resumed into its own directory."""
    if saver is None or ckpt is None or not ckpt.get('saver'):
        return
    if os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(output_dir):
        saver.load_state_dict(ckpt['saver'])


def restore_rng(ckpt: Dict[str, Any], args: argparse.Namespace, start_epoch: int) -> None:
    """This rank's RNG states of `ckpt` (call last, so that nothing consumes random numbers after the restore)."""
    rng = ckpt.get('rng')
    if rng and len(rng) == args.world_size:
        _set_rng_state(rng[args.rank])
    elif rng:
        _logger.warning(f'checkpoint RNG states are for {len(rng)} process(es), not {args.world_size}: '
                        f'reseeding (the run stays valid but not bit-identical).')
        utils.random_seed(args.seed + start_epoch, args.rank)
