"""benchmarks/gpu_campaign.py (issue 27, item 5) on the CPU: the packed data file, the on-device augmentation, the toy
campaign end to end (its step checked against `StimulativeTrainer.forward`), and the time budget.

The data is a synthetic JPEG ImageFolder (noise images, 10 classes), so no test needs CIFAR-10.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import gpu_campaign as gc  # noqa: E402

from timm_stim.data import load_image_tensors  # noqa: E402

pytestmark = pytest.mark.usefixtures('stim_cache')


@pytest.fixture(scope='module')
def packed(tmp_path_factory):
    """A 10-class JPEG folder (13 train, 10 val images per class) packed by `prepare`: (folder, .npz, record)."""
    from PIL import Image
    root = tmp_path_factory.mktemp('jpegs')
    rng = np.random.default_rng(0)
    for split, n in (('train', 13), ('val', 10)):
        for c in range(10):
            d = root / split / f'class{c}'
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] //= 2  # a little class signal
                Image.fromarray(img).save(d / f'{i:04d}.jpg', quality=90)
    out = root / 'data.npz'
    record = gc.main(['prepare', '--data-dir', str(root), '--out', str(out)])
    return root, out, record


def test_packed_file_decodes_to_the_project_tensors(packed):
    root, out, record = packed
    assert record['train']['images'] == 130 and record['test']['images'] == 100
    assert record['train']['distinct_headers'] == 1  # one JPEG header stored for every image
    train, test, info = gc.load_data(out)
    assert info['train']['identical_to_prepare'] and info['test']['identical_to_prepare']
    for data, split in ((train, 'train'), (test, 'validation')):
        ref = load_image_tensors('', str(root), split)
        assert torch.equal(data.images, ref.images) and torch.equal(data.targets, ref.targets)
        assert data.classes == ref.classes


def test_augment_is_pad_crop_then_flip():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    idx, oy, ox = torch.tensor([3, 0, 4]), torch.tensor([0, 4, 8]), torch.tensor([8, 2, 0])
    flip = torch.tensor([False, True, True])
    mean, std = torch.full((1, 3, 1, 1), 10.), torch.full((1, 3, 1, 1), 2.)
    x = gc.augment(images, idx, oy, ox, flip, 4, mean, std)
    assert x.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(images.float(), (4, 4, 4, 4))
    for b in range(3):
        want = padded[idx[b], :, oy[b]:oy[b] + 32, ox[b]:ox[b] + 32]
        want = want.flip(-1) if flip[b] else want
        assert torch.equal(x[b], (want - 10.) / 2.)


@pytest.mark.slow
def test_toy_campaign_end_to_end(packed, tmp_path):
    """`run --toy`: ResNet-20 off / K=1 / K=6, 2 epochs on 128 images; the step equals the trainer's, JSON complete."""
    _, data, _ = packed
    out = tmp_path / 'toy.json'
    report = gc.main(['run', '--toy', '--data', str(data), '--out', str(out)])
    saved = json.loads(out.read_text())
    assert saved['runs'] == report['runs'] and saved['engine'] == 'pieces' and saved['precision'] == 'float32'
    check = saved['selfcheck']
    assert check['ok'] and len(check['steps']) == 3, check
    assert all(s['same_subnetworks'] and s['grad_diff_rel'] < 1e-4 for s in check['steps'])
    assert [r['name'] for r in saved['runs']] == [f'cifar_resnet20-{a}-s0' for a in ('off', 'k1', 'k6')]
    assert saved['skipped'] == [] and not saved['stopped_early']
    for r in saved['runs']:
        assert r['status'] == 'done' and r['epochs_done'] == 2 and not r['partial']
        assert len(r['train_loss']) == 2 and all(math.isfinite(v) for e in r['train_loss'] for v in e.values())
        test = r['test']
        assert len(test['configs']) == 5 and sum(c['full'] for c in test['configs']) == 1  # 4 seeded + full
        sub = [c['top1'] for c in test['configs'] if not c['full']]
        assert test['sub_mean_top1'] == round(sum(sub) / len(sub), 2)
        assert test['full_top1'] == next(c['top1'] for c in test['configs'] if c['full'])
        assert all(c['bn_images'] == 64 for c in test['configs'])
        assert r['wall_s'] >= r['train_wall_s'] > 0
    k6 = saved['runs'][2]
    assert k6['stim']['subnets'] == 6 and k6['stim']['min_scale'] == 0.75 and k6['stim']['space'] == 'st'
    assert k6['flops_per_image']['executed'] > k6['flops_per_image']['specified'] > k6['flops_per_image']['full']
    assert saved['runs'][0]['train_loss'][0]['loss_kl'] == 0 < k6['train_loss'][0]['loss_kl']
    assert set(saved['summary']['cifar_resnet20']) == {'off', 'k1', 'k6'}
    assert 'minus_off' in saved['summary']['cifar_resnet20']['k6']
    assert saved['data']['train_images'] == 128 and saved['data']['test_images'] == 100


@pytest.mark.slow
def test_time_budget_drops_runs_and_stops_epochs(packed, tmp_path):
    """A budget far too small: K=1 is dropped after timing, the baseline trains until the time runs out (partial)."""
    _, data, _ = packed
    out = tmp_path / 'budget.json'
    report = gc.main(['run', '--toy', '--data', str(data), '--out', str(out), '--arms', 'off,k1', '--epochs', '400',
                      '--time-budget', '12', '--no-selfcheck'])
    assert [s['name'] for s in report['skipped']] == ['cifar_resnet20-k1-s0']
    assert report['stopped_early']
    (run,) = report['runs']
    assert run['status'] == 'partial' and run['partial'] and 0 < run['epochs_done'] < 400
    assert run['test']['full_top1'] is not None
    assert report['calibration'][0]['dropped'] == ['cifar_resnet20-k1-s0']
