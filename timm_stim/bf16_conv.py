"""A guard against a CPU bfloat16 bug: the weight gradient of a strided convolution on a 1x1 input is garbage.

On this project's CPU (oneDNN in torch 2.14.1, AVX-512 BF16), under `torch.autocast('cpu', torch.bfloat16)` the
weight gradient of a 3x3 (or 5x5) convolution with stride 2 whose input is 1x1 px comes back wrong in most calls:
inf, NaN or values 1e30 off, while float32 and every other input size we tried are right
(`benchmarks/bf16_conv.py`). It reads stale memory, so a fresh process may not show it. timm's ResNets meet the
case as soon as an image is under 17 px at their stride-2 `layer4`: ST++'s smaller inputs for a 32-px CIFAR image
(0.43 x 32 = 14 px) do, and the weights of `layer4.0` turned into garbage within a few steps.

`strided_conv_guard()` is a context in which every `nn.Conv2d` with a stride above 1 runs that one case in float32
(autocast off, output cast back to the autocast dtype); everything else stays in bfloat16. `StimulativeTrainer`
runs its forward passes in it. Nothing on the model changes (its classes, hooks and state dict stay timm's), so
exported and scripted modules need no timm_stim. Subclasses that do not go through `nn.Conv2d._conv_forward`
(timm's `Conv2dSame`) are not covered.

`native_cpu_bfloat16()` says whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX). Without it (an
AVX2-only CPU) oneDNN emulates bfloat16 and autocast trains a CIFAR ResNet about 16x *slower* than float32
(measured on an AVX2 AMD EPYC: ResNet-20 13 vs 213 img/s, one thread), so `timm-stim-train` warns.
`auto_precision(device)` is what `--amp-dtype auto` trains in: bfloat16 autocast on a CPU with those instructions,
float32 on one without; on CUDA bfloat16 where the GPU has it natively, else float16.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['strided_conv_guard', 'needs_float32', 'native_cpu_bfloat16', 'cpu_name', 'auto_precision']

_PLAIN_CONV_FORWARD = nn.Conv2d._conv_forward


def native_cpu_bfloat16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), where bfloat16 autocast pays off."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_name() -> str:
    """This CPU's model name, the instruction set torch uses on it and whether it has bfloat16 instructions, e.g.
    'AMD EPYC (AVX2)' or 'AMD EPYC (AVX512, bfloat16)'."""
    import platform
    name = platform.machine() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        pass
    return f'{name} ({torch.backends.cpu.get_cpu_capability()}{", bfloat16" if native_cpu_bfloat16() else ""})'


def auto_precision(device: torch.device) -> Tuple[str, str]:
    """(precision, why) for `--amp-dtype auto` on `device`: 'bfloat16' (autocast), 'float16' (autocast and a loss
    scaler) or 'float32' (no autocast). A CPU: bfloat16 where it has bfloat16 instructions, else float32 (emulated
    bfloat16 trains many times slower). CUDA, or another accelerator whose torch module says: bfloat16 where the
    device computes it natively, else float16, timm's usual choice."""
    if device.type == 'cpu':
        if native_cpu_bfloat16():
            return 'bfloat16', f'{cpu_name()} has bfloat16 instructions (AVX-512 BF16 or AMX)'
        return 'float32', (f'{cpu_name()} has no bfloat16 instructions (AVX-512 BF16 or AMX): bfloat16 autocast would '
                           f'emulate them, many times slower than float32')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type
    supported = getattr(getattr(torch, device.type, None), 'is_bf16_supported', None)
    try:
        native = bool(supported(including_emulation=False)) if supported is not None else False
    except TypeError:  # an accelerator module without the emulation flag
        native = bool(supported())
    return ('bfloat16', f'{name} computes bfloat16 natively') if native else \
        ('float16', f'{name} has no native bfloat16')


def needs_float32(x: torch.Tensor) -> bool:
    """True when `x` would meet the bug: a CPU tensor, 1 px high or wide, under CPU low-precision autocast."""
    return x.device.type == 'cpu' and min(x.shape[-2:]) == 1 and torch.is_autocast_enabled('cpu')


def _guarded_conv_forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                          bias: Optional[torch.Tensor]) -> torch.Tensor:
    if max(self.stride) > 1 and needs_float32(x):
        dtype = torch.get_autocast_dtype('cpu')
        with torch.autocast('cpu', enabled=False):
            return _PLAIN_CONV_FORWARD(self, x.float(), weight.float(),
                                       None if bias is None else bias.float()).to(dtype)
    return _PLAIN_CONV_FORWARD(self, x, weight, bias)


@contextmanager
def strided_conv_guard() -> Iterator[None]:
    """Within it, strided `nn.Conv2d`s run 1-px inputs in float32 under CPU autocast (re-entrant). Without CPU
    autocast at entry (float32, GPU training) it changes nothing, so those training steps pay nothing per conv."""
    if nn.Conv2d._conv_forward is _guarded_conv_forward or not torch.is_autocast_enabled('cpu'):
        yield
        return
    nn.Conv2d._conv_forward = _guarded_conv_forward
    try:
        yield
    finally:
        nn.Conv2d._conv_forward = _PLAIN_CONV_FORWARD
