"""A guard against a CPU bfloat16 bug: the weight gradient of a strided convolution on a 1x1 input is garbage.

On this project's CPU (oneDNN in torch 2.14.1, AVX-512 BF16), under `torch.autocast('cpu', torch.bfloat16)` the
weight gradient of a 3x3 (or 5x5) convolution with stride 2 whose input is 1x1 px comes back wrong in about half
of the calls: inf, NaN or values 1e30 off, while float32 and every other input size we tried are exact
(`benchmarks/bf16_conv.py`). timm's ResNets meet that case as soon as an image is under 17 px at their stride-2
`layer4`: ST++'s smaller inputs for a 32-px CIFAR image (0.43 x 32 = 14 px) do, and the first weight of
`layer4.0` then turns into garbage within a few steps.

`guard_strided_convs` makes every strided `nn.Conv2d` of a model run that one case in float32 (autocast off);
everything else stays in bfloat16. The check costs a shape comparison per strided convolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['Float32OnTinyInputConv2d', 'guard_strided_convs', 'needs_float32']


def needs_float32(x: torch.Tensor) -> bool:
    """True when `x` would meet the bug: a CPU tensor, 1 px high or wide, under CPU low-precision autocast."""
    return x.device.type == 'cpu' and min(x.shape[-2:]) == 1 and torch.is_autocast_enabled('cpu')


class Float32OnTinyInputConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and state dict) that runs in float32 when `needs_float32` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_float32(x):
            dtype = torch.get_autocast_dtype('cpu')
            with torch.autocast('cpu', enabled=False):
                return super().forward(x.float()).to(dtype)
        return super().forward(x)


def guard_strided_convs(model: nn.Module) -> int:
    """Give every plain `nn.Conv2d` of `model` with a stride above 1 the float32 fallback (its class becomes
    `Float32OnTinyInputConv2d`; weights, hooks and state dict are unchanged). Returns how many were guarded."""
    count = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and max(m.stride) > 1:
            m.__class__ = Float32OnTinyInputConv2d
            count += 1
    return count
