"""The repository's documents (`benchmarks/docs.py`): README.md's layout and quick start run as written, every
generated block current, and each block rendered from its results JSON or the manifest, losses and gaps included."""
import importlib.util
import json
import re
import statistics
import sys
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
sys.path.insert(0, str(REPO / 'benchmarks'))
import docs  # noqa: E402
from measured import marks  # noqa: E402
from timm_stim.cards import HEADLINE_RUNS, setbacks, sub_mean  # noqa: E402
from timm_stim.models.weights import WeightsEntry, read_manifest  # noqa: E402


def _flat(text: str) -> str:
    """`text` with its line breaks and runs of spaces as single spaces (generated prose is folded)."""
    return ' '.join(text.split())


def _python_block(text: str, after: str) -> str:
    section = text[text.index(after):]
    start = section.index('```python\n') + len('```python\n')
    return section[start:section.index('```\n', start)]


# ------------------------------------------------------------------------------------------ README itself
def test_readme_layout_a_timm_user_can_pick_up():
    """What it is, install, quick start, zoo, training, results, in that order, in about 300 lines; loading a tag,
    the depth switch and the fine-tuning command in the first 80; CI's test command; no prose line over 120."""
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 300
    heads = ['## Install', '## Quick start', '## Model zoo', '## Training and reproducing', '## Results']
    assert [text.index(h) for h in heads] == sorted(text.index(h) for h in heads)
    first = '\n'.join(lines[:80])
    assert "create_model('cifar_resnet20_stim', pretrained=True)" in first
    assert 'timm_stim.set_depth(model, budget=' in first and 'timm_stim.at_depth(model' in first
    assert 'timm-stim-train --data-dir path/to/my_images' in first
    assert 'pip install .' in first and 'git clone --depth 1' in first
    assert 'python -m pytest -q tests' in text  # what .ci/run runs
    assert 'python -m pytest -q tests' in (REPO / '.ci' / 'run').read_text()
    code = False
    for line in lines:
        code ^= line.startswith('```')
        assert code or line.startswith(('|', '![')) or len(line) <= 120, line
    for link in re.findall(r'\]\(([^)#]+)', text):
        assert link.startswith('http') or (REPO / link).exists(), link


def test_quick_start_runs_as_written():
    """Load the default tag and switch it by FLOPs budget, as README shows: the configuration and top-1 it states are
    the ones the shipped table picks; until the tag ships statistics README says 'n/a yet' and the budget refuses."""
    import timm
    import timm_stim
    code = _python_block(README.read_text(), '## Quick start')
    assert len(code.splitlines()) <= 8
    scope = {'images': torch.randn(2, 3, 32, 32)}
    entry = docs._default_entry(read_manifest(REPO / 'weights'), docs.QUICKSTART['model'])
    if not entry.depth_stats.get('file'):
        assert 'n/a yet' in code
        with pytest.raises(ValueError):
            exec(compile(code, 'README quick start', 'exec'), scope)
        return
    exec(compile(code, 'README quick start', 'exec'), scope)
    assert scope['logits'].shape == (2, 10)
    depths = tuple(int(d) for d in re.search(r'FLOPs: \(([\d,]+)\)', code).group(1).split(','))
    assert timm_stim.get_depth(scope['model']) == depths
    from timm_stim.elastic import pick_depth
    assert pick_depth(timm.create_model(entry.name, pretrained=True), budget=docs.QUICKSTART['budget']) == depths


def test_pick_a_depth_runs_as_written():
    """README's depth example: a sub-network is another function of the same weights, the FLOPs share it quotes is
    the one `depth_profile` measures, and the full network comes back."""
    import timm
    import timm_stim  # noqa: F401
    code = _python_block(README.read_text(), '### Pick a depth')
    images = torch.randn(2, 3, 32, 32)
    model = timm.create_model('cifar_resnet20_stim', pretrained=True).eval()
    scope = {'images': images, 'model': model, 'timm_stim': timm_stim}
    full = model(images)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a tag without per-depth statistics warns once per configuration
        exec(compile(code, 'README depth example', 'exec'), scope)
    assert scope['logits_small'].shape == (2, 10) and not torch.equal(full, scope['logits_small'])
    assert torch.allclose(model(images), full)  # the full network again
    depths = tuple(int(d) for d in re.search(r'at_depth\(model, \(([\d, ]+)\)\)', code).group(1).split(','))
    share = re.search(r'# (\d+) % of the FLOPs', code).group(1)
    (profile,) = model.depth_profile(depths=[depths])
    assert round(100 * profile['flops_share']) == int(share)


def test_documents_are_current():
    """README.md, benchmarks/README.md, docs/guide.md and MODEL_CARD.md hold what `python benchmarks/docs.py` writes
    (it reads benchmarks/results/*.json and the manifest), every tag's recorded comparison (its Hub card) is what the
    results give now, and README names every released tag."""
    assert docs.main(['--check']) == 0, 'a document or Hub card is stale: run python benchmarks/docs.py (see stderr)'
    readme = README.read_text()
    assert all(f'`{e.name}`' in readme for e in read_manifest(REPO / 'weights'))
    for name in ('quickstart', 'zoo', 'numbers', 'elastic', 'trained-alone', 'controls'):
        assert marks(name)[0] in readme, name


def test_the_package_renders_no_repository_document():
    """README / MODEL_CARD rendering lives in benchmarks/; the package keeps the Hub card (`timm_stim.cards`)."""
    import timm_stim.cards as cards
    assert importlib.util.find_spec('timm_stim.measured') is None
    assert not any(hasattr(cards, f) for f in ('zoo_card', 'readme_with_zoo', 'headline', 'finetune_tables',
                                               'archs_table', 'main'))
    assert callable(cards.model_card) and callable(cards.comparison_record)


def test_update_replaces_blocks_and_keeps_the_rest():
    start, end = marks('zoo')
    text = docs.update(f'# head\n{start}\nold table\n{end}\n## tail\n', {'zoo': 'new', 'other': 'x'})
    assert text == f'# head\n{start}\nnew\n{end}\n## tail\n'
    assert docs.update('no marks here', {'zoo': 'new'}) == 'no marks here'


# -------------------------------------------------------------------------------------------- the zoo
def _entry(model, tag, file, depths, hub='', train_args=None, depth_stats=None):
    return WeightsEntry(model=model, tag=tag, file=file, sha256='0' * 64, num_classes=10, dataset='cifar10',
                        metrics={'top1': 88.0}, depths=depths, hf_hub_id=hub, stats={'params_m': 0.27},
                        train_args=train_args or {}, depth_stats=depth_stats or {}, command='timm-stim-train x')


def _rows(small, bn=None):
    rows = [dict(depths=[1, 1, 1], full=False, top1=small, flops=25e6, flops_share=0.3063),
            dict(depths=[2, 2, 2], full=False, top1=small + 6, flops=53e6, flops_share=0.653),
            dict(depths=[3, 3, 3], full=True, top1=88.0, flops=81e6, flops_share=1.0)]
    return [dict(r, bn=bn if not r['full'] else 'own') for r in rows] if bn else rows


def test_zoo_says_where_each_file_is_and_what_the_smallest_depth_gives_with_no_data():
    base = _entry('cifar_resnet20', 'a', 'cifar_resnet20.a.safetensors', _rows(30.0))
    shipped = _entry('cifar_resnet20_stim', 'b', 'hub/cifar_resnet20_stim.b.safetensors', _rows(80.15, 'shipped'),
                     hub='timm-stim/cifar_resnet20_stim.b@abc123', train_args=dict(holdout=5000))
    waiting = _entry('resnet18_stim', 'c', 'resnet18_stim.c.safetensors', _rows(70.0))
    text = docs.zoo_table([base, shipped, waiting])
    assert '| `cifar_resnet20.a` | 88.00 | 33.00 | - | 0.27 | wheel |' in text  # sub-network mean: full left out
    assert '| `cifar_resnet20_stim.b` | 88.00 | 83.15 | 80.15 (1,1,1) | 0.27 | git parts + Hub |' in text
    assert '| `resnet18_stim.c` | 88.00 | 73.00 | n/a yet | 0.27 | wheel |' in text
    flat = _flat(text)
    assert '1 tag(s) pushed to the Hub' in flat and '2 of the 3 tags were trained on all training images' in flat
    assert 'n/a yet: not re-released' in flat and '-: a base-model tag' in flat  # the legend of the marks shown
    assert 'Nothing is on the Hub yet' in _flat(docs.zoo_table([base]))
    assert 'n/a yet' not in _flat(docs.zoo_table([base, shipped]))  # no mark left unexplained, none explained unused
    card = docs.zoo_card([base, shipped, waiting])
    assert 'so are the default tags of `cifar_resnet20_stim`' in _flat(card) and 'timm-stim-train x' in card
    assert docs.zoo_table([]).startswith('No trained checkpoint has been released yet')


def test_quick_start_number_is_what_the_budget_picks_with_no_data(tmp_path):
    """The configuration `set_depth(model, budget=...)` picks (best held-out top-1 among the shipped rows within the
    FLOPs share) and its shipped-statistics top-1, from elastic.json; 'n/a yet' without it."""
    entries = [_entry('cifar_resnet20_stim', 'b', 'f', _rows(80.0))]
    assert 'n/a yet' in docs.quickstart(entries, tmp_path)
    rows = [dict(depths=[1, 1, 1], full=False, flops_share=0.3063, heldout_top1=81.0, top1=80.15, shipped=True),
            dict(depths=[1, 1, 2], full=False, flops_share=0.4219, heldout_top1=84.0, top1=83.0, shipped=True),
            dict(depths=[2, 1, 1], full=False, flops_share=0.4219, heldout_top1=85.0, top1=84.0, shipped=False),
            dict(depths=[3, 3, 3], full=True, flops_share=1.0, heldout_top1=90.0, top1=88.22, shipped=True)]
    (tmp_path / 'elastic.json').write_text(json.dumps({'tags': {'cifar_resnet20_stim.b': {'rows': rows}}}))
    code = docs.quickstart(entries, tmp_path)
    assert f'budget={docs.QUICKSTART["budget"]})' in code and '(1,1,1), 31 %' in code and '80.15 %' in code
    assert docs.budget_pick(rows, 0.5)['depths'] == [1, 1, 2]  # the unshipped (2,1,1) is not offered
    assert docs.budget_pick(rows, 0.3) is None  # below the smallest configuration: set_depth raises ValueError
    assert len(code.splitlines()) <= 8 and all(len(line) <= 120 for line in code.splitlines())


# ---------------------------------------------------------------------------------- results and comparisons
def test_readme_headline_states_st_pp_against_the_baseline_either_way(tmp_path):
    """The README's first numbers come from the results runs: every arm and schedule against the baseline, losses
    included, and the chosen ST++ arm at equal epochs (saying it was chosen on the test split), at equal wall-clock
    (epochs from arm_cost.json), as a fine-tune and at the longer schedule; what has not finished is said so."""
    chosen = HEADLINE_RUNS['chosen']

    def run(arm, seed, top1, sub, epochs=30):
        return dict(model='cifar_resnet20' + ('' if arm == 'baseline' else '_stim'), dataset='cifar10', arm=arm,
                    seed=seed, epochs=epochs, top1=top1, robustness=dict(sub_mean=sub), results_file='cifar10.json')
    (tmp_path / 'arm_cost.json').write_text(json.dumps({'rows': [dict(arm='baseline', cost_vs_baseline=1.0),
                                                                 dict(arm=chosen, cost_vs_baseline=1.5)]}))
    assert docs.headline([], tmp_path).startswith('No finished baseline run yet')
    runs = [run('baseline', 0, 87.0, 57.0), run('baseline', 1, 86.0, 55.0), run(chosen, 0, 85.5, 75.0),
            run(chosen, 1, 85.5, 77.0), run('droppath01', 0, 88.0, 70.0, epochs=99)]  # not the equal wall-clock
    text = docs.headline(runs, tmp_path)
    assert '| `baseline` | 30 | 2 | 86.50 ± 0.71 | - | 56.0 ± 1.4 | - | 1.00 |' in text  # seed spread of both
    assert f'| `{chosen}` | 30 | 2 | 85.50 ± 0.00 | -1.00 | 76.0 ± 1.4 | +20.0 | 1.50 |' in text
    flat = _flat(text)
    assert (f'equal epochs (30): `{chosen}` ({HEADLINE_RUNS["chosen_on"]}) minus the baseline: -1.00 pt top-1 (seed '
            f'sd 0.00 over 2 vs 0.71 over 2), +20.0 pt sub-network mean') in flat
    assert 'which is the test set' in HEADLINE_RUNS['chosen_on']
    assert 'equal wall-clock (the other arms given 45 epochs' in flat and 'not finished yet' in flat
    runs += [run('baseline', 0, 88.5, 58.0, epochs=45), run(f'ft_{chosen}', 0, 86.0, 80.0, epochs=5)]
    flat = _flat(docs.headline(runs, tmp_path))
    assert f'`{chosen}` minus `baseline`: -3.00 pt top-1 (seed sd 0.00 over 2 vs one seed), +18.0 pt' in flat
    assert f'`ft_{chosen}` (5 epochs) minus `{chosen}` from scratch: +0.50 pt top-1' in flat
    assert '| `baseline` | 45 | 1 | 88.50 | - |' in docs.headline(runs, tmp_path)
    longer = HEADLINE_RUNS['long']
    assert f'equal epochs, longer ({longer}): not finished yet' in flat and 'crossover lies' not in flat
    below = runs + [run('baseline', 0, 88.5, 58.0, epochs=longer), run(chosen, 0, 88.4, 80.0, epochs=longer)]
    assert (f'equal epochs, longer ({longer}): `{chosen}` minus the baseline: -0.10 pt top-1 (one seed each), +22.0 pt '
            f'sub-network mean; no crossover observed within {longer} epochs') in _flat(docs.headline(below, tmp_path))
    above = runs + [run('baseline', 0, 88.0, 58.0, epochs=longer), run(chosen, 0, 88.4, 80.0, epochs=longer)]
    assert (f'+0.40 pt top-1 (one seed each), +22.0 pt sub-network mean; ST++ passed the baseline between 30 and '
            f'{longer} epochs') in _flat(docs.headline(above, tmp_path))
    start, end = marks('numbers')
    assert docs.update(f'a {start}old{end} b', {'numbers': docs.headline(runs)}) == \
        f'a {start}\n{docs.headline(runs)}\n{end} b'


def test_controls_say_what_share_of_the_st_pp_gain_each_explains():
    c = docs.CONTROLS

    def run(arm, seed, top1, sub):
        return dict(model=c['model'] + '_stim', dataset='cifar10', arm=arm, seed=seed, epochs=c['epochs'], top1=top1,
                    robustness=dict(sub_mean=sub), results_file='cifar10.json')
    runs = [run('baseline', 0, 76.0, 61.0), run('baseline', 1, 77.0, 62.0), run(c['chosen'], 0, 81.0, 78.0),
            run(c['chosen'], 1, 81.5, 78.0), run('main_normalized', 0, 78.0, 60.0),
            run('main_normalized', 1, 78.0, 60.0)]
    text = docs.controls(runs)
    gain, diff = 81.25 - 76.5, 78.0 - 76.5
    assert f'| `main_normalized` | 2 | 78.00 ± 0.00 | +1.50 | {100 * diff / gain:.0f} % | 60.0 ± 0.0 | -1.5 |' in text
    assert '| `baseline_lr005` | n/a yet |' in text and f'{c["chosen"]}`) minus the baseline: +4.75 pt' in _flat(text)
    assert f'{100 * diff / gain:.0f} % of the ST++ gain' in _flat(text)
    assert 'n/a yet' in docs.controls([])


def test_readme_finetune_tables_come_from_finetune_json(tmp_path):
    """One table per architecture; each tag's fine-tune, and random init once per distinct --stim-* setting; a
    comparison of tags fine-tuned with different --stim-* settings says so."""
    assert docs.finetune_tables(tmp_path).startswith('No fine-tuning results yet')

    def arm(top1s, stim, precision='bfloat16'):
        res = [dict(depths=d, full=i == 0, flops=f, top1=t) for i, (d, f, t) in
               enumerate(zip([[3, 3, 3], [1, 1, 1]], [62e6, 19e6], top1s))]
        return dict(stim=stim, precision=precision, results=res)
    st = ['--stim-mode', 'stpp']
    report = dict(settings=dict(epochs=1, input_size=[1, 28, 28]), results={
        'cifar_resnet20_stim.a': dict(pretrained=arm([90, 80], st), scratch=arm([83, 71], st)),
        'cifar_resnet20.b': dict(pretrained=arm([89, 78], st), scratch=arm([84, 72], st)),
        'mobilenetv3_large_100_stim.c': dict(pretrained=arm([91, 85], st, 'float32'), scratch=arm([80, 70], st))})
    (tmp_path / 'finetune.json').write_text(json.dumps(report))
    text = docs.finetune_tables(tmp_path, recipes={'cifar_resnet20_stim.a': ('stpp', 30),
                                                   'cifar_resnet20.b': ('off', None),
                                                   'mobilenetv3_large_100_stim.c': ('stpp', 30)})
    assert '- `cifar_resnet20_stim.a` minus random initialisation: +7.00 to +9.00 pt' in text
    assert '- `cifar_resnet20_stim.a` minus the baseline tag `cifar_resnet20.b`: +1.00 to +2.00 pt\n' in text
    assert '- `mobilenetv3_large_100_stim.c` minus random initialisation: +11.00 to +15.00 pt' in text
    assert 'minus the baseline tag `cifar_resnet20_stim.a`' not in text and 'c` minus the baseline' not in text
    assert text.count('| cifar_resnet20: start | precision | full (62 MFLOPs) | 1,1,1 (19 MFLOPs) |') == 1
    assert '| `cifar_resnet20_stim.a` | bfloat16 | 90.00 | 80.00 |' in text
    assert '| random initialisation (`--stim-mode stpp`) | bfloat16 | 83.00 | 71.00 |' in text
    assert '84.00' not in text  # the same scratch setting of the same architecture is shown once
    assert '| `mobilenetv3_large_100_stim.c` | float32 | 91.00 | 85.00 |' in text
    assert text.count('| random initialisation') == 2 and 'different `--stim-*` settings:' not in text
    # an ST tag is compared only with the baseline tag of the same training epochs
    report['results']['cifar_resnet20.d'] = dict(pretrained=arm([88, 70], st), scratch=arm([84, 72], st))
    (tmp_path / 'finetune.json').write_text(json.dumps(report))
    text = docs.finetune_tables(tmp_path, recipes={'cifar_resnet20_stim.a': ('stpp', 100),
                                                   'cifar_resnet20.b': ('off', 100), 'cifar_resnet20.d': ('off', 30)})
    assert '- `cifar_resnet20_stim.a` minus the baseline tag `cifar_resnet20.b`: +1.00 to +2.00 pt' in text
    assert 'minus the baseline tag `cifar_resnet20.d`' not in text
    # fine-tuned with other --stim-* settings than the baseline tag: said so
    report['results']['cifar_resnet20_stim.a']['pretrained']['stim'] = st + ['--stim-min-scale', '0.75']
    (tmp_path / 'finetune.json').write_text(json.dumps(report))
    text = docs.finetune_tables(tmp_path, recipes={'cifar_resnet20_stim.a': ('stpp', 100),
                                                   'cifar_resnet20.b': ('off', 100)})
    assert ('minus the baseline tag `cifar_resnet20.b`: +1.00 to +2.00 pt (fine-tuned with different `--stim-*` '
            'settings: `--stim-mode stpp --stim-min-scale 0.75` against `--stim-mode stpp`') in text


def test_readme_archs_table_compares_each_architecture_with_its_own_baseline():
    assert docs.archs_table([]).startswith('No finished run of another architecture yet')
    runs = [dict(model=m, dataset='cifar10', arm=a, seed=0, epochs=30, top1=t, train_hours=h,
                 robustness=dict(sub_mean=s), results_file='cifar10.json')
            for m, a, t, s, h in [('resnet18_stim', 'baseline', 84.5, 80.0, 1.0),
                                  ('resnet18_stim', 'stpp_scale075', 84.0, 83.0, 1.8),
                                  ('cifar_resnet20', 'baseline', 87.0, 57.0, 1.3)]]  # the headline's, not here
    text = docs.archs_table(runs)
    assert '| resnet18 | `baseline` | 30 | 1 | 84.50 | - | 80.0 | - | 1.00 |' in text
    assert '| resnet18 | `stpp_scale075` | 30 | 1 | 84.00 | -0.50 | 83.0 | +3.0 | 1.80 |' in text
    assert 'cifar_resnet20' not in text
    assert 'Falls of' not in text  # no curves, nothing to say


def test_setbacks_name_a_run_whose_top1_fell_under_the_shared_recipe():
    runs = [dict(model='mobilenetv3_large_100_stim', dataset='cifar10', arm='baseline', seed=0, epochs=6, top1=70.0,
                 curve_top1=[40.0, 32.0, 27.0, 39.0, 41.0, 70.0]),
            dict(model='mobilenetv3_large_100_stim', dataset='cifar10', arm='stpp_scale075', seed=0, epochs=6,
                 top1=60.0, curve_top1=[50.0, 46.0, 47.0, 52.0, 55.0, 60.0]),  # a 4-pt dip: not worth a line
            dict(model='resnet18_stim', dataset='cifar10', arm='baseline', seed=1, epochs=6, top1=60.0,
                 curve_top1=[50.0, 55.0, 44.0, 45.0, 46.0, 47.0])]
    assert setbacks(runs, 'mobilenetv3_large_100', 'cifar10') == [
        '`baseline` seed 0: validation top-1 fell from 40.00 (epoch 1) to 27.00 (epoch 3) and passed 40.00 again '
        'at epoch 5 of 6.']
    assert setbacks(runs, 'resnet18', 'cifar10') == [
        '`baseline` seed 1: validation top-1 fell from 55.00 (epoch 2) to 44.00 (epoch 3) and never passed it again '
        'in 6 epochs.']
    assert setbacks(runs, 'resnet18', 'cifar10', epochs=30) == []
    text = docs.archs_table([dict(r, results_file='cifar10.json') for r in runs])
    assert '- mobilenetv3_large_100 `baseline` seed 0: validation top-1 fell from 40.00' in text
    assert '- resnet18 `baseline` seed 1:' in text and 'stpp_scale075` seed 0: validation' not in text


def test_sub_network_mean_is_one_thing_everywhere():
    """The mean over the sub-networks with the full network left out: the zoo's (from a tag's rows), the arms
    tables' (`robustness.sub_mean` of a run's sweep) and the cards' agree on the same sweep."""
    rows = _rows(30.0)
    assert sub_mean(rows) == statistics.fmean([30.0, 36.0])
    data = json.loads((REPO / 'benchmarks' / 'results' / 'cifar10.json').read_text())
    run = next(r for r in data['runs'] if (r.get('robustness') or {}).get('configs'))
    configs = run['robustness']['configs']  # the full network is the sweep's last configuration
    assert run['robustness']['sub_mean'] == pytest.approx(statistics.fmean(c['top1'] for c in configs[:-1]), abs=0.01)
