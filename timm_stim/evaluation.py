"""The evaluator `timm-stim-train` (after every epoch) and `timm-stim-validate` (per depth configuration) share."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn
from timm.task import ClassificationEvaluator, evaluation_sample_limit

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        amp_autocast: Callable = nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        evaluator: Optional[ClassificationEvaluator] = None,
) -> Dict[str, float]:
    """Top-1 / top-5 / loss of `model` on `loader` with timm's `ClassificationEvaluator`.

    Sums are exact across ranks with `distributed`; distributed-sampler padding is not counted. `evaluator`: a
    fresh one from the task (`task.create_evaluator(...)`), else a single-label one on `device`.
    """
    model.eval()
    if evaluator is None:
        evaluator = ClassificationEvaluator(device=device, max_samples=evaluation_sample_limit(loader))
    for input, target in loader:
        input, target = input.to(device), target.to(device)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        evaluator.update(output[0] if isinstance(output, (tuple, list)) else output, target)
    return evaluator.compute(distributed=distributed)
