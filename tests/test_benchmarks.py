"""The benchmark scripts' own logic (their numbers are in benchmarks/results/, not asserted here)."""
import json
import sys
from pathlib import Path

import pytest
from timm_stim.models import weights as W

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))


def test_finetune_benchmark_keeps_other_tags_whatever_their_precision(tmp_path):
    """benchmarks/finetune.py measuring one tag keeps the others measured under the same schedule, each with its
    own precision (MobileNetV3 fine-tunes in float32), and drops results of another schedule."""
    import finetune
    settings = dict(epochs=1, lr=0.02, input_size=[1, 28, 28])
    old = dict(command='c', commit='x', settings=dict(settings, precision='bfloat16'),
               results={'a.t': dict(pretrained=dict(results=[]), scratch=dict(results=[])), 'b.t': {}})
    out = tmp_path / 'finetune.json'
    out.write_text(json.dumps(old))
    kept = finetune.earlier_results(out, settings, ['b.t'])
    assert list(kept) == ['a.t']
    assert kept['a.t']['pretrained'] == dict(results=[], command='c', commit='x', precision='bfloat16')
    assert finetune.earlier_results(out, dict(settings, epochs=2), ['b.t']) == {}
    assert list(finetune.earlier_results(out, dict(settings, arms='reworded', threads=2), ['b.t'])) == ['a.t']


def test_verify_weights_says_which_tags_need_the_hub(tmp_path):
    """benchmarks/verify_weights.py: a tag whose file is kept out of an install (weights/hub/, neither the file nor
    its committed parts there) is reported as needing the Hub, not measured and not failed."""
    import verify_weights
    entry = W.WeightsEntry(model='resnet50_stim', tag='t', file='hub/resnet50_stim.t.safetensors', sha256='0' * 64,
                           num_classes=10, dataset='cifar10', metrics=dict(top1=90.0))
    where = dict(path=tmp_path, cwd=tmp_path, weights=tmp_path / 'weights')
    res = verify_weights.measure(entry, where, verify_weights.parse_args([]))
    assert res['status'] == 'needs the Hub' and 'timm-stim/resnet50_stim.t' in res['why']


def test_resnet20_robustness_panels_split_stage1_from_what_a_user_would_train_instead():
    """benchmarks/cifar10.py: the README's robustness figure puts every 30-epoch arm in the stage-1 panel, and the
    chosen ST++ arm (any schedule, its fine-tune) with the baselines and stochastic depth in the other."""
    import cifar10
    groups = {f'{arm} e{ep}': [dict(arm=arm, epochs=ep)] for arm, ep in [
        ('baseline', 30), ('st', 30), ('stpp_scale075', 30), ('baseline', 46), ('droppath01', 46),
        ('ft_stpp_scale075', 5), ('stpp_scale075', 100), ('stpp_amp2', 30)]}
    first, instead = cifar10.headline_panels(groups, 'stpp_scale075', 30).values()
    assert list(first) == ['baseline e30', 'st e30', 'stpp_scale075 e30', 'stpp_amp2 e30']
    assert list(instead) == ['baseline e30', 'stpp_scale075 e30', 'baseline e46', 'droppath01 e46',
                             'ft_stpp_scale075 e5', 'stpp_scale075 e100']


def test_cifar10_run_sweeps_a_finished_run_once_and_then_launches_nothing(tmp_path, monkeypatch, capsys):
    """benchmarks/cifar10.py run: a run that ends its epochs is swept in the same slot (robustness.json, what collect
    reads); on a finished run (a queue that lists it again) it only sweeps, if it has not, and never trains."""
    import argparse
    import subprocess
    import cifar10
    run_dir = tmp_path / 'cifar10' / cifar10._name('cifar_resnet20', 'baseline', 0, 2)
    launched = []

    def fake_run(cmd, **kwargs):
        launched.append(cmd[2])  # the module: timm_stim.train or timm_stim.validate
        if cmd[2] == 'timm_stim.train':
            (run_dir / 'summary.csv').write_text('epoch,eval_top1\n0,50.0\n1,60.0\n')
        else:
            assert kwargs['env']['OMP_NUM_THREADS'] == '1' and cmd[cmd.index('--results-file') + 1] == str(
                run_dir / 'robustness.json')
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(subprocess, 'run', fake_run)
    args = argparse.Namespace(runs_dir=str(tmp_path), model='cifar_resnet20', arm='baseline', seed=0, epochs=2,
                              threads=1)
    assert cifar10.run(args) == 0 and launched == ['timm_stim.train', 'timm_stim.validate']
    launched.clear()
    assert cifar10.run(args) == 0 and launched == ['timm_stim.validate']  # the sweep did not write its file
    assert 'has finished its 2 epochs: sweeping' in capsys.readouterr().out
    (run_dir / 'args.yaml').write_text('epochs: 2\n')
    cifar10.status(args)
    assert 'not swept yet' in capsys.readouterr().out
    (run_dir / 'robustness.json').write_text('{}')
    cifar10.status(args)
    assert capsys.readouterr().out.rstrip().endswith('  swept')
    launched.clear()
    assert cifar10.run(args) == 0 and launched == []
    assert 'has finished its 2 epochs: nothing to run' in capsys.readouterr().out


def test_cifar10_queue_runs_each_spec_in_order_and_goes_on_after_a_failure(tmp_path, monkeypatch, capsys):
    """benchmarks/cifar10.py queue: the runs one after another, each launched (or resumed) as `run` would; a failed
    run is counted and the next one still starts; a spec that is not ARM:MODEL:SEED:EPOCHS is refused up front."""
    import subprocess
    import pytest
    import cifar10
    launched = []

    def fake_run(cmd, **kwargs):
        launched.append(cmd[cmd.index('--experiment') + 1])
        return subprocess.CompletedProcess(cmd, 1 if len(launched) == 1 else 0)
    monkeypatch.setattr(subprocess, 'run', fake_run)
    with pytest.raises(SystemExit) as e:
        cifar10.main(['--runs-dir', str(tmp_path), 'queue', 'baseline:cifar_resnet20:0:2',
                      'stpp_scale075:cifar_resnet20_stim:1:2'])
    assert e.value.code == 1  # one run failed
    assert launched == ['cifar_resnet20-baseline-s0-e2', 'cifar_resnet20_stim-stpp_scale075-s1-e2']
    assert 'end (exit code 1)' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cifar10.main(['--runs-dir', str(tmp_path), 'queue', 'baseline:cifar_resnet20:zero:2'])
    assert e.value.code == 2 and 'want ARM:MODEL:SEED:EPOCHS' in capsys.readouterr().err


def test_cifar10_collect_keeps_recorded_runs_whose_directories_are_gone(tmp_path, monkeypatch, capsys):
    """benchmarks/cifar10.py collect on a machine laid anew: the committed results' runs that have no directory here
    stay in the file; a run that is here replaces its recorded entry."""
    import cifar10
    out = tmp_path / 'cifar10.json'
    out.write_text(json.dumps(dict(runs=[dict(run='gone-s0-e30', top1=87.0), dict(run='here-s0-e30', top1=None)])))
    monkeypatch.setattr(cifar10, 'OUT', out)
    runs = cifar10._keep_recorded([dict(run='here-s0-e30', top1=88.0), dict(run='new-s0-e30', top1=80.0)])
    assert [(r['run'], r['top1']) for r in runs] == [('gone-s0-e30', 87.0), ('here-s0-e30', 88.0),
                                                     ('new-s0-e30', 80.0)]
    assert 'kept from cifar10.json (no run directory here): gone-s0-e30' in capsys.readouterr().out
    out.unlink()
    assert cifar10._keep_recorded([dict(run='a')]) == [dict(run='a')]


def test_cifar10_run_trains_in_float32_where_the_cpu_has_no_bfloat16(tmp_path, monkeypatch):
    """benchmarks/cifar10.py run: the recipe's bfloat16 autocast only where the CPU has bfloat16 instructions; on an
    AVX2 CPU ('auto') the launch adds --no-amp (the launch itself records its precision, see test_protocol)."""
    import argparse
    import subprocess
    import cifar10
    cmd = cifar10.train_command('cifar_resnet20', 'baseline', 0, 2, tmp_path / 'r')
    mb3 = cifar10.train_command('mobilenetv3_large_100_stim', 'baseline', 0, 2, tmp_path / 'r')
    assert '--no-amp' in mb3 and cifar10.launch_precision(mb3, 'float32') == []  # its own float32 exception
    assert cifar10.launch_precision(cmd, 'float32') == ['--no-amp']
    assert cifar10.launch_precision(cmd, 'recipe') == []
    for native, expected in ((True, []), (False, ['--no-amp'])):
        monkeypatch.setattr(cifar10, 'native_cpu_bfloat16', lambda native=native: native)
        assert cifar10.launch_precision(cmd, 'auto') == expected
    launched = []
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **kw: launched.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    args = argparse.Namespace(runs_dir=str(tmp_path), model='cifar_resnet20', arm='baseline', seed=0, epochs=2,
                              threads=1, precision='auto')
    assert cifar10.run(args) == 1 and launched[0][-1] == '--no-amp'


def test_finetune_benchmark_one_arm_keeps_the_other_arm_of_the_same_tag(tmp_path):
    """benchmarks/finetune.py --arm: measuring one arm of a tag (two processes, one per core) keeps the other arm
    already measured under the same schedule, and the README's tables wait until both arms are there."""
    import finetune
    from docs import finetune_tables
    settings = dict(epochs=1, lr=0.02, input_size=[1, 28, 28])
    out = tmp_path / 'finetune.json'
    out.write_text(json.dumps(dict(command='c', commit='x', settings=settings, results={
        'a.t': dict(scratch=dict(results=[], precision='bfloat16')), 'b.t': dict(pretrained=dict(results=[]))})))
    kept = finetune.earlier_results(out, settings, ['a.t'], ['pretrained'])
    assert kept == {'a.t': {'scratch': dict(results=[], precision='bfloat16', command='c', commit='x')},
                    'b.t': {'pretrained': dict(results=[], command='c', commit='x', precision=None)}}
    assert finetune.earlier_results(out, settings, ['a.t'], ['scratch']) == {'b.t': kept['b.t']}
    assert finetune.parse_args(['a.t', '--arm', 'scratch']).arms == ['scratch']
    assert finetune.parse_args(['a.t']).arms is None
    assert 'a.t' not in finetune_tables(tmp_path, recipes={})


def test_elastic_report_updates_merge_tags_written_by_another_measurement(tmp_path, monkeypatch):
    """`measure`, `latency` and `spread` change elastic.json as it is when they finish (under a lock): a tag another
    process wrote meanwhile survives, and a change sees the file's current content, not what it read at start."""
    import argparse
    import elastic
    monkeypatch.setattr(elastic, 'OUT', tmp_path / 'elastic.json')
    args = argparse.Namespace(threads=1)
    elastic._update_tag(args, 'a', lambda tags: tags.__setitem__('a', {'rows': [1]}))
    (tmp_path / 'elastic.json').write_text(json.dumps(dict(json.loads((tmp_path / 'elastic.json').read_text()),
                                                           tags={'a': {'rows': [1]}, 'b': {'rows': [2]}})))
    elastic._update_tag(args, 'a', lambda tags: tags['a'].update(latency={'threads': 1}))
    tags = json.loads((tmp_path / 'elastic.json').read_text())['tags']
    assert tags == {'a': {'rows': [1], 'latency': {'threads': 1}}, 'b': {'rows': [2]}}


def test_elastic_reestimate_keeps_latency_and_spread_and_moves_shipped(tmp_path, monkeypatch):
    """`measure --reestimate` replaces a tag's rows with the new ones but keeps what does not depend on the shipped
    statistics (latency, the spread of (c)), points the spread's `shipped` at the new (a), and keeps the old command."""
    import elastic
    monkeypatch.setattr(elastic, 'OUT', tmp_path / 'elastic.json')
    old = dict(rows=[dict(depths=[1, 1], top1=70.0, shipped=True)], command='measure', bn_images=2000,
               latency=dict(threads=1), recalib_spread=[dict(depths=[1, 1], shipped=70.0, recalib_by_seed={'2': 70.3})])
    (tmp_path / 'elastic.json').write_text(json.dumps(dict(tags={'t': old})))
    seen = {}

    def fake(name, max_all, bn_images, prior):
        seen.update(name=name, bn_images=bn_images, prior=prior)
        return dict(tag=name, rows=[dict(depths=[1, 1], top1=70.4, shipped=True)], bn_images=bn_images)
    monkeypatch.setattr(elastic, 'measure_tag', fake)
    elastic.main(['measure', '--reestimate', '--tags', 't'])
    assert seen == dict(name='t', bn_images=elastic.SHIPPED_IMAGES, prior=old)
    tag = json.loads((tmp_path / 'elastic.json').read_text())['tags']['t']
    assert tag['rows'] == [dict(depths=[1, 1], top1=70.4, shipped=True)] and tag['latency'] == dict(threads=1)
    assert tag['recalib_spread'][0]['shipped'] == 70.4 and tag['recalib_spread'][0]['recalib_by_seed'] == {'2': 70.3}
    assert tag['earlier_commands'] == ['measure'] and tag['bn_images'] == elastic.SHIPPED_IMAGES
    with pytest.raises(SystemExit, match='measure it first'):
        elastic.main(['measure', '--reestimate', '--tags', 'unknown'])


def test_elastic_measure_config_reuses_what_does_not_depend_on_the_shipped_statistics(monkeypatch):
    """(b) and (c) of an earlier measurement are kept and only (a) is estimated again, on `bn_images` images; without
    an earlier row all three are measured ((c) on RECALIB_IMAGES); the full network is never estimated."""
    import elastic
    calls = []
    monkeypatch.setattr(elastic.timm_stim, 'recalibrate_bn', lambda m, batches, n, depths: calls.append((n, depths)))

    class FakeBench:
        heldout, test = 'heldout', 'test'

        def bn_batches(self, seed):
            return seed

        def top1(self, model, loader, depths):
            return 90.0 + len(calls) + (0.5 if loader == 'heldout' else 0.0)
    bench, d = FakeBench(), (1, 1, 1)
    row = elastic.measure_config(None, bench, d, False, 10000, dict(top1_full_stats=60.0, top1_recalib=80.0))
    assert calls == [(10000, d)]
    assert row == dict(top1_full_stats=60.0, top1_recalib=80.0, heldout_top1=91.5, top1=91.0, bn_images=10000)
    calls.clear()
    row = elastic.measure_config(None, bench, d, False, 10000)
    assert calls == [(elastic.RECALIB_IMAGES, d), (10000, d)]
    assert (row['top1_full_stats'], row['top1_recalib'], row['top1']) == (90.0, 91.0, 92.0)
    calls.clear()
    full = dict(heldout_top1=95.0, top1=88.0, top1_full_stats=88.0, top1_recalib=88.0)
    assert elastic.measure_config(None, bench, (3, 3, 3), True, 10000, full) == full and calls == []


def test_interleaved_rates_go_round_robin_and_group_by_model_and_arm(monkeypatch):
    """arm_cost.py and trained_alone.py timing time every (model, arm) once per round, in order, so that a drift of
    the machine touches all alike; each pair gets its own list of rates, one per round."""
    import arm_cost
    order = []

    def fake(point, model, precision, mode, layout, steps):
        order.append((model, json.loads(mode)['mode']))
        return float(len(order))
    monkeypatch.setattr(arm_cost.throughput, 'sweep_point', fake)
    pairs = [('m8', 'baseline'), ('m20', 'stpp_scale075')]
    rates = arm_cost.interleaved_rates(pairs, 'fp32', 5, 2, 'data')
    assert order == [('m8', 'off'), ('m20', 'stpp')] * 2
    assert rates == {('m8', 'baseline'): [1.0, 3.0], ('m20', 'stpp_scale075'): [2.0, 4.0]}


def test_trained_alone_json_is_what_the_collected_runs_give():
    """trained_alone.json pairs and cost are recomputed from the committed cifar10.json: a collect that adds a run
    (another seed, a longer schedule) without `python benchmarks/trained_alone.py` fails here, not in a card."""
    import trained_alone
    runs = json.loads((trained_alone.RESULTS / 'cifar10.json').read_text())['runs']
    data = json.loads(trained_alone.OUT.read_text())
    assert data['pairs'] == trained_alone.compare(runs), 'stale: run python benchmarks/trained_alone.py'
    assert data['cost'] == trained_alone.cost(runs)
    (p,) = [p for p in data['pairs'] if p['depths'] == [1, 1, 1] and p['epochs'] == 30]
    assert p['trained_alone'] == 'cifar_resnet8' and p['subnetwork']['n'] == p['alone']['n'] == 3  # issue 27's seeds
