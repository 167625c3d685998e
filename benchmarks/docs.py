#!/usr/bin/env python3
"""The repository's documents, generated from `weights/manifest.json` and `benchmarks/results/*.json`, never typed.

    python benchmarks/docs.py                        # rewrite README.md's and benchmarks/README.md's generated
                                                     # blocks, and MODEL_CARD.md
    python benchmarks/docs.py --check                # exit 1 when one of them is stale (tests/test_readme.py)
    python benchmarks/docs.py --record-comparisons   # first store in every manifest entry its ST++-versus-baseline
                                                     # numbers from benchmarks/results/ (what its Hub card shows)

A generated block sits between the marks of `measured.marks(name)` in any of `DOCUMENTS`; text outside the marks is
kept as it is. The blocks (`blocks()`): the quick start's top-1 (`quickstart`, from elastic.json), the zoo table
(`zoo`, from the manifest), the README's headline numbers (`numbers`: every ResNet-20 arm and schedule, the chosen
ST++ arm at equal epochs, equal wall-clock and as a fine-tune), the MobileNetV3 controls (`controls`), the other
architectures (`archs`), the fine-tuning tables (`finetune`) and every table of `measured.BLOCKS` (benchmark
results, elastic depth with no data, sub-networks against networks trained alone). MODEL_CARD.md is generated whole.
The Hub card of one tag is the package's (`timm_stim.cards.model_card`), built from the manifest entry alone.

"Sub-network mean" is one thing everywhere: the mean top-1 of the sub-networks, the full network left out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402
from cifar10 import arm_description  # noqa: E402
from measured import marks, measured_blocks, read, smallest, wrap  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm_stim.cards import (BASELINE_ARMS, BIBTEX, HEADLINE_RUNS, ST_PP_SUMMARY, _DATASETS,  # noqa: E402
                             _base, _baseline_at, _fmt, _same_epochs, _stats_by_schedule, _training, _versus, arm_stats,
                             comparison_record, comparison_text, comparisons, depth_table, limitations,
                             load_results, setbacks, signed,
                             step_costs, sub_mean)
from timm_stim.models.weights import (GIT_PART_MB, RELEASE_MAX_MB, WHEEL_BUDGET_MB, WHEEL_MAX_MB,  # noqa: E402
                                      WeightsEntry, read_manifest, update_manifest)

__all__ = ['DOCUMENTS', 'MODEL_CARD', 'blocks', 'update', 'headline', 'controls', 'archs_table', 'finetune_tables',
           'quickstart', 'zoo_table', 'zoo_card', 'record_comparisons', 'stale_comparisons', 'main']

DOCUMENTS = (ROOT / 'README.md', ROOT / 'benchmarks' / 'README.md', ROOT / 'docs' / 'guide.md')  # generated blocks
MODEL_CARD = ROOT / 'MODEL_CARD.md'  # generated whole
RESULTS = ROOT / 'benchmarks' / 'results'

# The quick start: the default tag of this model, switched by FLOPs budget. ResNet-20's smallest sub-network, (1,1,1),
# needs 30.6 % of the full FLOPs, so a budget of 0.3 fits nothing (a ValueError); 0.35 is the smallest round one.
QUICKSTART = dict(model='cifar_resnet20_stim', budget=0.35)
# MobileNetV3's ST++ gain and the controls that take one ingredient of it each (issue 27)
CONTROLS = dict(model='mobilenetv3_large_100', dataset='cifar10', epochs=30, chosen='stpp_scale075',
                arms=('main_normalized', 'baseline_lr005'))


def bullets(lines: Sequence[str]) -> str:
    return '\n'.join(wrap(f'- {line}', '  ') for line in lines)


def _describe(arm: str, st: Optional[Dict[str, Any]] = None) -> str:
    """What an arm is: as its results file says, else as benchmarks/cifar10.py defines it."""
    if st and st.get('description'):
        return st['description']
    try:
        return arm_description(arm)
    except KeyError:
        return arm


def _legend(arms: Sequence[Tuple[str, Optional[Dict[str, Any]]]]) -> str:
    seen = dict.fromkeys(arm for arm, _ in arms)
    stats = {arm: st for arm, st in arms}
    return wrap('Arms: ' + '; '.join(f'`{arm}`: {_describe(arm, stats[arm])}' for arm in seen) + '.')


# --------------------------------------------------------------------------------------- arms and schedules
def _seeds(st: Dict[str, Any]) -> str:
    return f'{st["mean"]:.2f} ± {st["sd"]:.2f}' if st['n'] > 1 else f'{st["mean"]:.2f}'


def _sub_seeds(st: Dict[str, Any]) -> str:
    """Sub-network mean top-1, with its seed sd when more than one of the arm's seeds has a sweep."""
    return _fmt(st['sub_mean'], 1) + (f' ± {st["sub_sd"]:.1f}' if st.get('sub_n', 0) > 1 else '')


def _arm_head(last: str, first: str = '') -> List[str]:
    """The header of an `_arm_rows` table."""
    cols = ([first] if first else []) + ['arm', 'epochs', 'seeds', 'top-1', 'vs baseline', 'sub-network mean',
                                         'vs baseline', last]
    return ['| ' + ' | '.join(cols) + ' |', '|---' * len(cols) + '|']


def _arm_rows(stats: Dict[tuple, Dict[str, Any]], last: Callable[[str, Dict[str, Any]], str],
              first: str = '') -> List[str]:
    """Table rows of `_stats_by_schedule` stats: arm, epochs, seeds, top-1 (mean ± sd), its difference from the
    baseline of the same epochs, sub-network mean and its difference; `last(arm, st)` fills the final column."""
    rows = []
    for (arm, ep), st in stats.items():
        base = _baseline_at(stats, ep)
        diff = signed(st["mean"] - base["mean"]) if base and base is not st else '-'
        sub_diff = (signed(st["sub_mean"] - base["sub_mean"], 1) if base and base is not st and st['sub_mean']
                    is not None and base['sub_mean'] is not None else '-')
        rows.append(f'| {first}`{arm}` | {ep} | {st["n"]} | {_seeds(st)} | {diff} | {_sub_seeds(st)} | {sub_diff} | '
                    f'{last(arm, st)} |')
    return rows


def headline(runs: Sequence[Dict[str, Any]], results_dir: Optional[Path] = None) -> str:
    """README's first numbers: every arm and schedule of HEADLINE_RUNS (finished runs only) in one table, losses
    included, then the chosen ST++ arm against what a user would train instead."""
    h = HEADLINE_RUNS
    stats = _stats_by_schedule(runs, h['model'], h['dataset'])
    where = 'CIFAR-10, ResNet-20, one recipe for every arm; `benchmarks/results/cifar10.json`'
    if not any(arm in BASELINE_ARMS for arm, _ in stats):
        return f'No finished baseline run yet ({where}).'
    costs = step_costs(results_dir)
    rows = _arm_head('step cost') + _arm_rows(stats, lambda arm, st: _fmt(costs.get(arm.removeprefix('ft_'))))
    intro = wrap(f'Test top-1 (%) ({where}). Sub-network mean: every sub-network with BN re-estimated, the full '
                 f'network left out. Step cost: one-thread time per training step over the baseline\'s '
                 f'(`arm_cost.json`). A negative difference is a loss.')
    return (intro + '\n\n' + '\n'.join(rows) + '\n\n' + bullets(comparisons(stats, costs)) + '\n\n'
            + _legend([(arm, st) for (arm, _), st in stats.items()]))


def controls(runs: Sequence[Dict[str, Any]]) -> str:
    """MobileNetV3's ST++ gain against the baseline and the controls that each take one of its ingredients (the
    normalised main loss, a gentler learning rate): each control's difference and its share of the gain."""
    c = CONTROLS
    stats = arm_stats(runs, c['model'], c['dataset'], c['epochs'])
    base = next((stats[a] for a in BASELINE_ARMS if a in stats), None)
    st = stats.get(c['chosen'])
    order = [a for a in BASELINE_ARMS if a in stats][:1] + [c['chosen'], *c['arms']]
    rows = ['| arm | seeds | top-1 | vs baseline | share of the ST++ gain | sub-network mean | vs baseline |',
            '|---' * 7 + '|']
    gain = st['mean'] - base['mean'] if st and base else None
    lines = []
    for arm in order:
        s = stats.get(arm)
        if s is None:
            rows.append(f'| `{arm}` | n/a yet | n/a yet | n/a yet | n/a yet | n/a yet | n/a yet |')
            lines.append(f'`{arm}` ({_describe(arm)}): n/a yet, its runs have not finished.')
            continue
        diff = s['mean'] - base['mean'] if base and s is not base else None
        share = f'{100 * diff / gain:.0f} %' if diff is not None and gain else '-'
        sub = (signed(s["sub_mean"] - base["sub_mean"], 1) if diff is not None and s['sub_mean'] is not None
               and base['sub_mean'] is not None else '-')
        rows.append(f'| `{arm}` | {s["n"]} | {_seeds(s)} | {_fmt(diff) if diff is None else signed(diff)} | '
                    f'{share if arm != c["chosen"] else "-"} | {_sub_seeds(s)} | {sub} |')
        if arm in c['arms'] and diff is not None and gain:
            lines.append(f'`{arm}` ({_describe(arm, s)}) minus the baseline: {_versus(s, base)}: '
                         f'{100 * diff / gain:.0f} % of the ST++ gain.')
    head = (f'ST++ (`{c["chosen"]}`) minus the baseline: {_versus(st, base)}.' if st and base
            else 'ST++ or its baseline: n/a yet.')
    falls = setbacks(runs, c['model'], c['dataset'], c['epochs'])
    text = wrap(f'{c["model"]}, CIFAR-10, {c["epochs"]} epochs, float32, test top-1 (%); '
                '`benchmarks/results/cifar10.json`. ' + head)
    return (text + '\n\n' + '\n'.join(rows) + '\n\n' + bullets(lines + [f'{c["model"]} {x}' for x in falls]))


def archs_table(runs: Sequence[Dict[str, Any]], dataset: str = 'cifar10') -> str:
    """Every other architecture's finished runs on `dataset` (timm's ResNets and MobileNetV3, ResNet-56): ST++
    against the baseline of the same recipe and epochs, with training hours (one thread, evaluation excluded)."""
    models = sorted({_base(str(r.get('model'))) for r in runs if r.get('dataset') == dataset
                     and _base(str(r.get('model'))) != HEADLINE_RUNS['model']})
    rows = _arm_head('training hours', 'model')
    falls, arms = [], []
    for model in models:
        stats = _stats_by_schedule(runs, model, dataset)
        rows += _arm_rows(stats, lambda arm, st: _fmt(st['hours']), first=f'{model} | ')
        arms += [(arm, st) for (arm, _), st in stats.items()]
        falls += [f'{model} {line}' for line in setbacks(runs, model, dataset)]
    if len(rows) == 2:
        return 'No finished run of another architecture yet.'
    text = ('Finished runs (`benchmarks/results/cifar10.json`; test top-1 (%); sub-network mean: BN re-estimated, '
            'every sub-network or a seeded sample of 20, the full network left out):\n\n' + '\n'.join(rows)
            + '\n\n' + _legend(arms))
    if falls:
        text += ('\n\nFalls of 5 pt or more below the best top-1 so far (one recipe for every arm and architecture, '
                 'not tuned per architecture):\n' + bullets(falls))
    return text


# ----------------------------------------------------------------------------------------------- fine-tuning
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
    """The fine-tuning tables from finetune.json: per architecture, each measured tag's fine-tune and the same
    schedule from random initialisation (once per distinct `--stim-*` setting), top-1 per depth configuration; then
    each tag minus its random initialisation, and each ST tag minus the baseline tags of the architecture trained for
    the same epochs (`recipes`: `<model>.<tag>` to its `--stim-mode` and training epochs, default from the manifest),
    saying so when the two were fine-tuned with different `--stim-*` settings."""
    if recipes is None:
        recipes = {e.name: (e.mode, e.train_args.get('epochs')) for e in read_manifest(ROOT / 'weights', strict=False)}
    try:
        report = read('finetune.json', results_dir)
        results, settings = report['results'], report['settings']
    except (OSError, ValueError, KeyError, TypeError):
        return 'No fine-tuning results yet (`python benchmarks/finetune.py`).'
    by_model: Dict[str, Dict[str, Any]] = {}
    for tag, arms in results.items():  # a tag with one arm measured so far (`finetune.py --arm`) waits for the other
        if {'pretrained', 'scratch'} <= set(arms):
            by_model.setdefault(_base(tag.split('.')[0]), {})[tag] = arms
    out = [f'Fashion-MNIST test top-1 (%) after {settings["epochs"]} epoch(s) at {settings["input_size"][1]}x'
           f'{settings["input_size"][2]}, one seed, BN re-estimated per depth; `benchmarks/results/finetune.json` '
           f'(each result records its command and commit). Each tag is fine-tuned with its own `--stim-*` settings.']
    for model, tags in by_model.items():
        first = next(iter(tags.values()))['pretrained']['results']
        heads = [('full' if r['full'] else ','.join(map(str, r['depths']))) + f' ({r["flops"] / 1e6:.0f} MFLOPs)'
                 for r in first]
        rows = [f'| {model}: start | precision | ' + ' | '.join(heads) + ' |', '|---' * (len(heads) + 2) + '|']
        scratch_seen = set()
        tops = {(tag, arm): {tuple(x['depths']): x['top1'] for x in arms[arm]['results']}
                for tag, arms in tags.items() for arm in ('pretrained', 'scratch')}
        stim = {tag: ' '.join(arms['pretrained'].get('stim') or []) for tag, arms in tags.items()}
        for tag, arms in tags.items():
            for arm in ('pretrained', 'scratch'):
                r = arms[arm]
                flags = ' '.join(r.get('stim') or [])
                if arm == 'scratch':
                    if flags in scratch_seen:
                        continue
                    scratch_seen.add(flags)
                label = f'`{tag}`' if arm == 'pretrained' else f'random initialisation (`{flags}`)'
                rows.append(f'| {label} | {r.get("precision") or settings.get("precision", "?")} | '
                            + ' | '.join(_fmt(tops[(tag, arm)].get(tuple(x['depths']))) for x in first) + ' |')
        gaps = [f'`{tag}` minus random initialisation: {_gap(tops[(tag, "pretrained")], tops[(tag, "scratch")])}'
                for tag in tags]
        gaps += [f'`{tag}` minus the baseline tag `{base}`: '
                 + _gap(tops[(tag, 'pretrained')], tops[(base, 'pretrained')])
                 + (f' (fine-tuned with different `--stim-*` settings: `{stim[tag]}` against `{stim[base]}`, so this '
                    f'mixes the start with the fine-tuning recipe)' if stim[tag] != stim[base] else '')
                 for base in tags for tag in tags if _st_minus_baseline(recipes.get(tag), recipes.get(base))]
        out.append('\n'.join(rows) + '\n\nOver these depths:\n' + '\n'.join(f'- {gap}' for gap in gaps))
    return '\n\n'.join(out)


# ------------------------------------------------------------------------------------- elastic depth, no data
def _default_entry(entries: Sequence[WeightsEntry], model: str) -> Optional[WeightsEntry]:
    """The default tag of `model`: its first manifest entry (what `pretrained=True` without a tag loads)."""
    return next((e for e in entries if e.model == model), None)


def budget_pick(rows: Sequence[Dict[str, Any]], budget: float) -> Optional[Dict[str, Any]]:
    """The row `timm_stim.set_depth(model, budget=...)` picks (`elastic.pick_depth`): among the shipped rows within
    the FLOPs share, the best held-out top-1, then the fewest FLOPs; None when none fits."""
    fits = [r for r in rows if r.get('shipped', True) and r['flops_share'] <= budget + 1e-9
            and r.get('heldout_top1') is not None]
    return max(fits, key=lambda r: (r['heldout_top1'], -r['flops_share'])) if fits else None


def _elastic_rows(name: str, results_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """The rows elastic.json holds for tag `name` ([] when it is missing or has not measured the tag)."""
    try:
        return list(read('elastic.json', results_dir)['tags'][name]['rows'])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def quickstart(entries: Sequence[WeightsEntry], results_dir: Optional[Path] = None) -> str:
    """README's quick start: load the default tag, switch it by FLOPs budget, and the top-1 that gives with no data
    (elastic.json's row of the configuration the budget picks), or 'n/a yet'."""
    q = QUICKSTART
    entry = _default_entry(entries, q['model'])
    name = entry.name if entry else q['model']
    pick = budget_pick(_elastic_rows(name, results_dir), q['budget'])
    if pick:
        chose = f'({",".join(map(str, pick["depths"]))}), {100 * pick["flops_share"]:.0f} %'
        got = f'CIFAR-10 test top-1 {pick["top1"]:.2f} %: shipped BN statistics, no data'
    else:
        chose, got = 'its pick', 'top-1: n/a yet (benchmarks/results/elastic.json lacks this tag)'
    return '\n'.join([
        '```python',
        'import timm, timm_stim                       # timm_stim registers the *_stim models and their weights',
        f"model = timm.create_model('{q['model']}', pretrained=True).eval()  # default tag: {name.split('.')[-1]}",
        f"timm_stim.set_depth(model, budget={q['budget']})      # best shipped depth within {100 * q['budget']:.0f} % "
        f'of the FLOPs: {chose}',
        f'logits = model(images)                       # {got}',
        '```'])


def _smallest_no_data(e: WeightsEntry) -> str:
    """Top-1 of the tag's smallest shipped configuration with its shipped statistics; 'n/a yet' for a `_stim` tag
    not re-released with statistics, '-' for a tag of a base model (none ship)."""
    shipped = [r for r in e.depths if r.get('bn') == 'shipped']
    if shipped:
        r = smallest(shipped)
        return f'{r["top1"]:.2f} ({",".join(map(str, r["depths"]))})'
    return 'n/a yet' if e.model.endswith('_stim') else '-'


def _where(e: WeightsEntry) -> str:
    """Where the file is today: in the wheel, in git as parts (weights/hub/), and on the Hub only when pinned."""
    return ('wheel' if e.in_wheel else 'git parts') + (' + Hub' if e.hub_revision else '')


def zoo_table(entries: Sequence[WeightsEntry]) -> str:
    """The zoo: every released tag, compact (README.md and MODEL_CARD.md)."""
    if not entries:
        return ('No trained checkpoint has been released yet: `weights/manifest.json` is empty, so '
                '`timm.list_pretrained(\'*_stim*\')` lists nothing and `pretrained=True` raises a RuntimeError that '
                'says so.')
    datasets = sorted({_DATASETS.get(e.dataset, e.dataset) for e in entries})
    pinned = [e for e in entries if e.hub_revision]
    rows = ['| tag | top-1 | sub-network mean | smallest, no data | params (M) | where |', '|---' * 6 + '|']
    rows += [f'| `{e.name}` | {_fmt(e.metrics.get("top1"))} | {_fmt(sub_mean(e.depths))} | {_smallest_no_data(e)} | '
             f'{_fmt(e.stats.get("params_m"))} | {_where(e)} |' for e in entries]
    unclean = [e for e in entries if not e.train_args.get('holdout')]
    marks_used = {_smallest_no_data(e) for e in entries}
    legend = '; '.join(text for mark, text in (('n/a yet', 'n/a yet: not re-released with statistics yet'),
                                               ('-', '-: a base-model tag, none ship')) if mark in marks_used)
    intro = (f'{", ".join(datasets)} test top-1 (%), re-measured in float32 at release. Sub-network mean: the tag\'s '
             'per-depth table, full network left out. Smallest, no data: its smallest shipped configuration with the '
             'per-depth BatchNorm statistics the tag ships, as `pretrained=True` and the depth switch give it'
             + (f' ({legend})' if legend else '') + '. Where: wheel = in the wheel '
             '(top-level `weights/*.safetensors`); git parts = `weights/hub/`, in git as parts a clone joins, not in '
             'the wheel. ' + (f'{len(pinned)} tag(s) pushed to the Hub at a pinned revision.' if pinned
                              else 'Nothing is on the Hub yet (no pinned push): git-parts tags load from a clone only.')
             + ((f' All {len(entries)} tags' if len(unclean) == len(entries) else
                 f' {len(unclean)} of the {len(entries)} tags') + ' were trained on all training images, held-out '
                'split included, so their held-out numbers are not clean.' if unclean else ''))
    return wrap(intro) + '\n\n' + '\n'.join(rows)


# ------------------------------------------------------------------------------------------- MODEL_CARD.md
def _zoo_entry(e: WeightsEntry, runs: Sequence[Dict[str, Any]]) -> str:
    record = comparison_record(e.model, e.dataset, e.train_args.get('epochs'), runs)
    return (f'### {e.name}\n' + _training(e)[len('## Training\n'):] + '\n' + depth_table(e) + '\nST++ versus '
            'baseline:\n\n' + comparison_text(record))


def _where_weights(entries: Sequence[WeightsEntry]) -> str:
    """Where the weights live, with the default tags that are not in the wheel and the Hub state named."""
    defaults: Dict[str, WeightsEntry] = {}
    for e in entries:
        defaults.setdefault(e.model, e)
    large = [f'`{model}`' for model, e in defaults.items() if not e.in_wheel]
    pinned = [e for e in entries if e.hub_revision]
    hub = (f'{len(pinned)} tag(s) are pushed at a pinned revision.' if pinned else
           'Nothing has been pushed yet (no entry pins an `hf_hub_id` revision), so these tags load from a clone only.')
    return '## Where the weights live\n' + bullets([
        f'A stored file of at most {WHEEL_MAX_MB} MB is `weights/<model>.<tag>.safetensors`: committed and shipped '
        f'inside the wheel (PyPI limit 100 MB), with its per-depth BatchNorm statistics '
        f'(`<model>.<tag>.depths.safetensors`) when it has them. All of them together stay within {WHEEL_BUDGET_MB} '
        f'MB: one more is refused by the release command, which names the way out.',
        'A larger one, and any tag released with `--out-of-wheel` (the baselines of timm\'s architectures), is '
        '`weights/hub/<model>.<tag>.safetensors`, kept out of the wheel'
        + (f'; so are the default tags of {", ".join(large)}, whose files are too large for it' if large else '')
        + f'. Git holds it as byte parts of at most {GIT_PART_MB} MB (`<file>.part1of2`, ...; GitHub refuses files '
        f'over 100 MB), which a clone joins on first use; an installed wheel fetches it from the Hub at the revision '
        f'pinned in the manifest (`hf_hub_id` = `org/name@<commit>`). {hub} Its sha256 is checked like any local '
        f'file\'s. Large files are stored in float16 only when float16 gives the same top-1, except a file over '
        f'{RELEASE_MAX_MB} MB in float32 (too large for one push of this repository), stored in float16 within 0.1 pt '
        f'with the float16 top-1 recorded as the tag\'s.',
        'A clone serves every tag offline; `HF_HUB_OFFLINE=1` makes a missing file fail at once.']) + '\n'


def zoo_card(entries: Sequence[WeightsEntry], runs: Sequence[Dict[str, Any]] = ()) -> str:
    """MODEL_CARD.md: every tag, its numbers, per-depth table, comparison and how to reproduce it."""
    parts = ['# timm-stim model card\n\n<!-- generated by `python benchmarks/docs.py` from weights/manifest.json '
             'and benchmarks/results/*.json; do not edit by hand -->\n', ST_PP_SUMMARY + '\n',
             '## Released weights\n' + zoo_table(entries) + '\n']
    parts += [_zoo_entry(e, runs) for e in entries]
    parts += ['''## Usage
```python
import timm_stim
import timm
model = timm.create_model('cifar_resnet20_stim', pretrained=True)   # the default tag of a model with weights
timm_stim.set_depth(model, budget=0.5)      # the best shipped depth within half the FLOPs (tags that ship statistics)
model = timm.create_model('<model>.<tag>', pretrained=True, num_classes=100)   # fine-tune: new head
```
''' + '\n' + _where_weights(entries) + f'''
## Limitations
{limitations(HEADLINE_RUNS['dataset'])}

## Citation
{BIBTEX}
''']
    return '\n'.join(parts)


def record_comparisons(weights: Optional[Path] = None, results_dir: Optional[Path] = None) -> List[WeightsEntry]:
    """Store in every manifest entry its `comparison_record` from the results JSON as they are now (what its Hub
    card shows); `timm-stim-release` records it for each new tag."""
    runs = load_results(results_dir)

    def change(entries: List[WeightsEntry]) -> Tuple[List[WeightsEntry], Dict[str, bytes]]:
        return [dataclasses.replace(e, comparison=_current_comparison(e, runs, results_dir)) for e in entries], {}
    return update_manifest(change, weights or ROOT / 'weights')


def _current_comparison(e: WeightsEntry, runs: Sequence[Dict[str, Any]],
                        results_dir: Optional[Path] = None) -> Dict[str, Any]:
    """The `comparison_record` of `e` from the results as they are now, as the manifest stores it (JSON types)."""
    return json.loads(json.dumps(comparison_record(e.model, e.dataset, e.train_args.get('epochs'), runs, results_dir)))


def stale_comparisons(entries: Sequence[WeightsEntry], runs: Sequence[Dict[str, Any]],
                      results_dir: Optional[Path] = None) -> List[str]:
    """The tags whose recorded comparison (what their Hub card shows) differs from the results as they are now."""
    return [e.name for e in entries if e.comparison != _current_comparison(e, runs, results_dir)]


# ---------------------------------------------------------------------------------------------- documents
def blocks(entries: Sequence[WeightsEntry], runs: Sequence[Dict[str, Any]],
           results_dir: Optional[Path] = None) -> Dict[str, str]:
    """Every generated block: name -> text."""
    return dict(measured_blocks(results_dir), quickstart=quickstart(entries, results_dir), zoo=zoo_table(entries),
                numbers=headline(runs, results_dir), controls=controls(runs), archs=archs_table(runs),
                finetune=finetune_tables(results_dir))


def update(text: str, bodies: Dict[str, str]) -> str:
    """`text` with each block whose marks it holds replaced by its body; everything else kept."""
    for name, body in bodies.items():
        start, end = marks(name)
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = f'{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}'
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python benchmarks/docs.py', description=__doc__.split('\n')[0])
    p.add_argument('--check', action='store_true', help='exit 1 if a document is stale, write nothing')
    p.add_argument('--record-comparisons', action='store_true',
                   help="store each manifest entry's ST++-versus-baseline numbers from benchmarks/results/ (what its "
                        "Hub card shows), then regenerate")
    args = p.parse_args(argv)
    if args.record_comparisons and not args.check:
        record_comparisons()
    entries = read_manifest(ROOT / 'weights')
    runs = load_results(RESULTS)
    bodies = blocks(entries, runs)
    outputs = {MODEL_CARD: zoo_card(entries, runs)}
    outputs.update({path: update(path.read_text(), bodies) for path in DOCUMENTS})
    stale = [path for path, text in outputs.items() if (path.read_text() if path.is_file() else '') != text]
    if args.check:
        for path in stale:
            print(f'{path} is stale: run python benchmarks/docs.py', file=sys.stderr)
        cards = stale_comparisons(entries, runs)
        if cards:
            print(f'the Hub cards of {", ".join(cards)} are stale (weights/manifest.json `comparison`): run python '
                  f'benchmarks/docs.py --record-comparisons', file=sys.stderr)
        return 1 if stale or cards else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
