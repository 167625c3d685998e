"""Finite-weight guards: a NaN / inf loss or weight stops the run before anything bad is written, and the message
says how to go on (the last good checkpoint, a lower --lr on --resume)."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

__all__ = ['NonFiniteLossError', 'nonfinite_tensors', 'any_rank', 'recovery_advice']


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run stops before the step touches the weights."""


def nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of the floating-point parameters and buffers (BN running statistics) holding NaN or inf."""
    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()  # one host sync
    return [n for (n, _), good in zip(named, ok) if not good]


def any_rank(flag: torch.Tensor, distributed: bool) -> bool:
    """True when `flag` is set on any rank (a collective in DDP, so that every rank stops together)."""
    flag = flag.reshape(1).float()
    if distributed:
        torch.distributed.all_reduce(flag)
    return bool(flag.item() > 0)


def recovery_advice(what: str, last_checkpoint: Optional[str]) -> str:
    """`what` went wrong, and how to go on: restart with gentler settings, or resume the last good checkpoint."""
    if not last_checkpoint:
        return (f'{what}. No checkpoint was written yet: restart with a lower --lr (or --clip-grad 1.0, '
                f'--warmup-epochs 1).')
    return (f'{what}. Last good checkpoint (finite weights): {last_checkpoint}. To go on from it, rerun the same '
            f'command with --resume {last_checkpoint} and a lower --lr (or --clip-grad 1.0, or more --warmup-epochs): '
            f'on --resume, a changed --lr or schedule flag rebuilds the schedule from the new values at the resumed '
            f'step.')
