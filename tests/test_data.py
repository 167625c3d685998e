"""The fast small-image data path: cache, batch augmentation, DDP sharding, resumable position, Fashion-MNIST."""
import os
from pathlib import Path

import pytest
import torch

from timm_stim import data as D

from conftest import cifar10_path

REPO = Path(__file__).resolve().parents[1]
CIFAR = cifar10_path()  # $TIMM_STIM_CIFAR10, else ../shared/data/cifar10 (conftest)
needs_cifar = pytest.mark.skipif(not (CIFAR / 'train').is_dir(), reason=f'CIFAR-10 not at {CIFAR}')
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _toy(n=40, c=3, hw=8, classes=4):
    g = torch.Generator().manual_seed(0)
    return D.ImageTensors(torch.randint(0, 256, (n, c, hw, hw), dtype=torch.uint8, generator=g),
                          torch.arange(n) % classes, [str(i) for i in range(classes)])


def test_subset_is_class_balanced_and_deterministic():
    targets = [0] * 10 + [1] * 10 + [2] * 10
    idx = D.subset_indices(targets, 9)
    assert idx == D.subset_indices(targets, 9) and len(idx) == 9
    assert sorted(targets[i] for i in idx) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError):
        D.subset_indices(targets, 0)


def test_eval_batches_are_normalised_images_in_order():
    d = _toy()
    x, y = next(iter(D.TensorLoader(d, 8, False, MEAN, STD)))
    torch.testing.assert_close(x, (d.images[:8].float() / 255 - 0.5) / 0.25)
    assert torch.equal(y, d.targets[:8])


def test_crop_with_padding_and_flip():
    d = _toy()
    flip = D.TensorLoader(d, 8, True, MEAN, STD, padding=0, hflip=1.0, seed=3)
    x, y = next(iter(flip))
    ref = (d.images[D.TensorLoader(d, 8, True, MEAN, STD, seed=3)._indices()[:8]].float().flip(-1) / 255 - .5) / .25
    torch.testing.assert_close(x, ref)
    crop = D.TensorLoader(d, 40, True, MEAN, STD, padding=4, hflip=0.0, seed=3)
    x, y = next(iter(crop))
    raw = d.images[crop._indices()].float()
    x = x * 0.25 * 255 + 0.5 * 255  # back to pixel values: each row is a shifted copy with zero borders
    for i in range(40):
        found = any(torch.allclose(x[i], torch.nn.functional.pad(raw[i], (4, 4, 4, 4))[:, t:t + 8, l:l + 8], atol=1e-3)
                    for t in range(9) for l in range(9))
        assert found, i


def test_same_seed_same_batches_and_epochs_differ():
    d = _toy()
    a = [x for x, _ in D.TensorLoader(d, 8, True, MEAN, STD, seed=5)]
    b = [x for x, _ in D.TensorLoader(d, 8, True, MEAN, STD, seed=5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    l2 = D.TensorLoader(d, 8, True, MEAN, STD, seed=5)
    l2.set_epoch(1)
    assert not torch.equal(next(iter(l2))[0], a[0])


def test_ranks_take_disjoint_slices_of_the_same_global_batch():
    d = _toy(n=48)
    one = list(D.TensorLoader(d, 16, True, MEAN, STD, seed=2))
    two = [list(D.TensorLoader(d, 8, True, MEAN, STD, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == len(two[0]) == 3
    for i in range(3):
        assert torch.equal(torch.cat([two[0][i][0], two[1][i][0]]), one[i][0])
        assert torch.equal(torch.cat([two[0][i][1], two[1][i][1]]), one[i][1])
    ev = [list(D.TensorLoader(d, 8, False, MEAN, STD, rank=r, world_size=2)) for r in range(2)]
    seen = torch.cat([y for r in ev for _, y in r])
    assert len(seen) == 48  # every validation image exactly once across ranks


def test_skip_to_resumes_at_the_right_batch():
    d = _toy()
    full = list(D.TensorLoader(d, 8, True, MEAN, STD, seed=1))
    l = D.TensorLoader(d, 8, True, MEAN, STD, seed=1)
    l.skip_to(3)
    rest = list(l)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, full[3:]))
    assert len(list(l)) == len(full)  # the skip applies to one iteration only


def test_channel_adaptation_resize_and_errors():
    gray = _toy(c=1)
    x, _ = next(iter(D.TensorLoader(gray, 4, False, (0.5,), (0.25,), input_size=(3, 16, 16))))
    assert x.shape == (4, 3, 16, 16) and torch.equal(x[:, 0], x[:, 1])
    with pytest.raises(ValueError, match='fewer than one global batch'):
        D.TensorLoader(_toy(n=4), 8, True, MEAN, STD)
    with pytest.raises(ValueError, match='batch_size'):
        D.TensorLoader(_toy(), 0, True, MEAN, STD)



def test_run_data_configs_from_recorded_args():
    """A run's recorded args give its training config (the model's cfg fills what it left unset, channels fitted)
    and its evaluation config at --eval-img-size; without an eval size both are the same."""
    import timm
    model = timm.create_model('cifar_resnet20', num_classes=10, in_chans=1)
    run = {'img_size': 24, 'eval_img_size': 32, 'mean': [0.4], 'std': None, 'crop_pct': 1.0,
           'in_chans': 1, 'num_classes': 10}
    train, evaluation = D.run_data_configs(run, model, 1)
    assert train['input_size'] == (1, 24, 24) and evaluation['input_size'] == (1, 32, 32)
    assert train['mean'] == pytest.approx((0.4,)) and len(train['std']) == 1 and train['crop_pct'] == 1.0
    assert {k: v for k, v in evaluation.items() if k != 'input_size'} == {
        k: v for k, v in train.items() if k != 'input_size'}
    same = D.run_data_configs(dict(run, eval_img_size=None), model, 1)
    assert same[0] == same[1]

@needs_cifar
def test_folder_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path))
    a = D.load_image_tensors('', str(CIFAR), 'validation', subset=30)
    files = list(tmp_path.glob('*.pt'))
    assert a.images.shape == (30, 3, 32, 32) and a.images.dtype == torch.uint8 and len(files) == 1
    assert a.targets.bincount().tolist() == [3] * 10 and a.classes[0] == 'airplane'

    def no_decode(path):
        raise AssertionError('decoded again despite the cache')

    monkeypatch.setattr(D, '_decode_file', no_decode)
    b = D.load_image_tensors('', str(CIFAR), 'validation', subset=30)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not list(tmp_path.glob('*.tmp*'))  # atomic write left no temporary file


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        D.load_image_tensors('', str(tmp_path / 'nope'), 'train')


@pytest.mark.skipif(not os.path.isdir(D.FASHION_MNIST_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_from_debian_package():
    tr = D.load_image_tensors('fashion-mnist', None, 'train', subset=100)
    va = D.load_image_tensors('fashion-mnist', None, 'validation')
    assert tr.images.shape == (100, 1, 28, 28) and tr.targets.bincount().tolist() == [10] * 10
    assert va.images.shape == (10000, 1, 28, 28) and len(va.classes) == 10
    x, y = next(iter(D.TensorLoader(tr, 20, True, (0.286,), (0.353,), seed=0)))
    assert x.shape == (20, 1, 28, 28) and y.shape == (20,) and torch.isfinite(x).all()


def _torchvision_cifar10(root: Path, per_batch: int = 8, test: int = 12) -> D.ImageTensors:
    """A small `cifar-10-batches-py` folder in torchvision's pickle layout (what `--dataset-download` leaves);
    returns its training images as (N, 3, 32, 32) uint8 and labels."""
    import pickle
    import numpy as np
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name, n in [(f'data_batch_{i}', per_batch) for i in range(1, 6)] + [('test_batch', test)]:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        target = [int(x) for x in rng.integers(0, 10, n)]
        with open(folder / name, 'wb') as f:
            pickle.dump({'data': data, 'labels': target}, f)
        if name != 'test_batch':
            images.append(data)
            labels += target
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': [f'class{i}' for i in range(10)]}, f)
    return D.ImageTensors(torch.as_tensor(np.concatenate(images)).view(-1, 3, 32, 32), torch.tensor(labels), [])


def test_torchvision_cifar10_layout_trains_end_to_end(tmp_path, monkeypatch, stim_cache):
    """`--dataset torch/cifar10` (how a user online gets CIFAR-10, with `--dataset-download`) reads torchvision's
    pickle layout: the fast path decodes the same images and labels, and `timm-stim-train` trains on it and writes
    its checkpoint. torchvision's md5 check is switched off for the small stand-in files."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *args, **kwargs: True)
    want = _torchvision_cifar10(tmp_path / 'data')
    train = D.load_image_tensors('torch/cifar10', str(tmp_path / 'data'), 'train')
    assert torch.equal(train.images, want.images) and torch.equal(train.targets, want.targets)
    assert train.classes[:2] == ['class0', 'class1']
    assert len(D.load_image_tensors('torch/cifar10', str(tmp_path / 'data'), 'validation').targets) == 12
    from timm_stim.train import main
    main(['--dataset', 'torch/cifar10', '--data-dir', str(tmp_path / 'data'), '--model', 'cifar_resnet20_stim',
          '--num-classes', '10', '-b', '8', '--epochs', '1', '--warmup-epochs', '0', '--stim-mode', 'stpp',
          '--stim-subnets', '1', '--stim-bn-recalib', '16', '--no-plot', '--output', str(tmp_path / 'out'),
          '--experiment', 'tv'])
    rows = (tmp_path / 'out' / 'tv' / 'summary.csv').read_text().splitlines()
    assert len(rows) == 2 and (tmp_path / 'out' / 'tv' / 'last.pth.tar').is_file()
