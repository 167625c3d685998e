"""The run directory's records: `args.yaml` (flags, the literal command, the code's commit), timm's `summary.csv`
(trimmed on resume), `precision.txt` (each launch's precision and device) and a PNG of the training curves."""
from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
import yaml

from .atomic import atomic_path
from .version import source_commit

__all__ = ['write_args_yaml', 'truncate_summary', 'plot_curves', 'record_launch', 'precision_launches']

PRECISION_LOG = 'precision.txt'

_logger = logging.getLogger('train')


def write_args_yaml(output_dir: str, args: argparse.Namespace, argv: Sequence[str],
                    data_config: Optional[dict] = None) -> None:
    """Every flag's value, plus the literal command, the code's commit (what `timm-stim-release` reads) and the
    resolved data configs (`data_config: {train: ..., eval: ...}`: input sizes, crop_pct, interpolation, mean, std).
    `timm-stim-train` adds `precision`, what `--amp` / `--amp-dtype` resolved to (`auto` chooses by device)."""
    extra = {'data_config': data_config} if data_config else {}
    with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
        yaml.safe_dump({**{k: v for k, v in vars(args).items() if not isinstance(v, torch.device)},
                        'command': ' '.join(['timm-stim-train'] + list(argv)), 'git_commit': source_commit(),
                        **extra}, f)


def plot_curves(summary_csv: str, out_png: str) -> Optional[str]:
    """PNG of loss (train total / main / KL, eval) and eval accuracy per epoch, from timm's summary.csv."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning('matplotlib is not installed: no training curves (pip install matplotlib).')
        return None
    with open(summary_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(r['epoch']) for r in rows]

    def col(name):
        return [float(r[name]) for r in rows] if name in rows[0] and rows[0][name] not in ('', None) else None

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (('train_loss', '-'), ('train_loss_main', '--'), ('train_loss_kl', ':'), ('eval_loss', '-')):
        v = col(name)
        if v is not None:
            ax1.plot(epochs, v, style, marker='o', ms=3, label=name)
    ax1.set_xlabel('epoch'), ax1.set_ylabel('loss'), ax1.legend(), ax1.grid(alpha=.3)
    for name in ('eval_top1', 'eval_top5'):
        v = col(name)
        if v is not None:
            ax2.plot(epochs, v, marker='o', ms=3, label=name)
    ax2.set_xlabel('epoch'), ax2.set_ylabel('accuracy (%)'), ax2.grid(alpha=.3)
    if ax2.lines:
        ax2.legend()
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(summary_csv))))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def truncate_summary(path: str, start_epoch: int) -> None:
    """On resume, drop summary rows of epochs that will be trained again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        csv.writer(f).writerows(keep)


def record_launch(output_dir: Union[str, Path], epoch: int, batch: int, precision: str, device: str,
                  note: str = '') -> str:
    """Append this launch to the run's `precision.txt`: from which epoch (and step), in which precision, on which
    device, and a `note` in parentheses (e.g. '--amp-dtype auto': the precision was chosen by device). A run
    resumed on another machine may change precision (float32 where a CPU lacks bfloat16 instructions), and its
    recorded command shows only the last launch's flags. Returns the line."""
    start = f'epoch {epoch}' + (f' step {batch}' if batch else '')
    line = f'{time.strftime("%F %T")} {start}: {precision} on {device}' + (f' ({note})' if note else '')
    with open(Path(output_dir) / PRECISION_LOG, 'a') as f:
        f.write(line + '\n')
    return line


def precision_launches(run_dir: Optional[Union[str, Path]]) -> List[str]:
    """The lines of the run's `precision.txt` (see `record_launch`), or [] when it has none."""
    path = Path(run_dir) / PRECISION_LOG if run_dir is not None else None
    return path.read_text().splitlines() if path is not None and path.is_file() else []
