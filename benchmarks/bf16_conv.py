#!/usr/bin/env python3
"""How often the weight gradient of a convolution is wrong under CPU bfloat16 autocast, per input size and stride,
with and without `timm_stim.bf16_conv` (the float32 fallback for strided convolutions on 1-px inputs).

Each case: a random `nn.Conv2d` (channels-last), a random batch of 128, a random output gradient; the weight
gradient is compared with float64 on the same bfloat16-rounded operands, and counted wrong when its largest error
exceeds 5 % of the reference's largest entry (correct ones are ~0.5 % off) or holds inf / NaN.

    python benchmarks/bf16_conv.py                  # -> benchmarks/results/bf16_conv.json
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm_stim.bf16_conv import strided_conv_guard  # noqa: E402

OUT = ROOT / 'benchmarks' / 'results' / 'bf16_conv.json'
# (in channels, out channels, input px, kernel, stride): ResNet layer4.0 / layer3.0 shapes and neighbours
CASES = [(256, 512, 1, 3, 2), (128, 256, 1, 3, 2), (64, 128, 1, 3, 2), (256, 512, 2, 3, 2), (128, 256, 3, 3, 2),
         (512, 512, 1, 3, 1), (256, 512, 1, 1, 2)]


def weight_grad_wrong(cin: int, cout: int, px: int, k: int, stride: int, guarded: bool, dtype: torch.dtype,
                      batch: int = 128) -> bool:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, px, px).to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), \
            strided_conv_guard() if guarded else nullcontext():
        y = conv(x)
    g = torch.randn(y.shape).to(y.dtype)
    y.backward(g)
    rnd = (lambda t: t.bfloat16().double()) if dtype == torch.bfloat16 else (lambda t: t.double())
    w = rnd(conv.weight.detach()).requires_grad_()
    F.conv2d(rnd(x), w, None, stride, k // 2).backward(g.double())
    err = (conv.weight.grad.double() - w.grad).abs().max().item()
    return not err <= 0.05 * w.grad.abs().max().item()  # NaN compares False: wrong


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--trials', type=int, default=8)
    p.add_argument('--out', default=str(OUT))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = []
    for cin, cout, px, k, stride in CASES:
        for dtype, guarded in ((torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)):
            wrong = sum(weight_grad_wrong(cin, cout, px, k, stride, guarded, dtype) for _ in range(args.trials))
            rows.append(dict(in_channels=cin, out_channels=cout, input_px=px, kernel=k, stride=stride,
                             precision=str(dtype).replace('torch.', ''), guarded=guarded, trials=args.trials,
                             wrong=wrong))
            print(f'{cin:4d}->{cout:4d} {px}px k{k} s{stride} {rows[-1]["precision"]:9s} '
                  f'{"guarded" if guarded else "plain  "}: {wrong}/{args.trials} wrong', flush=True)
    report = dict(command=command_line('benchmarks/bf16_conv.py', argv), commit=git_commit(),
                  machine=machine_info(threads=1), torch_mkldnn=torch.backends.mkldnn.is_available(), rows=rows)
    write_report(report, Path(args.out), no_plot=True)
    return report


if __name__ == '__main__':
    main()
