"""The benchmark tables (`benchmarks/measured.py`): rows from the committed `benchmarks/results/*.json`, a clear line
for a missing or incomplete file, and the documents holding exactly what the renderers write."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
from docs import DOCUMENTS  # noqa: E402
from measured import BLOCKS, RESULTS, marks, render  # noqa: E402


def _load(file: str) -> dict:
    return json.loads((RESULTS / file).read_text())


def _row(text: str, start: str) -> str:
    """The one table row of `text` that starts with `| {start} |`."""
    (row,) = [line for line in text.splitlines() if line.startswith(f'| {start} |')]
    return row


def test_every_block_names_its_json_and_its_command():
    for name, (file, _) in BLOCKS.items():
        if not (RESULTS / file).exists():  # measured by a run still going (elastic.json): said so, tested below
            continue
        data = _load(file)
        first = ' '.join(render(name).split('\n\n')[0].split())  # the first paragraph, folded to 118 characters
        assert first.startswith(f'Source: `benchmarks/results/{file}`'), name
        assert (data.get('command') or data['last_command']) in first, name


def test_parity_and_bn_protocol_tables_come_from_parity_json():
    runs = {(r['arm'], r['precision']): r for r in _load('parity.json')['runs']}
    plain, rec = runs[('plain', 'bf16')]['top1'], runs[('ours_wd_all_no_zero_init', 'bf16')]
    text = render('parity')
    assert _row(text, 'plain PyTorch loop') == f'| plain PyTorch loop | {plain:.2f} |  |'
    wd = runs[('ours_wd_all', 'bf16')]['top1']
    assert _row(text, '+ weight decay on every parameter (`--no-filter-bias-and-bn`)').endswith(
        f'| {wd:.2f} | {wd - plain:+.2f} |')
    fp32 = runs[('ours_wd_all_no_zero_init', 'fp32')]['top1']
    assert f'| **{rec["top1"]:.2f}** (float32: {fp32:.2f}) | {rec["top1"] - plain:+.2f} |' in text
    assert f'- the recommended recipe, bfloat16 minus float32: {rec["top1"] - fp32:+.2f} points' in text
    bn = render('bn-protocol')
    assert _row(bn, 'recommended, bf16') == '| recommended, bf16 | ' + ' | '.join(
        f'{rec["bn_protocols"][k]:.2f}' for k in ('stored', 'train_aug', 'train_plain')) + ' |'
    assert _row(bn, 'earlier recipe').startswith(f'| earlier recipe | {runs[("ours_v0", "bf16")]["top1"]:.2f} |')


def test_precision_table_comes_from_throughput_precision_json():
    rows = {(r['model'], r['mode'], r['layout']): r['img_per_s'] for r in _load('throughput_precision.json')['rows']}
    text = render('precision')
    base = _row(text, 'CIFAR ResNet-56 | baseline')
    assert base == '| CIFAR ResNet-56 | baseline | ' + ' | '.join(
        f'{rows[("cifar_resnet56", "off", lay)][p]:,.0f}' for p, lay in
        (('fp32', '1x1t'), ('bf16', '1x1t'), ('bf16', '1x2t'), ('bf16', '2x1t'))) + ' |'
    off, stpp = rows[('resnet50_stim', 'off', '1x1t')], rows[('resnet50_stim', 'stpp', '1x1t')]
    assert _row(text, 'resnet50_stim').startswith(
        f'| resnet50_stim | baseline / ST++ | {off["fp32"]:.0f} / {stpp["fp32"]:.0f} |')
    mnv3 = rows[('mobilenetv3_large_100_stim', 'off', '1x1t')]
    assert f'{mnv3["fp32"] / mnv3["bf16"]:.2f}' in text and 'mobilenetv3_large_100_stim' in text.split('faster;')[1]


def test_avx2_precision_table_names_its_cpu_and_says_bfloat16_is_slower_there():
    data = _load('throughput_precision_avx2.json')
    rows = {(r['model'], r['mode']): r['img_per_s'] for r in data['rows']}
    text = render('precision-avx2')
    cpu = data['machine'].get('cpu')
    assert (f'Measured on {cpu}, which has no bfloat16 instructions' if cpu else
            'Measured on a CPU without bfloat16 instructions, one thread.') in text
    off, stpp = rows[('cifar_resnet20', 'off')], rows[('cifar_resnet20', 'stpp')]
    assert _row(text, 'CIFAR ResNet-20').startswith(
        f'| CIFAR ResNet-20 | baseline / ST++ | {off["fp32"]:,.0f} / {stpp["fp32"]:,.0f} | '
        f'{off["bf16"]:,.0f} / {stpp["bf16"]:,.0f} |')
    assert 'slower.' in text and 'faster' not in text  # emulated bfloat16 loses on every model


def test_overhead_table_comes_from_overhead_json():
    data = _load('overhead.json')
    text = render('overhead')
    r20 = next(r for r in data['results'] if r['model'] == 'cifar_resnet20')['modes']
    assert _row(text, 'CIFAR ResNet-20') == '| CIFAR ResNet-20 | ' + ' | '.join(
        f'{r20[k]["ratio"]:.2f}× (FLOPs {r20[k]["flops_ratio"]:.2f}×)' for k in ('st', 'stpp_k1', 'stpp_k6')) + ' |'
    over = [m['ratio_over_flops_ratio'] for r in data['results'] for k, m in r['modes'].items() if k != 'off']
    assert f'Measured / FLOPs-implied: {min(over):.2f}-{max(over):.2f} (' in text


def test_data_path_table_comes_from_throughput_json():
    data = _load('throughput.json')
    med = {k: v['median'] for k, v in data['img_per_s'].items()}
    ref = med['plain_imagefolder_dataloader']
    text = render('data-path')
    assert _row(text, 'timm-stim: in-memory uint8 cache + batched tensor augmentation').endswith(
        f'| {med["ours"]:.0f} ({med["ours"] / ref:.2f}×) | {med["ours_channels_last"]:.0f} '
        f'({med["ours_channels_last"] / ref:.2f}×) |')
    assert f'{med["ours_channels_last"] / med["plain_channels_last"]:.2f}× (channels-last)' in text
    assert f'{data["data_only_img_per_s"]["ours_tensor_loader"]:,.0f} (timm-stim)' in text


def test_amplitude_table_comes_from_amplitude_json():
    data = _load('amplitude.json')
    res, other = data['results'], data['baseline_other_seeds']['1']
    text = render('amplitude')
    assert _row(text, 'baseline (`off`), seeds 0 / 1').endswith(
        f'| {100 * res["off"]["top1"]:.1f} / {100 * other["top1"]:.1f} |')
    assert _row(text, '`stpp`, A = 3.16, main CE on A·LN(z) / on raw z').endswith(
        f'| {100 * res["stpp_A3.16_norm"]["top1"]:.1f} / {100 * res["stpp_A3.16_raw"]["top1"]:.1f} |')
    assert f'{data["init_gradients"]["main_ratio_to_raw"]["A10"]:.1f}× (A = 10)' in text


def test_inference_and_import_time_come_from_their_json():
    ratios = [r['ratio'] for r in _load('inference.json')['stim_vs_base']]
    assert f'{min(ratios):.2f}-{max(ratios):.2f}× its timm base model' in render('inference')
    imp = _load('import_time.json')
    assert f'adds {imp["added_ms"]:.1f} ms to `import timm`' in render('import-time')


def test_a_missing_or_incomplete_json_is_said_so(tmp_path):
    assert render('parity', tmp_path) == 'Not measured yet: `benchmarks/results/parity.json` is missing (n/a yet).'
    (tmp_path / 'overhead.json').write_text(json.dumps({'command': 'python benchmarks/overhead.py'}))
    assert render('overhead', tmp_path).startswith(
        'Not shown: `benchmarks/results/overhead.json` lacks what this block needs (KeyError')
    (tmp_path / 'amplitude.json').write_text('{"results": ')
    assert render('amplitude', tmp_path).startswith('Not shown: `benchmarks/results/amplitude.json` cannot be read')
    shutil.copy(RESULTS / 'throughput.json', tmp_path)  # the others render from a folder like the real one
    assert render('data-path', tmp_path) == render('data-path')


@pytest.mark.parametrize('name', list(BLOCKS))
def test_a_document_holds_each_block_as_rendered(name):
    start, end = marks(name)
    texts = [path.read_text() for path in DOCUMENTS]
    assert any(start in text for text in texts), f'no document holds block {name}'
    assert all(f'{start}\n{render(name)}\n{end}' in text for text in texts if start in text), \
        f'block {name} is stale: run python benchmarks/docs.py'


def _elastic_row(depths, share, a, b, c, held, full=False, shipped=True):
    return dict(depths=list(depths), full=full, flops=int(share * 1e8), flops_share=share, top1=a, top1_full_stats=b,
                top1_recalib=c, heldout_top1=held, shipped=shipped)


def test_elastic_table_puts_shipped_statistics_next_to_the_full_networks_and_re_estimated(tmp_path):
    """Per tag: the smallest sub-network with (a) the shipped statistics, (b) the full network's, (c) re-estimated;
    sub-network means with the full network left out; how far (a) is from (c); a missing file is 'n/a yet'."""
    assert 'n/a yet' in render('elastic', tmp_path)
    rows = [_elastic_row((1, 1, 1), 0.3063, 80.15, 66.18, 80.05, 81.0),
            _elastic_row((2, 2, 2), 0.653, 87.0, 84.3, 87.1, 88.0),
            _elastic_row((3, 3, 3), 1.0, 88.22, 88.22, 88.22, 90.0, full=True)]
    data = dict(command='python benchmarks/elastic.py measure', tags={'m_stim.t': dict(
        rows=rows, shipped=3, heldout=dict(size=5000, of=50000))})
    (tmp_path / 'elastic.json').write_text(json.dumps(data))
    text = render('elastic', tmp_path)
    assert _row(text, '`m_stim.t`') == ('| `m_stim.t` | 3 (3) | (1,1,1), 31 % | 80.15 | 66.18 | 80.05 | '
                                        '83.6 / 75.2 / 83.6 |')  # means over (1,1,1) and (2,2,2) only
    assert ('(a) minus (c) over every shipped '
            'sub-network: -0.10 to +0.10 pt, within the 0.3 pt target.') in ' '.join(text.split())
    assert 'Latency' not in text and 'seeds' not in text
    # a configuration without shipped statistics is left out: with no data a user gets (b) there, not (a)
    rows.insert(0, _elastic_row((1, 1, 0), 0.2, 70.0, 10.0, 60.0, 71.0, shipped=False))
    rows[2].update(top1=86.5)  # (2,2,2): (a) 0.6 below (c), outside the target, and named
    data['tags']['m_stim.t'].update(bn_images=10000, recalib_spread=[dict(
        depths=[2, 2, 2], shipped=86.5, mean=87.05, sd=0.07, recalib_by_seed={'2': 87.1, '3': 87.0})])
    (tmp_path / 'elastic.json').write_text(json.dumps(data))
    flat = ' '.join(render('elastic', tmp_path).split())
    assert '| `m_stim.t` | 4 (3) | (1,1,1), 31 % | 80.15 | 66.18 | 80.05 | 83.3 / 75.2 / 83.6 |' in flat
    assert 'outside the 0.3 pt target at 1 of 2: `m_stim.t` (2,2,2) -0.60.' in flat
    assert '`m_stim.t` (2,2,2) over seeds 2, 3: 87.00-87.10 (mean 87.05, sd 0.07), shipped 86.50' in flat
    assert 'shipped with the tag, estimated on 10,000 training-augmented images' in flat
    del rows[0], data['tags']['m_stim.t']['recalib_spread']
    for r, (one, b64) in zip(rows, ((0.4, 9.0), (0.7, 16.0), (1.0, 25.0))):
        r.update(latency_ms=one, latency_ms_b64=b64)
    (tmp_path / 'elastic.json').write_text(json.dumps(data))
    assert '`m_stim.t` full 1.00 / 25.0, (1,1,1) 0.40 / 9.0' in ' '.join(render('elastic', tmp_path).split())


def test_trained_alone_table_shows_every_pair_losses_included_and_n_a_until_measured(tmp_path):
    from trained_alone import PAIRS
    pair = dict(st_model='cifar_resnet20_stim', depths=[1, 1, 1], trained_alone='cifar_resnet8', epochs=30,
                subnetwork=dict(mean=79.5, sd=0.2, n=3), alone=dict(mean=80.1, sd=0.3, n=3), minus=-0.6,
                st_hours=1.66, alone_hours=0.5)
    data = dict(command='python benchmarks/trained_alone.py', note='a note', pairs=[pair],
                cost=dict(epochs=30, st_hours=1.66, alone_hours=dict(cifar_resnet8=0.5, cifar_resnet14=None),
                          alone_total=None))
    (tmp_path / 'trained_alone.json').write_text(json.dumps(data))
    text = render('trained-alone', tmp_path)
    assert ('| `cifar_resnet20_stim` at (1,1,1) | 30 | 79.50 ± 0.20 (n=3) | `cifar_resnet8` | 80.10 ± 0.30 (n=3) | '
            '-0.60 | 1.66 / 0.50 |') in text
    assert sum(line.endswith('| n/a yet |') for line in text.splitlines()) == len(PAIRS) - 1  # every other
    flat = ' '.join(text.split())
    assert 'Negative differences are losses' in flat and 'A note.' in flat
    assert 'ST++ 1.66; alone `cifar_resnet8` 0.50 + `cifar_resnet14` n/a yet = n/a yet.' in flat
    assert 'quiet CPU' not in flat  # no step-cost timing yet
    from trained_alone import step_cost_summary
    rows = [dict(model=m, arm=a, cost_vs_resnet20_baseline=c) for m, a, c in (
        ('cifar_resnet8', 'baseline', 0.4), ('cifar_resnet14', 'baseline', 0.7), ('cifar_resnet20', 'baseline', 1.0),
        ('cifar_resnet20_stim', 'stpp_scale075', 1.5))]
    data.update(timing=dict(rows=rows, precision='bf16'), step_cost=step_cost_summary(dict(rows=rows)))
    assert data['step_cost'] == dict(st=1.5, alone=dict(cifar_resnet8=0.4, cifar_resnet14=0.7, cifar_resnet20=1.0),
                                     alone_total=2.1)
    (tmp_path / 'trained_alone.json').write_text(json.dumps(data))
    flat = ' '.join(render('trained-alone', tmp_path).split())
    assert ('in ResNet-20 baseline epochs: ST++ 1.50; alone 0.40 + 0.70 + 1.00 = 2.10: one ST++ run costs 71 % of '
            'the three.') in flat


def test_upstream_compile_summary_comes_from_its_json():
    data = _load('upstream_compile.json')
    res = {r['route']: r for r in data['results']}
    text = ' '.join(render('upstream-compile').split())
    assert f'an eager step takes {res["eager"]["median_second_half_s"]:.2f} s' in text
    assert f'compiled {res["task.compile"]["unique_graphs"]} graph(s)' in text


def test_signed_difference_never_reads_minus_zero():
    """A difference that rounds to zero is '+0.0' in every table (the controls once printed '-0.0 pt')."""
    from timm_stim.cards import signed
    assert [signed(-0.04, 1), signed(-0.06, 1), signed(0.3), signed(-7.69), signed(-0.001)] == \
        ['+0.0', '-0.1', '+0.30', '-7.69', '+0.00']
