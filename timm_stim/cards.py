#!/usr/bin/env python3
"""Model cards, generated from the weights manifest and `benchmarks/results/*.json`, never typed by hand.

    python -m timm_stim.cards                 # rewrite MODEL_CARD.md and README.md's generated blocks
    python -m timm_stim.cards --check         # exit 1 when either is stale (a test runs this)

README.md's generated blocks sit between marks: the headline numbers (HEADLINE_MARKS: every ResNet-20 arm and
schedule, the chosen ST++ arm at equal epochs, equal wall-clock and as a fine-tune), the other architectures
(ARCHS_MARKS), the fine-tuning tables (FINETUNE_MARKS, from finetune.json), the zoo table (README_MARKS) and the
benchmark tables of `## Measured` (`timm_stim.measured`).

`model_card(entry)` is the Hub `README.md` of one tag (`timm-stim-export` writes it): YAML front matter as
`huggingface_hub.ModelCardData` writes it, timm-style sections, usage that starts with `import timm_stim`, the
per-depth accuracy / FLOPs table and plot, the training command, ST++-versus-baseline numbers and limitations. It is
built from the manifest entry alone: the ST++-versus-baseline numbers are recorded in the entry at release
(`comparison_record`; `python -m timm_stim.cards --record-comparisons` refreshes every entry's), so an installed
wheel (no benchmarks/results/) exports the same card as a clone.

ST++-versus-baseline numbers come from any results JSON with a `runs` list, one item per finished training run:
`{"model": "cifar_resnet20", "dataset": "cifar10", "arm": "off" | "stpp" | ..., "seed": 0, "epochs": 30,
"top1": 91.2}` (`arm` "off" or "baseline" is the baseline; the `_stim` suffix of `model` is ignored). A card lists, per arm,
mean, sample standard deviation, min-max and the number of seeds, for runs of the tag's architecture, dataset and
(when its `train_args` record them) epochs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCardData

from .measured import measured_blocks
from .models.weights import (GIT_PART_MB, RELEASE_MAX_MB, WHEEL_BUDGET_MB, WHEEL_MAX_MB, WeightsEntry, read_manifest,
                             update_manifest)

__all__ = ['model_card', 'zoo_card', 'load_results', 'arm_stats', 'write_zoo_card', 'card_data',
           'comparison_record', 'comparison_text', 'record_comparisons']

ROOT = Path(__file__).resolve().parents[1]
PLOT_NAME = 'depth_robustness.png'
_MODES = {'stpp': 'with Stimulative Training++', 'st': 'with Stimulative Training',
          'off': 'without Stimulative Training (the plain baseline, published for comparison)'}
_DATASETS = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'imagenet1k': 'ImageNet-1k'}

ST_PP_SUMMARY = (
    'Stimulative Training (ST) reads a residual network as an ensemble of its sub-networks and, at every step, '
    'trains a randomly sampled sub-network (whole residual blocks dropped from the end of stages) to match the full '
    'network\'s prediction with a KL term, so that sub-networks stop "loafing" inside the whole (Ye et al., '
    'NeurIPS 2022). ST++ adds a direction-only KL (KL- on layer-normalised logits), random smaller inputs for the '
    'sub-networks and an inter-stage sampling rule (Ye et al., 2023); the result is one set of weights whose '
    'full network is trained as usual and whose sub-networks work on their own (elastic depth).')

BIBTEX = '''```bibtex
@inproceedings{ye2022stimulative,
  title     = {Stimulative Training of Residual Networks: A Social Psychology Perspective of Loafing},
  author    = {Ye, Peng and Tang, Shengji and Li, Shufei and Chen, Tao and Ouyang, Wanli},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022},
  eprint    = {2210.04153},
  archivePrefix = {arXiv}
}
@article{ye2023stimulative,
  title   = {Stimulative Training++: Go Beyond The Performance Limits of Residual Networks},
  author  = {Ye, Peng and He, Tong and Tang, Shengji and Li, Baopu and Chen, Tao and Bai, Lei and Ouyang, Wanli},
  journal = {arXiv preprint arXiv:2305.02507},
  year    = {2023}
}
@misc{rw2019timm,
  author = {Ross Wightman},
  title  = {PyTorch Image Models},
  year   = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}
```'''

LIMITATIONS = (
    '- Trained and evaluated on CIFAR-10 images at 32x32 (unless the tag names another dataset): not ImageNet, and '
    'not meant for larger photos; resize inputs to the model\'s `input_size` and normalise with its mean / std.\n'
    '- Numbers are single-crop top-1 on the dataset\'s validation split (for CIFAR-10 that is the 10,000-image test '
    'set), re-measured in float32 by `timm-stim-release`; they say nothing about distribution shift.\n'
    '- Sub-network accuracy assumes BatchNorm statistics re-estimated for that depth (`timm_stim.recalibrate_bn`); '
    'with the stored full-network statistics a sub-network is less accurate.\n'
    '- Whether ST++ beats a plain baseline at the same schedule is stated only from seeded runs recorded in '
    '`benchmarks/results/`.')


# ------------------------------------------------------------------------------------------------ results
def load_results(results_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every run listed under `runs` in `results_dir/*.json` (each tagged with its `results_file`)."""
    results_dir = Path(results_dir) if results_dir is not None else ROOT / 'benchmarks' / 'results'
    runs = []
    for path in sorted(results_dir.glob('*.json')):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get('runs'), list):
            arms = data.get('arms') if isinstance(data.get('arms'), dict) else {}
            runs += [dict(run, results_file=path.name, arm_description=arms.get(run.get('arm')))
                     for run in data['runs'] if isinstance(run, dict)]
    return runs


BASELINE_ARMS = ('off', 'baseline')  # the arm names a results file may give the plain baseline


def _base(model: str) -> str:
    return model[:-len('_stim')] if model.endswith('_stim') else model


def _same_epochs(a: Optional[int], b: Optional[int]) -> bool:
    """Two runs or tags trained for the same epochs, or one of them does not record its epochs (compared anyway)."""
    return a is None or b is None or a == b


def arm_stats(runs: Sequence[Dict[str, Any]], model: str, dataset: str,
              epochs: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """Per arm: top-1 mean / sd / min / max / n / seeds, sub-network mean and training hours over the finished runs
    of an architecture (`_stim` or not) and dataset, and of `epochs` when given."""
    by_arm: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        if _base(str(run.get('model', ''))) != _base(model) or run.get('dataset') != dataset:
            continue
        if not _same_epochs(run.get('epochs'), epochs):
            continue
        if isinstance(run.get('top1'), (int, float)):
            by_arm.setdefault(str(run.get('arm', '?')), []).append(run)
    stats = {}
    for arm, items in sorted(by_arm.items()):
        vals = [float(r['top1']) for r in items]
        subs = [r['robustness']['sub_mean'] for r in items if (r.get('robustness') or {}).get('sub_mean') is not None]
        hours = [float(r['train_hours']) for r in items if r.get('train_hours')]
        stats[arm] = dict(mean=statistics.fmean(vals), sd=statistics.stdev(vals) if len(vals) > 1 else 0.0,
                          min=min(vals), max=max(vals), n=len(vals), seeds=[r.get('seed') for r in items],
                          sub_mean=statistics.fmean(subs) if subs else None,
                          sub_sd=statistics.stdev(subs) if len(subs) > 1 else (0.0 if subs else None),
                          sub_n=len(subs),
                          hours=statistics.fmean(hours) if hours else None,
                          description=next((r['arm_description'] for r in items if r.get('arm_description')), None),
                          files=sorted({r['results_file'] for r in items}))
    return stats


SETBACK_PT = 5.0  # a validation top-1 fall (from the best so far) worth saying next to a comparison


def setbacks(runs: Sequence[Dict[str, Any]], model: str, dataset: str, epochs: Optional[int] = None) -> List[str]:
    """One line per finished run whose per-epoch top-1 (`curve_top1`) fell SETBACK_PT or more below its best so
    far: a difference between arms may then be one arm's unstable start under the shared recipe, not the method."""
    lines = []
    for run in runs:
        curve = run.get('curve_top1') or []
        if (_base(str(run.get('model', ''))) != _base(model) or run.get('dataset') != dataset
                or not _same_epochs(run.get('epochs'), epochs) or len(curve) < 2):
            continue
        fall, peak, trough = max((max(curve[:i]) - curve[i], curve[:i].index(max(curve[:i])), i)
                                 for i in range(1, len(curve)))
        if fall < SETBACK_PT:
            continue
        back = next((i for i in range(trough, len(curve)) if curve[i] > curve[peak]), None)
        lines.append(f'`{run.get("arm")}` seed {run.get("seed")}: validation top-1 fell from {curve[peak]:.2f} '
                     f'(epoch {peak + 1}) to {curve[trough]:.2f} (epoch {trough + 1}) and '
                     + (f'passed {curve[peak]:.2f} again at epoch {back + 1} of {len(curve)}.' if back is not None
                        else f'never passed it again in {len(curve)} epochs.'))
    return lines


def _setback_block(lines: Sequence[str]) -> str:
    """The `setbacks` lines under a heading, '' when there are none."""
    if not lines:
        return ''
    return (f'\n\nFalls of {SETBACK_PT:g} pt or more below the best top-1 so far (one recipe for every arm and '
            f'architecture, not tuned per architecture):\n' + '\n'.join(f'- {line}' for line in lines))


# --------------------------------------------------------------------------------------------- sections
def card_data(entry: WeightsEntry) -> ModelCardData:
    """The front matter: library, license, tags, datasets and the model-index with the measured top-1."""
    dataset_name = _DATASETS.get(entry.dataset, entry.dataset)
    split = entry.evaluation.get('split', 'validation')
    results = [EvalResult(task_type='image-classification', dataset_type=entry.dataset, dataset_name=dataset_name,
                          dataset_split=split, metric_type='accuracy', metric_name=f'top-{key[-1]} accuracy',
                          metric_value=entry.metrics[key]) for key in ('top1', 'top5') if key in entry.metrics]
    return ModelCardData(
        library_name='timm', license=entry.license or 'apache-2.0', pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-stim', 'stimulative-training', 'elastic-depth'],
        datasets=[entry.dataset] if entry.dataset else None, model_name=entry.name,
        eval_results=results or None)


def _usage(name: str) -> str:
    return f'''## Model Usage
`import timm_stim` registers the model with timm (timm has no plugin entry points), so it comes first.

### Image Classification
```python
import timm_stim
import timm
import torch
from PIL import Image

model = timm.create_model('{name}', pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
img = Image.open('image.png').convert('RGB')
with torch.no_grad():
    top5_prob, top5_idx = model(transform(img).unsqueeze(0)).softmax(dim=1).topk(5)
print([model.pretrained_cfg['label_names'][i] for i in top5_idx[0]])
```

### Feature Map Extraction
```python
import timm_stim
import timm
import torch

model = timm.create_model('{name}', pretrained=True, features_only=True).eval()
x = torch.randn(1, *model.pretrained_cfg['input_size'])
for fmap in model(x):
    print(fmap.shape)
```

### Image Embeddings
```python
import timm_stim
import timm
import torch

model = timm.create_model('{name}', pretrained=True, num_classes=0).eval()
x = torch.randn(1, *model.pretrained_cfg['input_size'])
embedding = model(x)                                     # (1, num_features) pooled embedding
features = model.forward_head(model.forward_features(x), pre_logits=True)
```

### Elastic depth
```python
import timm_stim
import timm

model = timm.create_model('{name}', pretrained=True).eval()
print(model.list_depths())                               # per-stage kept blocks of every sub-network
model.set_depth(model.list_depths()[0])                  # the smallest; re-estimate BN on your data for best accuracy
```
'''


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return '-' if v is None else f'{v:.{digits}f}'


def _details(entry: WeightsEntry) -> str:
    s, size = entry.stats, entry.input_size or []
    lines = [
        '## Model Details',
        f'- **Model Type:** Image classification / feature backbone, elastic depth',
        f'- **Model Stats:**',
        f'  - Params (M): {_fmt(s.get("params_m"))}',
        f'  - GMACs: {_fmt(s.get("gmacs"), 3)}',
        f'  - Activations (M): {_fmt(s.get("activations_m"))}',
        f'  - Image size: {"x".join(str(v) for v in size[1:]) or "-"}',
        f'- **Papers:**',
        f'  - Stimulative Training of Residual Networks: A Social Psychology Perspective of Loafing: '
        f'https://arxiv.org/abs/2210.04153',
        f'  - Stimulative Training++: Go Beyond The Performance Limits of Residual Networks: '
        f'https://arxiv.org/abs/2305.02507',
        f'- **Dataset:** {_DATASETS.get(entry.dataset, entry.dataset or "-")}',
        f'- **Weights:** `{entry.file}` ({entry.storage_dtype}, {entry.size} bytes, sha256 `{entry.sha256}`)',
        f'- **Code:** timm-stim (the `timm_stim` package: `timm-stim-train`, `timm-stim-release`)',
    ]
    return '\n'.join(lines) + '\n'


def depth_table(entry: WeightsEntry) -> str:
    """Markdown table of per-depth top-1 and FLOPs (BN re-estimated per configuration)."""
    if not entry.depths:
        return 'No per-depth measurement was recorded for this tag.\n'
    rows = ['| kept blocks per stage | top-1 (%) | top-5 (%) | MFLOPs | share of full FLOPs |',
            '|---|---|---|---|---|']
    for r in sorted(entry.depths, key=lambda r: r['flops']):
        star = ' (full)' if r.get('full') else ''
        rows.append(f'| {",".join(str(d) for d in r["depths"])}{star} | {r["top1"]:.2f} | {r["top5"]:.2f} | '
                    f'{r["flops"] / 1e6:.1f} | {100 * r["flops_share"]:.0f}% |')
    tops = [r['top1'] for r in entry.depths]
    bn = entry.evaluation.get('bn_recalib')
    total = entry.evaluation.get('depth_configurations')
    which = (f'a seeded sample of {len(tops)} of the {total} configurations (the full network included)'
             if total and total > len(tops) else f'{len(tops)} configurations')
    note = (f'\nBN statistics re-estimated on {bn} training images for each configuration; over '
            f'{which} top-1 is {min(tops):.2f} min, {statistics.fmean(tops):.2f} mean.\n')
    return '\n'.join(rows) + '\n' + note


def comparison_record(model: str, dataset: str, epochs: Optional[int], runs: Sequence[Dict[str, Any]],
                      results_dir: Optional[Path] = None) -> Dict[str, Any]:
    """What a card's ST++-versus-baseline section needs from the results JSON (`runs`), as plain data: per-arm
    statistics of the architecture and dataset at `epochs` (`arm_stats`), the setback lines, for the headline
    architecture its comparison lines (`comparisons`), and the results files. `timm-stim-release` stores it in the
    manifest entry (`comparison`), so that the Hub card is built from the entry alone: an installed wheel, which has
    no benchmarks/results/, exports the same card as a clone."""
    record: Dict[str, Any] = dict(arms=arm_stats(runs, model, dataset, epochs),
                                  setbacks=setbacks(runs, model, dataset, epochs))
    stats = record['arms']
    if stats and _base(model) == HEADLINE_RUNS['model'] and dataset == HEADLINE_RUNS['dataset']:
        stats = _stats_by_schedule(runs, model, dataset)
        record['headline'] = comparisons(stats, step_costs(results_dir))
    record['files'] = sorted({f for st in stats.values() for f in st['files']})
    return record


def comparison_text(record: Dict[str, Any]) -> str:
    """The ST++-versus-baseline section of a `comparison_record` (mean ± sd over seeds), or an honest 'not
    measured'."""
    stats = record.get('arms') or {}
    if not stats:
        return ('No seeded ST++-versus-baseline runs of this architecture and dataset are in '
                '`benchmarks/results/` yet, so this card claims no gain over a baseline.\n')
    rows = ['| arm | top-1 mean (%) | sd | min-max | seeds | sub-network top-1 mean (%) | training hours (1 thread) |',
            '|---|---|---|---|---|---|---|']
    for arm, st in stats.items():
        rows.append(f'| {arm}{" (baseline)" if arm == "off" else ""} | {st["mean"]:.2f} | {st["sd"]:.2f} | '
                    f'{st["min"]:.2f}-{st["max"]:.2f} | {st["n"]} | {_fmt(st["sub_mean"])} | {_fmt(st["hours"])} |')
    text = '\n'.join(rows) + '\n'
    base = next((stats[a] for a in BASELINE_ARMS if a in stats), None)
    if base is not None:
        for arm, st in stats.items():
            if arm not in BASELINE_ARMS:
                text += f'\n{arm} minus baseline: {_versus(st, base)}.'
    else:
        text += ('\nNo baseline of this architecture was trained with this schedule, so this card claims no gain '
                 'over a baseline.')
    text += _setback_block(record.get('setbacks') or [])
    if record.get('headline'):
        text += '\n\n' + '\n'.join(f'- {line}' for line in record['headline'])
    return text + f'\n\nSource: `benchmarks/results/{"`, `".join(record.get("files") or [])}`.\n'


def comparison(entry: WeightsEntry, runs: Sequence[Dict[str, Any]]) -> str:
    """The ST++-versus-baseline section of `entry` from the results runs as they are now (MODEL_CARD.md)."""
    return comparison_text(comparison_record(entry.model, entry.dataset, entry.train_args.get('epochs'), runs))


def record_comparisons(weights: Optional[Path] = None, results_dir: Optional[Path] = None) -> List[WeightsEntry]:
    """Store in every manifest entry its `comparison_record` from the results JSON as they are now (what its Hub
    card shows); `timm-stim-release` records it for each new tag."""
    runs = load_results(results_dir)

    def change(entries: List[WeightsEntry]) -> Tuple[List[WeightsEntry], Dict[str, bytes]]:
        return [dataclasses.replace(e, comparison=comparison_record(
            e.model, e.dataset, e.train_args.get('epochs'), runs, results_dir)) for e in entries], {}
    return update_manifest(change, weights or ROOT / 'weights')


def _paths_note(entry: WeightsEntry) -> str:
    """How to rerun a recorded command elsewhere: its `--data-dir` and `--output` are the training machine's."""
    if '--data-dir' not in (entry.command or ''):
        return ''
    online = (', or `--dataset torch/cifar10 --dataset-download --data-dir DIR` (torchvision downloads it, as with '
              "timm's `train.py`)" if entry.dataset == 'cifar10' else '')
    return (f'- `--data-dir` and `--output` are the paths of the machine that trained it. Elsewhere pass your own: '
            f'a folder with `train/` and `val/` class folders{online}.\n')


def _training(entry: WeightsEntry) -> str:
    ev = entry.evaluation
    logged = ev.get('logged_top1')
    launches = entry.train_args.get('precision_launches')
    mixed = ('- Precision of each launch (the run\'s `precision.txt`; the command above shows the last launch\'s '
             'flags): ' + '; '.join(f'`{x}`' for x in launches) + '.\n') if launches else ''
    return (f'## Training\n```bash\n{entry.command or "(command not recorded)"}\n```\n' + _paths_note(entry) + mixed
            + f'- Released with `{entry.release_command or "timm-stim-release"}` from `{entry.source or "-"}` '
            f'at timm-stim commit `{entry.commit or "-"}`.\n'
            f'- Top-1 re-measured in float32 on {ev.get("num_images", "-")} images of the `{ev.get("split", "-")}` '
            f'split: **{_fmt(entry.metrics.get("top1"))}** (the run logged {_fmt(logged)}; '
            f'tolerance {ev.get("tolerance", "-")} pt).\n')


def model_card(entry: WeightsEntry, plot: Optional[str] = PLOT_NAME) -> str:
    """The Hub README.md of one tag, from its manifest entry alone (the ST++-versus-baseline numbers are the ones
    recorded in it at release, `comparison_record`): the same card from an installed wheel and from a clone."""
    top1 = entry.metrics.get('top1')
    intro = (f'# Model card for {entry.name}\n\nA {_base(entry.model)} image classification model trained on '
             f'{_DATASETS.get(entry.dataset, entry.dataset)} {_MODES.get(entry.mode, entry.mode)} by timm-stim, a '
             f'plugin for `timm`. Top-1: {_fmt(top1)} % (re-measured at release).\n\n{ST_PP_SUMMARY}\n')
    depth = '## Elastic depth: accuracy and FLOPs per sub-network\n' + depth_table(entry)
    if plot and entry.depths:
        depth += f'\n![top-1 against FLOPs per depth configuration]({plot})\n'
    body = '\n'.join([intro, _details(entry), _usage(entry.name), depth, _training(entry),
                      '## ST++ versus baseline\n' + comparison_text(entry.comparison),
                      '## Limitations\n' + LIMITATIONS + '\n',
                      '## Citation\n' + BIBTEX + '\n'])
    return f'---\n{card_data(entry).to_yaml()}\n---\n\n{body}'


# ------------------------------------------------------------------------------------------------- zoo
def _zoo_row(e: WeightsEntry) -> str:
    tops = [r['top1'] for r in e.depths]
    where = 'wheel + Hub' if e.in_wheel else 'git (parts) + Hub'
    sub = f'{min(tops):.2f} / {statistics.fmean(tops):.2f}' if tops else '-'
    return (f'| `{e.name}` | {_DATASETS.get(e.dataset, e.dataset)} | {_fmt(e.metrics.get("top1"))} | {sub} | '
            f'{_fmt(e.stats.get("params_m"))} | {_fmt(e.stats.get("gmacs"), 3)} | {where} | `{e.hub_id}` |')


def _zoo_status(entries: Sequence[WeightsEntry]) -> str:
    if not entries:
        return ('## Status\nNo trained checkpoint has been released yet: `weights/manifest.json` is empty, so '
                '`timm.list_pretrained(\'*_stim*\')` lists nothing and `pretrained=True` raises a RuntimeError that '
                'says so. Long training runs are under way; every tag will be made by `timm-stim-release` (which '
                're-measures it) and this card regenerated from the manifest. Nothing is claimed here that a '
                'committed command did not produce.\n')
    rows = ['| tag | dataset | top-1 | sub-network top-1 min / mean | params (M) | GMACs | where | Hub id |',
            '|---|---|---|---|---|---|---|---|']
    return ('## Released weights\nTop-1 re-measured in float32 by `timm-stim-release`; sub-networks with BN '
            're-estimated per depth configuration.\n\n' + '\n'.join(rows + [_zoo_row(e) for e in entries]) + '\n')


def _zoo_entry(e: WeightsEntry, runs: Sequence[Dict[str, Any]]) -> str:
    return (f'### {e.name}\n' + _training(e)[len('## Training\n'):] + '\n' + depth_table(e) + '\nST++ versus '
            'baseline:\n\n' + comparison(e, runs))


def zoo_card(entries: Sequence[WeightsEntry], runs: Sequence[Dict[str, Any]] = ()) -> str:
    """MODEL_CARD.md: every tag, its numbers, robustness and how to reproduce it."""
    parts = ['# timm-stim model card\n\n<!-- generated by `python -m timm_stim.cards` from weights/manifest.json '
             'and benchmarks/results/*.json; do not edit by hand -->\n', ST_PP_SUMMARY + '\n', _zoo_status(entries)]
    parts += [_zoo_entry(e, runs) for e in entries]
    parts += [f'''## Usage
```python
import timm_stim
import timm
model = timm.create_model('cifar_resnet20_stim', pretrained=True)   # the default tag of a model with weights
model = timm.create_model('<model>.<tag>', pretrained=True, num_classes=100)   # fine-tune: new head
```

## Where the weights live
- A stored file of at most {WHEEL_MAX_MB} MB is `weights/<model>.<tag>.safetensors`: committed, shipped inside the
  wheel (PyPI limit 100 MB) and also pushed to the Hub. All of them together stay within {WHEEL_BUDGET_MB} MB: one
  more is refused by the release command, which names the way out.
- A larger one, and any tag released with `--out-of-wheel` (the baselines of timm's architectures, so that the
  wheel keeps the default tags), is `weights/hub/<model>.<tag>.safetensors`, kept out of the wheel. Git holds it as
  byte parts of at most {GIT_PART_MB} MB (`<file>.part1of2`, ...; GitHub refuses files over 100 MB), which a clone
  joins on first use; an installed wheel fetches it from the Hub at the revision pinned in the manifest
  (`hf_hub_id` = `org/name@<commit>`). Its sha256 is checked like any local file's. Large files are stored in
  float16 only when float16 gives the same top-1, except a file over {RELEASE_MAX_MB} MB in float32 (too large for
  one push of this repository), stored in float16 within 0.1 pt with the float16 top-1 recorded as the tag's.
- A clone serves every tag offline; `HF_HUB_OFFLINE=1` makes a missing file fail at once.

## Limitations
{LIMITATIONS}

## Citation
{BIBTEX}
''']
    return '\n'.join(parts)


README_MARKS = ('<!-- zoo:start (generated by `python -m timm_stim.cards`; do not edit) -->', '<!-- zoo:end -->')
HEADLINE_MARKS = ('<!-- numbers:start (generated by `python -m timm_stim.cards`) -->', '<!-- numbers:end -->')
# The comparison the README leads with (issue 10). `chosen` is the ST++ arm picked by the stage-1 rule of
# benchmarks/recipes/timm_archs.md; the equal-wall-clock arms ran for the epochs that arm_cost.json gives it.
# the README's headline comparison; `long`: the longer schedule of the crossover pair (weights issue 10, stage 6)
HEADLINE_RUNS = dict(model='cifar_resnet20', dataset='cifar10', epochs=30, chosen='stpp_scale075', long=100)
ARM_COST = 'arm_cost.json'


def step_costs(results_dir: Optional[Path] = None) -> Dict[str, float]:
    """Each arm's one-thread training step time over the baseline's (arm_cost.json), {} when not measured."""
    path = (Path(results_dir) if results_dir is not None else ROOT / 'benchmarks' / 'results') / ARM_COST
    try:
        rows = json.loads(path.read_text())['rows']
        return {str(r['arm']): float(r['cost_vs_baseline']) for r in rows if r.get('cost_vs_baseline')}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _stats_by_schedule(runs: Sequence[Dict[str, Any]], model: str, dataset: str) -> Dict[tuple, Dict[str, Any]]:
    """arm_stats keyed by (arm, epochs), baselines first, then by epochs and arm."""
    schedules = sorted({r.get('epochs') for r in runs if _base(str(r.get('model', ''))) == _base(model)
                        and r.get('dataset') == dataset and isinstance(r.get('epochs'), int)})
    out = {(arm, ep): st for ep in schedules for arm, st in arm_stats(runs, model, dataset, ep).items()}
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] not in BASELINE_ARMS, kv[0][1], kv[0][0])))


def _seeds(st: Dict[str, Any]) -> str:
    return f'{st["mean"]:.2f} ± {st["sd"]:.2f}' if st['n'] > 1 else f'{st["mean"]:.2f}'


def _sub_seeds(st: Dict[str, Any]) -> str:
    """Sub-network mean top-1, with its seed sd when more than one of the arm's seeds has a sweep."""
    return _fmt(st['sub_mean'], 1) + (f' ± {st["sub_sd"]:.1f}' if st.get('sub_n', 0) > 1 else '')


def _versus(st: Dict[str, Any], ref: Dict[str, Any]) -> str:
    """'+0.12 pt top-1 (seed sd 0.20 over 3 vs 0.31 over 3), +25.3 pt sub-network mean': st minus ref (a side with
    one seed has no sd: 'seed sd 0.09 over 3 vs one seed')."""
    both = min(st['n'], ref['n']) > 1  # then 'seed sd' once, in front

    def side(s: Dict[str, Any]) -> str:
        return 'one seed' if s['n'] == 1 else ('' if both else 'seed sd ') + f'{s["sd"]:.2f} over {s["n"]}'
    spread = ('one seed each' if max(st['n'], ref['n']) == 1
              else ('seed sd ' if both else '') + f'{side(st)} vs {side(ref)}')
    text = f'{st["mean"] - ref["mean"]:+.2f} pt top-1 ({spread})'
    if st['sub_mean'] is not None and ref['sub_mean'] is not None:
        text += f', {st["sub_mean"] - ref["sub_mean"]:+.1f} pt sub-network mean'
    return text


def _baseline_at(stats: Dict[tuple, Dict[str, Any]], epochs: int) -> Optional[Dict[str, Any]]:
    """The baseline arm's stats at `epochs` (`_stats_by_schedule` keys), None when it has not finished."""
    return next((stats[(a, epochs)] for a in BASELINE_ARMS if (a, epochs) in stats), None)


def comparisons(stats: Dict[tuple, Dict[str, Any]], costs: Dict[str, float]) -> List[str]:
    """The chosen ST++ arm of HEADLINE_RUNS (`stats`: its architecture's `_stats_by_schedule`) against what a user
    would train instead: the baseline at equal epochs, the arms given equal wall-clock (the baseline epochs that take
    as long as the chosen arm's, by its step cost in `costs`), itself as a short fine-tune of the baseline, and the
    pair at the longer schedule (HEADLINE_RUNS['long']); missing runs are said so."""
    chosen, ep = HEADLINE_RUNS['chosen'], HEADLINE_RUNS['epochs']
    st = stats.get((chosen, ep))
    if st is None:
        return [f'`{chosen}` at {ep} epochs: not finished yet.']
    base = _baseline_at(stats, ep)
    what = f'{st["description"]}; ' if st.get('description') else ''
    lines = [f'equal epochs ({ep}): `{chosen}` ({what}the ST++ recipe chosen in stage 1) minus the baseline: '
             + (_versus(st, base) if base else 'no baseline yet')]
    wall = round(ep * costs[chosen]) if chosen in costs else None
    others = {arm: s for (arm, e), s in stats.items() if e == wall and wall != ep}
    lines.append(f'equal wall-clock (the other arms given {wall} epochs, the time of {ep} ST++ epochs by '
                 f'`{ARM_COST}`): ' + ('; '.join(f'`{chosen}` minus `{arm}`: {_versus(st, s)}' for arm, s in
                                                others.items()) or 'not finished yet'))
    tuned = {(arm, e): s for (arm, e), s in stats.items() if arm == f'ft_{chosen}'}
    lines.append(f'ST++ as a short fine-tune of the {ep}-epoch baseline: ' + ('; '.join(
        f'`{arm}` ({e} epochs) minus `{chosen}` from scratch: {_versus(s, st)}'
        + (f'; minus the {ep}-epoch baseline (all its seeds, one of which it started from): {_versus(s, base)}'
           if base else '')
        for (arm, e), s in tuned.items()) or 'not finished yet'))
    longer = HEADLINE_RUNS['long']
    st_long = stats.get((chosen, longer))
    base_long = _baseline_at(stats, longer)
    lines.append(f'equal epochs, longer ({longer}; where the crossover lies): ' + (
        f'`{chosen}` minus the baseline: {_versus(st_long, base_long)}' if st_long and base_long
        else 'not finished yet'))
    return lines


def headline(runs: Sequence[Dict[str, Any]], results_dir: Optional[Path] = None) -> str:
    """README's first numbers: every arm and schedule of HEADLINE_RUNS (finished runs only) in one table, losses
    included, then the chosen ST++ arm against what a user would train instead."""
    h = HEADLINE_RUNS
    stats = _stats_by_schedule(runs, h['model'], h['dataset'])
    where = (f'CIFAR-10, ResNet-20, one recipe for every arm, sub-networks with BN re-estimated; '
             f'`benchmarks/results/cifar10.json`')
    if not any(arm in BASELINE_ARMS for arm, _ in stats):
        return f'No finished baseline run yet ({where}).'
    costs = step_costs(results_dir)
    rows = _arm_head('step cost') + _arm_rows(stats, lambda arm, st: _fmt(costs.get(arm.removeprefix('ft_'))))
    return (f'Measured ({where}; step cost: one-thread time per training step over the baseline\'s, '
            f'`{ARM_COST}`):\n\n' + '\n'.join(f'- {line}' for line in comparisons(stats, costs))
            + '\n\n' + '\n'.join(rows))


def _arm_head(last: str, first: str = '') -> List[str]:
    """The header of an `_arm_rows` table."""
    cols = ([first] if first else []) + ['arm', 'epochs', 'seeds', 'top-1 (mean ± sd)', 'minus the baseline (same '
                                         'epochs)', 'sub-network mean (± sd)', 'minus the baseline', last]
    return ['| ' + ' | '.join(cols) + ' |', '|---' * len(cols) + '|']


def _arm_rows(stats: Dict[tuple, Dict[str, Any]], last: Callable[[str, Dict[str, Any]], str],
             first: str = '') -> List[str]:
    """Table rows of `_stats_by_schedule` stats: arm, epochs, seeds, top-1, its difference from the baseline of the
    same epochs, sub-network mean and its difference; `last(arm, st)` fills the final column, `first` leads."""
    rows = []
    for (arm, ep), st in stats.items():
        base = _baseline_at(stats, ep)
        what = f' ({st["description"]})' if st.get('description') else ''
        diff = f'{st["mean"] - base["mean"]:+.2f}' if base and base is not st else '-'
        sub_diff = (f'{st["sub_mean"] - base["sub_mean"]:+.1f}' if base and base is not st and st['sub_mean']
                    is not None and base['sub_mean'] is not None else '-')
        rows.append(f'| {first}`{arm}`{what} | {ep} | {st["n"]} | {_seeds(st)} | {diff} | '
                    f'{_sub_seeds(st)} | {sub_diff} | {last(arm, st)} |')
    return rows


ARCHS_MARKS = ('<!-- archs:start (generated by `python -m timm_stim.cards`) -->', '<!-- archs:end -->')


def archs_table(runs: Sequence[Dict[str, Any]], dataset: str = 'cifar10') -> str:
    """Every other architecture's finished runs on `dataset` (timm's ResNets and MobileNetV3, ResNet-56): ST++
    against the baseline of the same recipe and epochs, with training hours (one thread, evaluation excluded)."""
    models = sorted({_base(str(r.get('model'))) for r in runs if r.get('dataset') == dataset
                     and _base(str(r.get('model'))) != HEADLINE_RUNS['model']})
    rows = _arm_head('training hours', 'model')
    falls = []
    for model in models:
        rows += _arm_rows(_stats_by_schedule(runs, model, dataset), lambda arm, st: _fmt(st['hours']),
                          first=f'{model} | ')
        falls += [f'{model} {line}' for line in setbacks(runs, model, dataset)]
    if len(rows) == 2:
        return 'No finished run of another architecture yet.'
    return ('Finished runs (`benchmarks/results/cifar10.json`; sub-networks with BN re-estimated, every '
            'configuration or a seeded sample of 20 plus the full network):\n\n' + '\n'.join(rows)
            + _setback_block(falls))


FINETUNE_MARKS = ('<!-- finetune:start (generated by `python -m timm_stim.cards`) -->', '<!-- finetune:end -->')


def _gap(tops: Dict[tuple, float], ref: Dict[tuple, float]) -> str:
    """'+0.03 to +3.98 pt': the range over depth configurations of `tops` minus `ref`."""
    diffs = [tops[k] - ref[k] for k in ref if k in tops]
    return f'{min(diffs):+.2f} to {max(diffs):+.2f} pt' if diffs else '-'


def _st_minus_baseline(tag: Optional[Tuple[str, Optional[int]]], base: Optional[Tuple[str, Optional[int]]]) -> bool:
    """Whether `tag` (stim mode, epochs) is an ST tag to compare with the baseline tag `base` of the same epochs."""
    return (tag is not None and base is not None and tag[0] != 'off' and base[0] == 'off'
            and _same_epochs(tag[1], base[1]))


def finetune_tables(results_dir: Optional[Path] = None,
                    recipes: Optional[Dict[str, Tuple[str, Optional[int]]]] = None) -> str:
    """README's fine-tuning tables from finetune.json: per architecture, each measured tag's fine-tune and the same
    schedule from random initialisation (once per distinct `--stim-*` setting), top-1 per depth configuration; then
    each tag minus its random initialisation, and each ST tag minus the baseline tags of the architecture trained for
    the same epochs (`recipes`: `<model>.<tag>` to its `--stim-mode` and training epochs, default from the manifest)."""
    if recipes is None:
        recipes = {e.name: (e.mode, e.train_args.get('epochs')) for e in read_manifest(ROOT / 'weights', strict=False)}
    path = (Path(results_dir) if results_dir is not None else ROOT / 'benchmarks' / 'results') / 'finetune.json'
    try:
        report = json.loads(path.read_text())
        results, settings = report['results'], report['settings']
    except (OSError, ValueError, KeyError, TypeError):
        return 'No fine-tuning results yet (`python benchmarks/finetune.py`).'
    by_model: Dict[str, Dict[str, Any]] = {}
    for tag, arms in results.items():  # a tag with one arm measured so far (`finetune.py --arm`) waits for the other
        if {'pretrained', 'scratch'} <= set(arms):
            by_model.setdefault(_base(tag.split('.')[0]), {})[tag] = arms
    out = [f'Fashion-MNIST test top-1 (%) after {settings["epochs"]} epoch(s) at {settings["input_size"][1]}x'
           f'{settings["input_size"][2]}, one seed, BN re-estimated per depth; `benchmarks/results/finetune.json` '
           f'(each result records its command and commit).']
    for model, tags in by_model.items():
        first = next(iter(tags.values()))['pretrained']['results']
        heads = [('full' if r['full'] else ','.join(map(str, r['depths']))) + f' ({r["flops"] / 1e6:.0f} MFLOPs)'
                 for r in first]
        rows = [f'| {model}: start | precision | ' + ' | '.join(heads) + ' |', '|---' * (len(heads) + 2) + '|']
        scratch_seen = set()
        tops = {(tag, arm): {tuple(x['depths']): x['top1'] for x in arms[arm]['results']}
                for tag, arms in tags.items() for arm in ('pretrained', 'scratch')}
        for tag, arms in tags.items():
            for arm in ('pretrained', 'scratch'):
                r = arms[arm]
                stim = ' '.join(r['stim'])
                if arm == 'scratch':
                    if stim in scratch_seen:
                        continue
                    scratch_seen.add(stim)
                label = f'`{tag}`' if arm == 'pretrained' else f'random initialisation (`{stim}`)'
                rows.append(f'| {label} | {r.get("precision") or settings.get("precision", "?")} | '
                            + ' | '.join(_fmt(tops[(tag, arm)].get(tuple(x['depths']))) for x in first) + ' |')
        gaps = [f'`{tag}` minus random initialisation: {_gap(tops[(tag, "pretrained")], tops[(tag, "scratch")])}'
                for tag in tags]
        gaps += [f'`{tag}` minus the baseline tag `{base}`: '
                 + _gap(tops[(tag, 'pretrained')], tops[(base, 'pretrained')])
                 for base in tags for tag in tags if _st_minus_baseline(recipes.get(tag), recipes.get(base))]
        out.append('\n'.join(rows) + '\n\nOver these depths:\n' + '\n'.join(f'- {gap}' for gap in gaps))
    return '\n\n'.join(out)


def _replace_block(text: str, marks: Sequence[str], body: str, sep: str = '\n') -> str:
    start, end = marks
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    return f'{head}{start}{sep}{body}{sep}{end}{rest.split(end, 1)[1]}'


def readme_with_zoo(readme: str, entries: Sequence[WeightsEntry], runs: Sequence[Dict[str, Any]] = ()) -> str:
    """README.md with its generated blocks replaced: the zoo table between README_MARKS (the same rows as
    MODEL_CARD.md), the headline numbers between HEADLINE_MARKS, the other architectures, the fine-tuning tables and
    the benchmark tables of `timm_stim.measured`; text without the marks is kept as it is."""
    readme = _replace_block(readme, README_MARKS, _zoo_status(entries).split('\n', 1)[1].strip())
    for marks, body in measured_blocks().items():
        readme = _replace_block(readme, marks, body)
    readme = _replace_block(readme, FINETUNE_MARKS, finetune_tables())
    readme = _replace_block(readme, ARCHS_MARKS, archs_table(runs))
    return _replace_block(readme, HEADLINE_MARKS, headline(runs))


def write_zoo_card(path: Optional[Path] = None, weights: Optional[Path] = None,
                   results: Optional[Path] = None) -> str:
    """Regenerate MODEL_CARD.md; returns its text."""
    text = zoo_card(read_manifest(weights or ROOT / 'weights'), load_results(results))
    Path(path or ROOT / 'MODEL_CARD.md').write_text(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m timm_stim.cards', description='Regenerate MODEL_CARD.md.')
    p.add_argument('--output', default=str(ROOT / 'MODEL_CARD.md'))
    p.add_argument('--check', action='store_true', help='exit 1 if the file is stale, write nothing')
    p.add_argument('--readme', default=str(ROOT / 'README.md'), help='README whose zoo table is regenerated')
    p.add_argument('--record-comparisons', action='store_true',
                   help="store each manifest entry's ST++-versus-baseline numbers from benchmarks/results/ (what its "
                        "Hub card shows), then regenerate")
    args = p.parse_args(argv)
    if args.record_comparisons and not args.check:
        record_comparisons()
    entries = read_manifest(ROOT / 'weights')
    readme = Path(args.readme).read_text() if Path(args.readme).is_file() else ''
    runs = load_results()
    outputs = {Path(args.output): zoo_card(entries, runs), Path(args.readme): readme_with_zoo(readme, entries, runs)}
    stale = [p for p, text in outputs.items() if (p.read_text() if p.is_file() else '') != text]
    if args.check:
        for path in stale:
            print(f'{path} is stale: run python -m timm_stim.cards', file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
