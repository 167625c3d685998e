"""`--amp-dtype auto` (the CIFAR-10 recipe's precision): bfloat16 autocast on a CPU with bfloat16 instructions, float32
on one without, bfloat16 else float16 on CUDA; logged with its reason and recorded in args.yaml and precision.txt.
The CPU detection is monkeypatched, so every branch runs on any machine."""
import argparse
import logging
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml

import timm_stim.bf16_conv as B
import timm_stim.train as T

REPO = Path(__file__).resolve().parents[1]


def _cpu(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(B, 'native_cpu_bfloat16', lambda: native)
    monkeypatch.setattr(T, 'native_cpu_bfloat16', lambda: native)


@pytest.mark.parametrize('native', [True, False])
def test_auto_on_cpu_follows_its_instruction_set(monkeypatch, caplog, native):
    _cpu(monkeypatch, native)
    args = argparse.Namespace(amp=True, amp_dtype='auto')
    with caplog.at_level(logging.INFO, logger='train'):
        autocast, scaler = T._amp(args, torch.device('cpu'))
    assert scaler is None
    if native:
        assert args.precision == 'bfloat16' and autocast().fast_dtype == torch.bfloat16
        assert 'has bfloat16 instructions' in caplog.text
    else:
        assert args.precision == 'float32' and autocast is nullcontext  # no autocast: emulated bfloat16 is ~12x slower
        assert 'has no bfloat16 instructions' in caplog.text
        assert 'trains many times slower' not in caplog.text  # the explicit-bfloat16 warning is not given
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Precision:')]
    assert len(chosen) == 1 and f'Precision: {args.precision} (--amp-dtype auto: {B.cpu_name()}' in chosen[0]
    assert T._precision(args) == args.precision


def test_auto_on_cuda_prefers_native_bfloat16_else_float16(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Some GPU')
    for native, expected in ((True, 'bfloat16'), (False, 'float16')):
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True, n=native: n)
        precision, why = B.auto_precision(torch.device('cuda'))
        assert precision == expected and why.startswith('Some GPU'), why
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    assert B.auto_precision(torch.device('cuda', 0))[0] == 'float16'  # emulated bfloat16 does not count


def test_explicit_dtype_and_no_amp_are_unchanged(monkeypatch, caplog):
    _cpu(monkeypatch, False)
    args = argparse.Namespace(amp=True, amp_dtype='bfloat16')
    with caplog.at_level(logging.INFO, logger='train'):
        autocast, _ = T._amp(args, torch.device('cpu'))
    assert autocast().fast_dtype == torch.bfloat16 and args.precision == 'bfloat16'  # obeyed, with the warning
    assert 'no bfloat16 instructions' in caplog.text and 'Precision:' not in caplog.text
    args = argparse.Namespace(amp=False, amp_dtype='auto')
    assert T._amp(args, torch.device('cpu')) == (nullcontext, None) and T._precision(args) == 'float32'


def test_flag_and_recipe():
    assert T._parse_args(['--amp', '--amp-dtype', 'auto']).amp_dtype == 'auto'
    args = T._parse_args(['-c', str(REPO / 'benchmarks' / 'recipes' / 'cifar10.yaml')])
    assert args.amp and args.amp_dtype == 'auto'
    assert T._parse_args(['-c', str(REPO / 'benchmarks' / 'recipes' / 'cifar10.yaml'),
                          '--amp-dtype', 'bfloat16']).amp_dtype == 'bfloat16'


@pytest.fixture
def folder(tmp_path) -> Path:
    """A 2-class ImageFolder of 32-px PNGs, 4 training and 2 validation images per class."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', 4), ('val', 2)):
        for c, cls in enumerate(('a', 'b')):
            (tmp_path / 'data' / split / cls).mkdir(parents=True)
            for i in range(n):
                px = torch.randint(0, 128, (32, 32, 3), generator=g, dtype=torch.uint8) + 100 * c
                Image.fromarray(px.numpy()).save(tmp_path / 'data' / split / cls / f'{i}.png')
    return tmp_path / 'data'


def test_a_run_records_what_auto_chose(monkeypatch, folder, tmp_path, caplog):
    """args.yaml keeps `amp_dtype: auto` and adds the resolved `precision`; precision.txt names it and says auto."""
    _cpu(monkeypatch, False)
    with caplog.at_level(logging.INFO, logger='train'):
        T.main(['--data-dir', str(folder), '--model', 'cifar_resnet20', '--num-classes', '2', '-b', '4', '-j', '0',
                '--epochs', '1', '--warmup-epochs', '0', '--stim-mode', 'off', '--stim-bn-recalib', '0', '--no-plot',
                '--amp', '--amp-dtype', 'auto', '--output', str(tmp_path / 'out'), '--experiment', 'auto'])
    run = tmp_path / 'out' / 'auto'
    recorded = yaml.safe_load((run / 'args.yaml').read_text())
    assert recorded['amp'] and recorded['amp_dtype'] == 'auto' and recorded['precision'] == 'float32'
    line, = (run / 'precision.txt').read_text().splitlines()
    assert line.endswith(f'epoch 0: float32 on {B.cpu_name()} (--amp-dtype auto)')
    assert 'Precision: float32 (--amp-dtype auto' in caplog.text
