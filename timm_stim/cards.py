#!/usr/bin/env python3
"""The Hub card of one tag (`model_card(entry)`, what `timm-stim-export` writes), built from its manifest entry alone.

YAML front matter as `huggingface_hub.ModelCardData` writes it, timm-style sections, usage that starts with
`import timm_stim`, the per-depth accuracy / FLOPs table (and how it was measured: with the BatchNorm statistics the
tag ships, or re-estimated per configuration), the training command, ST++-versus-baseline numbers and limitations.

The ST++-versus-baseline numbers are recorded in the entry at release (`comparison_record`, which `timm-stim-release`
runs in a clone, where `benchmarks/results/` is), so an installed wheel exports the same card as a clone. They come
from any results JSON with a `runs` list, one item per finished training run: `{"model": "cifar_resnet20",
"dataset": "cifar10", "arm": "off" | "stpp" | ..., "seed": 0, "epochs": 30, "top1": 91.2}` (`arm` "off" or
"baseline" is the baseline; the `_stim` suffix of `model` is ignored). A card lists, per arm, mean, sample standard
deviation, min-max and the number of seeds, for runs of the tag's architecture, dataset and (when its `train_args`
record them) epochs. "Sub-network mean" is always the mean over the sub-networks with the full network left out.

The repository's documents (README.md, benchmarks/README.md, MODEL_CARD.md) are rendered by `benchmarks/docs.py`.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCardData

from .models.weights import WeightsEntry

__all__ = ['model_card', 'card_data', 'depth_table', 'load_results', 'arm_stats', 'setbacks', 'comparison_record',
           'comparison_text', 'sub_mean', 'seeds_mean', 'trained_alone_pairs', 'limitations', 'HEADLINE_RUNS',
           'PLOT_NAME']

ROOT = Path(__file__).resolve().parents[1]  # a clone's root: benchmarks/results/ is read only there, at release
PLOT_NAME = 'depth_robustness.png'
TRAINED_ALONE = 'trained_alone.json'  # benchmarks/trained_alone.py: ST++ sub-networks vs the same networks alone
_MODES = {'stpp': 'with Stimulative Training++', 'st': 'with Stimulative Training',
          'off': 'without Stimulative Training (the plain baseline, published for comparison)'}
_DATASETS = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'imagenet1k': 'ImageNet-1k'}

ST_PP_SUMMARY = (
    'Stimulative Training (ST) reads a residual network as an ensemble of its sub-networks and, at every step, '
    'trains a randomly sampled sub-network (whole residual blocks dropped from the end of stages) to match the full '
    'network\'s prediction with a KL term, so that sub-networks stop "loafing" inside the whole (Ye et al., '
    'NeurIPS 2022). ST++ adds a direction-only KL (KL- on layer-normalised logits), random smaller inputs for the '
    'sub-networks and an inter-stage sampling rule (Ye et al., 2023). The result is one set of weights whose '
    'sub-networks work on their own (elastic depth). The full network keeps its cross-entropy loss, but it is not '
    'trained as usual: the sub-network terms share its weights, and in `stpp` mode (with 3 classes or more) its '
    'cross-entropy is computed on layer-normalised logits (A·LN(z), as the released code does), not on the raw '
    'logits.')

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
    '- A sub-network needs BatchNorm statistics of its own depth. Tags that ship per-depth statistics give the '
    'per-depth table\'s numbers with no data; for a configuration (or tag) without them the depth switch warns once '
    'and uses the full network\'s statistics, which costs accuracy: re-estimate them on about 2,000 of your training '
    'images with `timm_stim.recalibrate_bn(model, loader, depths=...)`.\n'
    '- Whether ST++ beats a plain baseline at the same schedule is stated only from seeded runs recorded in '
    '`benchmarks/results/`.')


def limitations(dataset: str) -> str:
    """LIMITATIONS, and for the dataset of the headline comparison which choices were made on its test split."""
    if dataset != HEADLINE_RUNS['dataset']:
        return LIMITATIONS
    return LIMITATIONS + (
        '\n- Choices made on the test split: the ST++ settings of the `s075` CIFAR-10 tags (`stpp_scale075`: '
        '`--stim-space st --stim-min-scale 0.75`) were chosen in stage 1 by a rule applied to CIFAR-10 `val`, which is '
        'the test set (ResNet-20, 30 epochs); the recipe and the KL- amplitude were settled on `val` images too. New '
        'choices are made on the held-out split (`timm_stim.heldout`: 5,000 seeded train images).')


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


def _usage(name: str, shipped: bool) -> str:
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
{_ELASTIC_SHIPPED if shipped else _ELASTIC_OWN_DATA}
```
'''


# the elastic-depth snippet of a card: a tag that ships per-depth BN statistics needs no data, any other does
_ELASTIC_SHIPPED = '\n'.join([
    'print(timm_stim.list_depths(model, measured=True))      # the shipped table: MFLOPs, held-out and test top-1',
    'timm_stim.set_depth(model, budget=0.5)                   # the best shipped depth within half the FLOPs, no data',
    'print(timm_stim.get_depth(model))                        # what was chosen'])
_ELASTIC_OWN_DATA = '\n'.join([
    'depths = timm_stim.list_depths(model)[0]                 # the smallest sub-network',
    'timm_stim.recalibrate_bn(model, loader, depths=depths)   # no shipped per-depth BN statistics: ~2,000 images',
    'with timm_stim.at_depth(model, depths):',
    '    logits = model(x)'])


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return '-' if v is None else f'{v:.{digits}f}'


def seeds_mean(s: Optional[Dict[str, Any]]) -> str:
    """'86.51 ± 0.05 (n=3)' / '88.38 (n=1)': a summary over seeds ({mean, sd, n}); 'n/a yet' without one."""
    if not s:
        return 'n/a yet'
    spread = f' ± {s["sd"]:.2f}' if s.get('sd') is not None else ''
    return f'{s["mean"]:.2f}{spread} (n={s["n"]})'


def _details(entry: WeightsEntry) -> str:
    s, size = entry.stats, entry.input_size or []
    lines = [
        '## Model Details',
        '- **Model Type:** Image classification / feature backbone, elastic depth',
        '- **Model Stats:**',
        f'  - Params (M): {_fmt(s.get("params_m"))}',
        f'  - GMACs: {_fmt(s.get("gmacs"), 3)}',
        f'  - Activations (M): {_fmt(s.get("activations_m"))}',
        f'  - Image size: {"x".join(str(v) for v in size[1:]) or "-"}',
        '- **Papers:**',
        '  - Stimulative Training of Residual Networks: A Social Psychology Perspective of Loafing: '
        'https://arxiv.org/abs/2210.04153',
        '  - Stimulative Training++: Go Beyond The Performance Limits of Residual Networks: '
        'https://arxiv.org/abs/2305.02507',
        f'- **Dataset:** {_DATASETS.get(entry.dataset, entry.dataset or "-")}',
        f'- **Weights:** `{entry.file}` ({entry.storage_dtype}, {entry.size} bytes, sha256 `{entry.sha256}`)',
        '- **Code:** timm-stim (the `timm_stim` package: `timm-stim-train`, `timm-stim-release`)',
    ]
    return '\n'.join(lines) + '\n'


def sub_mean(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """The sub-network mean of per-depth rows: their top-1 averaged with the full network left out (the one
    definition every table and card uses), None when there is no sub-network."""
    subs = [r['top1'] for r in rows if not r.get('full')]
    return statistics.fmean(subs) if subs else None


def _count(n: Any) -> str:
    """'2,000' for a number of images, '-' when not recorded."""
    return f'{n:,}' if isinstance(n, int) else '-'


def _how_measured(entry: WeightsEntry, rows: Sequence[Dict[str, Any]]) -> str:
    """How the per-depth top-1 of `entry` was measured: with the statistics the tag ships (exactly what a user runs)
    or re-estimated per configuration; and whether its held-out numbers are clean."""
    shipped = any(r.get('bn') == 'shipped' for r in rows)
    if not shipped:
        bn = entry.evaluation.get('bn_recalib')
        return (f'BatchNorm statistics re-estimated on {bn} training images for each configuration. This tag ships no '
                f'per-depth statistics: `set_depth` / `at_depth` then use the full network\'s, which costs accuracy, '
                f'unless you re-estimate them (`timm_stim.recalibrate_bn(model, loader, depths=...)`).')
    ds = entry.depth_stats
    text = (f'Measured exactly as a user runs the tag: `timm.create_model(\'{entry.name}\', pretrained=True)`, then '
            f'`timm_stim.set_depth` / `at_depth`, with the per-depth BatchNorm statistics shipped with the tag '
            f'(`{ds.get("file", "-")}`; `{ds.get("hf_hub_filename") or "depth_stats.safetensors"}` in an exported or '
            f'Hub folder; sha256-checked), no data and no re-estimation. They were estimated once, at release, on '
            f'{_count(ds.get("bn_images"))} training-augmented images outside the held-out split; the full network '
            f'uses its own.')
    held = ds.get('heldout') or {}
    if any(r.get('heldout_top1') is not None for r in rows) and held:
        text += (f' Held-out top-1: the {_count(held.get("size"))} seeded images of `timm_stim.heldout` (of the '
                 f'{_count(held.get("of"))} train images), which chose the shipped configurations and rank '
                 f'`set_depth(budget=...)`.')
        if not entry.train_args.get('holdout'):
            text += (f' This tag was trained on all {_count(held.get("of"))} train images, the held-out ones included, '
                     f'so its held-out numbers are not clean (they score images it trained on); the top-1 column is '
                     f'the test split.')
    return text


def depth_table(entry: WeightsEntry) -> str:
    """Markdown table of per-depth top-1 and FLOPs, how it was measured and the sub-network min / mean."""
    if not entry.depths:
        return 'No per-depth measurement was recorded for this tag.\n'
    rows = sorted(entry.depths, key=lambda r: r['flops'])
    top5 = all('top5' in r for r in rows)
    held = any(r.get('heldout_top1') is not None for r in rows)
    head = (['kept blocks per stage', 'top-1 (%)'] + (['top-5 (%)'] if top5 else []) + ['MFLOPs', 'share of full FLOPs']
            + (['held-out top-1 (%)'] if held else []))
    out = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for r in rows:
        cells = [','.join(str(d) for d in r['depths']) + (' (full)' if r.get('full') else ''), f'{r["top1"]:.2f}']
        cells += [f'{r["top5"]:.2f}'] if top5 else []
        cells += [f'{r["flops"] / 1e6:.1f}', f'{100 * r["flops_share"]:.0f}%']
        cells += [_fmt(r.get('heldout_top1'))] if held else []
        out.append('| ' + ' | '.join(cells) + ' |')
    subs = [r['top1'] for r in rows if not r.get('full')]
    total = entry.evaluation.get('depth_configurations')
    shipped = any(r.get('bn') == 'shipped' for r in rows)
    which = ('the shipped sub-networks' if shipped else
             f'a seeded sample of {len(subs)} of the {total - 1} sub-networks' if total and total > len(rows)
             else f'{len(subs)} sub-networks')
    summary = (f' Over {which} (the full network left out) top-1 is {min(subs):.2f} min, {sub_mean(rows):.2f} mean.'
               if subs else '')
    return '\n'.join(out) + f'\n\n{_how_measured(entry, rows)}{summary}\n'


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
    record['trained_alone'], record['trained_alone_note'] = trained_alone_pairs(model, dataset, epochs, results_dir)
    if record['trained_alone']:
        record['files'] = sorted(set(record['files']) | {TRAINED_ALONE})
    return record



def trained_alone_pairs(model: str, dataset: str, epochs: Optional[int],
                        results_dir: Optional[Path] = None) -> Tuple[List[Dict[str, Any]], str]:
    """The `pairs` of trained_alone.json (issue 27) in which `model`'s architecture is the ST++ network or the
    network trained alone, on `dataset` at `epochs`: each an ST++ sub-network's top-1 over seeds next to the same
    architecture trained alone; and the file's `note` (how both sides were measured). ([], '') when not measured."""
    path = (Path(results_dir) if results_dir is not None else ROOT / 'benchmarks' / 'results') / TRAINED_ALONE
    try:
        data = json.loads(path.read_text())
        pairs = data['pairs']
    except (OSError, ValueError, KeyError, TypeError):
        return [], ''
    keep = ('st_model', 'st_arm', 'depths', 'trained_alone', 'epochs', 'subnetwork', 'alone', 'minus')
    mine = [{k: p[k] for k in keep if k in p} for p in pairs
            if _base(model) in (_base(p['st_model']), _base(p['trained_alone']))
            and p.get('dataset', 'cifar10') == dataset and _same_epochs(epochs, p['epochs'])]
    return mine, str(data.get('note', '')) if mine else ''


def _trained_alone_text(pairs: Sequence[Dict[str, Any]], note: str = '') -> str:
    """The card's lines for `trained_alone_pairs`: sub-network minus the same network trained alone."""
    if not pairs:
        return ''
    lines = [f'`{p["st_model"]}` ({p.get("st_arm", "ST++")}, {p["epochs"]} epochs) at '
             f'({",".join(str(d) for d in p["depths"])}): {seeds_mean(p["subnetwork"])} against `{p["trained_alone"]}` '
             f'trained alone {seeds_mean(p["alone"])}: {signed(p["minus"])} pt' for p in pairs]
    return (f'\n\nSub-networks against the same networks trained alone ({note}{"; " if note else ""}a negative '
            'difference is a loss):\n' + '\n'.join(f'- {line}' for line in lines))


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
    text += _trained_alone_text(record.get('trained_alone') or [], record.get('trained_alone_note') or '')
    return text + f'\n\nSource: `benchmarks/results/{"`, `".join(record.get("files") or [])}`.\n'


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
    shipped = bool(entry.depth_stats.get('file'))
    body = '\n'.join([intro, _details(entry), _usage(entry.name, shipped), depth, _training(entry),
                      '## ST++ versus baseline\n' + comparison_text(entry.comparison),
                      '## Limitations\n' + limitations(entry.dataset) + '\n',
                      '## Citation\n' + BIBTEX + '\n'])
    return f'---\n{card_data(entry).to_yaml()}\n---\n\n{body}'


# ---------------------------------------------------------------------------- the headline comparison
# The comparison the README leads with (issue 10). `chosen` is the ST++ arm picked by the stage-1 rule of
# benchmarks/recipes/timm_archs.md, applied to CIFAR-10 `val`, which is the test set (`chosen_on` says so wherever
# the arm is named); the equal-wall-clock arms ran for the epochs that arm_cost.json gives it; `long`: the longer
# schedule of the pair (weights issue 10, stage 6).
HEADLINE_RUNS = dict(model='cifar_resnet20', dataset='cifar10', epochs=30, chosen='stpp_scale075', long=100,
                     chosen_on='chosen in stage 1 by a rule applied to CIFAR-10 `val`, which is the test set; its '
                               'seed-0 run is also one of the seeds averaged here')
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


def signed(x: float, digits: int = 2) -> str:
    """`x` with its sign, '+0.0' for a difference that rounds to zero (never '-0.0')."""
    text = f'{x:+.{digits}f}'
    return '+' + text[1:] if float(text) == 0 else text


def _versus(st: Dict[str, Any], ref: Dict[str, Any]) -> str:
    """'+0.12 pt top-1 (seed sd 0.20 over 3 vs 0.31 over 3), +25.3 pt sub-network mean': st minus ref (a side with
    one seed has no sd: 'seed sd 0.09 over 3 vs one seed')."""
    both = min(st['n'], ref['n']) > 1  # then 'seed sd' once, in front

    def side(s: Dict[str, Any]) -> str:
        return 'one seed' if s['n'] == 1 else ('' if both else 'seed sd ') + f'{s["sd"]:.2f} over {s["n"]}'
    spread = ('one seed each' if max(st['n'], ref['n']) == 1
              else ('seed sd ' if both else '') + f'{side(st)} vs {side(ref)}')
    text = f'{signed(st["mean"] - ref["mean"])} pt top-1 ({spread})'
    if st['sub_mean'] is not None and ref['sub_mean'] is not None:
        text += f', {signed(st["sub_mean"] - ref["sub_mean"], 1)} pt sub-network mean'
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
    lines = [f'equal epochs ({ep}): `{chosen}` ({what}{HEADLINE_RUNS["chosen_on"]}) minus the baseline: '
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
    lines.append(f'equal epochs, longer ({longer}): ' + (
        f'`{chosen}` minus the baseline: {_versus(st_long, base_long)}; {_crossover(st, base, st_long, base_long)}'
        if st_long and base_long else 'not finished yet'))
    return lines


def _crossover(st: Dict[str, Any], base: Optional[Dict[str, Any]], st_long: Dict[str, Any],
               base_long: Dict[str, Any]) -> str:
    """Whether the chosen arm's full-network top-1 passed the baseline's between the two schedules."""
    longer = HEADLINE_RUNS['long']
    if st_long['mean'] < base_long['mean']:
        return f'no crossover observed within {longer} epochs (the full network stays below the baseline)'
    if base is not None and st['mean'] < base['mean']:
        return f'ST++ passed the baseline between {HEADLINE_RUNS["epochs"]} and {longer} epochs'
    return 'ST++ is above the baseline at both schedules'


