"""Fast small-image data path: decode once into a uint8 tensor cache, augment whole batches as tensors.

For datasets that fit in memory (CIFAR-10 as an image folder or `torch/cifar10`, Fashion-MNIST from the Debian
package `dataset-fashion-mnist`), the images are decoded once into a `(N, C, H, W)` uint8 tensor, written
atomically to a cache outside the repository (`$TIMM_STIM_CACHE`, default `~/.cache/timm_stim`), and every batch
is augmented as one tensor (the CIFAR recipe: random crop with zero padding, horizontal flip, normalise). No
worker processes: on two CPU cores the time goes into the network.

Order and augmentation depend only on (seed, epoch, batch index), never on global RNGs or on the number of
processes: the global batch `i` is the same whatever the world size, and rank `r` takes the `r`-th slice of it.
So DDP runs see the same data as one process with the same global batch, and a resumed run continues at the
right batch (`TensorLoader.skip_to`).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path

__all__ = [
    'CACHE_ENV', 'FASHION_MNIST_DIR', 'ImageTensors', 'TensorLoader', 'default_cache_dir', 'load_image_tensors',
    'subset_indices', 'batch_seed', 'TransformSubset', 'dataset_targets', 'fits_fast_path', 'fit_channels',
    'data_config_at', 'run_data_configs',
]

_logger = logging.getLogger(__name__)

CACHE_ENV = 'TIMM_STIM_CACHE'
CACHE_VERSION = 1
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_NAMES = ('fashion-mnist', 'fashion_mnist', 'fmnist')
MAX_FAST_SIDE = 64  # images with a larger side go through timm's loader


@dataclass
class ImageTensors:
    """A decoded split: `images` uint8 (N, C, H, W), `targets` int64 (N,), class names."""
    images: torch.Tensor
    targets: torch.Tensor
    classes: List[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def default_cache_dir() -> Path:
    """`$TIMM_STIM_CACHE`, else `~/.cache/timm_stim` (never inside the repository)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'timm_stim'


def subset_indices(targets: Sequence[int], n: Optional[int]) -> List[int]:
    """A deterministic, class-balanced subset of `n` indices (round-robin over classes, in index order)."""
    targets = [int(t) for t in targets]
    if n is None or n >= len(targets):
        return list(range(len(targets)))
    if n <= 0:
        raise ValueError(f'subset size must be positive, got {n}.')
    rank_in_class: Dict[int, int] = {}
    keys = []
    for i, t in enumerate(targets):
        r = rank_in_class.get(t, 0)
        rank_in_class[t] = r + 1
        keys.append((r, t, i))
    return sorted(i for _, _, i in sorted(keys)[:n])


# ----------------------------------------------------------------------------------------------- decoding
def _is_fashion_mnist(name: str) -> bool:
    return name.lower().split('/')[-1] in FASHION_MNIST_NAMES


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    _, _, dtype_code, ndim = struct.unpack('>BBBB', data[:4])
    if dtype_code != 0x08:
        raise ValueError(f'{path}: only uint8 IDX files are supported.')
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist(root: Optional[str], split: str) -> ImageTensors:
    root_path = Path(root or FASHION_MNIST_DIR)
    prefix = 'train' if split.split('[')[0] in ('train', 'training') else 't10k'
    img, lbl = root_path / f'{prefix}-images-idx3-ubyte.gz', root_path / f'{prefix}-labels-idx1-ubyte.gz'
    if not img.exists() or not lbl.exists():
        raise FileNotFoundError(
            f'Fashion-MNIST not found at {root_path} (expected {img.name} and {lbl.name}). Install the Debian '
            f'package (apt-get install dataset-fashion-mnist) or pass --data-dir with the *-ubyte.gz files.')
    images = torch.from_numpy(_read_idx_gz(img).copy()).unsqueeze(1)
    targets = torch.from_numpy(_read_idx_gz(lbl).astype(np.int64))
    classes = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
               'Ankle boot']
    return ImageTensors(images, targets, classes)


def _decode_file(path: str) -> Optional[torch.Tensor]:
    """One image file -> uint8 (3, H, W) (PIL: torchvision.io decoding is deprecated); None, with a warning
    naming the file, when it is corrupt or truncated (timm's loader skips such files too)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert('RGB')).copy()).permute(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError / truncated data are OSErrors
        _logger.warning(f'skipping unreadable image {path}: {e}')
        return None


def _check_small(path: str, root: str) -> None:
    """Refuse a folder of large images from one file's header, before anything is decoded."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            size = im.size
    except (OSError, ValueError, SyntaxError):
        return  # an unreadable first file is skipped while decoding
    if max(size) > MAX_FAST_SIDE:
        raise ValueError(f'images under {root} are {size[0]}x{size[1]} px (from {path}), larger than the fast data '
                         f'path takes (<= {MAX_FAST_SIDE} px): use --no-fast-data.')


def _folder_key(samples: Sequence[Tuple[str, int]], subset: Optional[int]) -> str:
    h = hashlib.sha1(f'v{CACHE_VERSION}|subset={subset}|n={len(samples)}'.encode())
    for path, target in samples:
        st = os.stat(path)
        h.update(f'{os.path.abspath(path)}|{target}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()[:20]


def _load_folder(root: str, split: str, subset: Optional[int], cache_dir: Optional[Path],
                 class_map: str = '') -> ImageTensors:
    from timm.data import create_dataset
    ds = create_dataset('', root=root, split=split, class_map=class_map)
    reader = getattr(ds, 'reader', None)
    samples = getattr(reader, 'samples', None)
    if samples is None:
        raise TypeError(f'{root} is not an image folder the fast data path can read; use --no-fast-data.')
    if not samples:
        raise FileNotFoundError(f'no images found under {root} for split {split!r}.')
    class_to_idx = getattr(reader, 'class_to_idx', {})
    classes = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    samples = [samples[i] for i in subset_indices([t for _, t in samples], subset)]
    _check_small(samples[0][0], root)

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / f'{_folder_key(samples, subset)}.pt'
    if cache_file.exists():
        try:
            state = torch.load(cache_file, map_location='cpu', weights_only=True)
            return ImageTensors(state['images'], state['targets'], list(state['classes']))
        except Exception as e:  # a corrupt cache is rebuilt, never trusted
            _logger.warning(f'ignoring unreadable data cache {cache_file}: {e}')

    _logger.info(f'Decoding {len(samples)} images from {root} ({split}) into {cache_file} (once).')
    decoded = [(_decode_file(p), t) for p, t in samples]
    skipped = sum(im is None for im, _ in decoded)
    images, targets = [im for im, _ in decoded if im is not None], [t for im, t in decoded if im is not None]
    if skipped:
        _logger.warning(f'skipped {skipped} unreadable image(s) of {len(samples)} under {root} ({split}).')
    if not images:
        raise FileNotFoundError(f'no readable images under {root} for split {split!r}.')
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f'images under {root} have different sizes ({sorted(shapes)[:3]}...): the fast data path '
                         f'needs one size; use --no-fast-data.')
    state = {'images': torch.stack(images), 'targets': torch.tensor(targets, dtype=torch.int64),
             'classes': classes}
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_file, suffix=f'.tmp{os.getpid()}') as tmp:
        torch.save(state, tmp)
    return ImageTensors(state['images'], state['targets'], classes)


def _load_torchvision(name: str, root: str, split: str, download: bool) -> ImageTensors:
    from timm.data import create_dataset
    ds = create_dataset(name, root=root, split=split, download=download)
    data = ds.data
    data = torch.as_tensor(np.asarray(data))
    if data.ndim == 3:  # (N, H, W): grayscale
        data = data.unsqueeze(1)
    elif data.shape[-1] in (1, 3):  # (N, H, W, C)
        data = data.permute(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageTensors(data.contiguous().to(torch.uint8), targets, list(getattr(ds, 'classes', [])))


def load_image_tensors(
        dataset: str,
        root: Optional[str],
        split: str,
        subset: Optional[int] = None,
        download: bool = False,
        cache_dir: Optional[os.PathLike] = None,
        class_map: str = '',
) -> ImageTensors:
    """Decode a small-image split into memory (folder splits are cached on disk, atomically).

    `dataset`: '' (image folder, timm's split search: 'validation' finds 'val'), 'torch/<name>' (torchvision,
    e.g. torch/cifar10, torch/fashion_mnist) or 'fashion-mnist' (IDX files of the Debian package, default
    directory /usr/share/datasets/fashion-mnist). `subset`: keep a class-balanced subset of N images.
    """
    if _is_fashion_mnist(dataset) and not dataset.startswith('torch/'):
        data = _load_fashion_mnist(root, split)
    else:
        if not root:
            raise FileNotFoundError('no data directory given: pass --data-dir DIR.')
        if dataset.startswith('torch/'):
            if not download and not os.path.isdir(root):
                raise FileNotFoundError(f'data directory {root} does not exist (add --dataset-download to fetch '
                                        f'{dataset} with torchvision).')
            data = _load_torchvision(dataset, root, split, download)
        elif dataset:
            raise TypeError(f'dataset {dataset!r} is not supported by the fast data path; use --no-fast-data.')
        else:
            if not os.path.isdir(root):
                raise FileNotFoundError(f'data directory {root} does not exist: pass --data-dir pointing at a '
                                        f'folder with train/ and val/ sub-folders of class folders.')
            return _load_folder(root, split, subset, cache_dir, class_map)
    if subset is not None:
        idx = torch.tensor(subset_indices(data.targets.tolist(), subset), dtype=torch.long)
        data = ImageTensors(data.images[idx], data.targets[idx], data.classes)
    return data


def fits_fast_path(data_or_shape: Union[ImageTensors, Sequence[int]]) -> bool:
    """Small images (both sides <= 64 px) go through the tensor path."""
    shape = data_or_shape.images.shape if isinstance(data_or_shape, ImageTensors) else data_or_shape
    return max(shape[-2:]) <= MAX_FAST_SIDE


# --------------------------------------------------------------------------------------------------- loader
def batch_seed(seed: int, epoch: int, index: int, salt: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, batch index, salt)."""
    h = hashlib.blake2b(f'{seed}|{epoch}|{index}|{salt}'.encode(), digest_size=8).digest()
    return int.from_bytes(h, 'little') & ((1 << 63) - 1)


class TensorLoader:
    """Batches of `ImageTensors` as normalised float tensors, augmented per batch as one tensor.

    Training: a seeded permutation per epoch, global batches of `batch_size * world_size` (last partial batch
    dropped), random crop with `padding` zero pixels and horizontal flip with probability `hflip`, parameters
    drawn for the whole global batch from a generator seeded by (seed, epoch, batch). Rank r takes the r-th
    slice. Evaluation: dataset order (or a seeded shuffle with `shuffle=True`, e.g. for BN re-estimation), rank r
    takes positions r, r + world_size, ... (no padding, no drop).
    """

    def __init__(
            self,
            data: ImageTensors,
            batch_size: int,
            is_training: bool,
            mean: Sequence[float],
            std: Sequence[float],
            input_size: Optional[Sequence[int]] = None,
            seed: int = 0,
            rank: int = 0,
            world_size: int = 1,
            padding: int = 4,
            hflip: float = 0.5,
            vflip: float = 0.,
            no_aug: bool = False,
            crop_pct: float = 1.0,
            device: torch.device = torch.device('cpu'),
            dtype: torch.dtype = torch.float32,
            channels_last: bool = False,
            num_batches: Optional[int] = None,
            shuffle: Optional[bool] = None,
    ):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        self.data = data
        self.batch_size = batch_size
        self.is_training = is_training
        self.shuffle = is_training if shuffle is None else shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.padding = 0 if no_aug else padding
        self.hflip = 0. if no_aug else hflip
        self.vflip = 0. if no_aug else vflip
        if not 0 < crop_pct <= 1:
            raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}.')
        self.crop_pct = crop_pct
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        in_chans = input_size[0] if input_size else data.images.shape[1]
        self.in_chans = in_chans
        self.out_hw = tuple(input_size[-2:]) if input_size else tuple(data.images.shape[-2:])
        if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
            raise ValueError(f'mean/std need 1 or {in_chans} values, got {len(mean)} / {len(std)}.')
        # on the output device once: _finish runs every batch
        self.mean = torch.tensor([m * 255 for m in mean], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor([s * 255 for s in std], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.global_batch = batch_size * world_size
        n = len(data)
        if is_training:
            full = n // self.global_batch
            if full == 0:
                raise ValueError(f'{n} training images are fewer than one global batch ({self.global_batch}): '
                                 f'lower --batch-size.')
        else:
            full = -(-len(range(rank, n, world_size)) // batch_size)
        self.num_batches = min(full, num_batches) if num_batches else full
        self.epoch = 0
        self.start_batch = 0
        self.mixup_enabled = False  # timm loader API parity (mixup happens in the training loop)

    def __len__(self) -> int:
        return self.num_batches

    @property
    def dataset(self) -> ImageTensors:
        return self.data

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_to(self, batch: int) -> None:
        """Start the next iteration at batch `batch` of the current epoch (mid-epoch resume)."""
        self.start_batch = batch

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        order = torch.arange(n)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, -1)))
        return order if self.is_training else order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        start, self.start_batch = self.start_batch, 0
        for i in range(start, self.num_batches):
            if self.is_training:
                gidx = order[i * self.global_batch:(i + 1) * self.global_batch]
                x, y = self._augment(gidx, i)
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                x, y = self.data.images[idx], self.data.targets[idx]
            yield self._finish(x), y.to(self.device)

    def _augment(self, gidx: torch.Tensor, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Crop-with-padding and flip parameters for the whole global batch; apply them to this rank's slice."""
        g = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, i))
        gb, p = gidx.shape[0], self.padding
        oy = torch.randint(0, 2 * p + 1, (gb,), generator=g)
        ox = torch.randint(0, 2 * p + 1, (gb,), generator=g)
        flip = torch.rand(gb, generator=g) < self.hflip
        # drawn only when asked for: the stream of the default recipe stays what it was
        vflip = torch.rand(gb, generator=g) < self.vflip if self.vflip else torch.zeros(gb, dtype=torch.bool)
        sl = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        idx, oy, ox, flip, vflip = gidx[sl], oy[sl], ox[sl], flip[sl], vflip[sl]
        x = self.data.images[idx]
        if p:
            h, w = x.shape[-2:]
            xp = F.pad(x, (p, p, p, p))
            x = torch.stack([xp[j, :, t:t + h, l:l + w] for j, (t, l) in enumerate(zip(oy.tolist(), ox.tolist()))])
        if flip.any():
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if vflip.any():
            x = torch.where(vflip[:, None, None, None], x.flip(-2), x)
        return x, self.data.targets[idx]

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float, channel adaptation, resize to the model input, normalise, device / layout."""
        x = x.to(self.device, non_blocking=True).float()
        c = x.shape[1]
        if c != self.in_chans:
            if c == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif self.in_chans == 1 and c == 3:
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, True)
            else:
                raise ValueError(f'cannot feed {c}-channel images to a {self.in_chans}-channel model.')
        if self.crop_pct < 1 and not self.is_training:  # timm's eval transform: resize to size / crop_pct, centre crop
            big = tuple(int(s / self.crop_pct) for s in self.out_hw)
            x = F.interpolate(x, size=big, mode='bilinear', align_corners=False, antialias=True)
            top, left = (big[0] - self.out_hw[0]) // 2, (big[1] - self.out_hw[1]) // 2
            x = x[..., top:top + self.out_hw[0], left:left + self.out_hw[1]]
        elif tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode='bilinear', align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)


# ------------------------------------------------------------------------------------- timm dataset helpers
class TransformSubset(torch.utils.data.Subset):
    """`Subset` of a timm dataset that forwards `transform` (timm's create_loader sets it on the dataset)."""

    @property
    def transform(self) -> Optional[Callable]:
        return self.dataset.transform

    @transform.setter
    def transform(self, t: Optional[Callable]) -> None:
        self.dataset.transform = t


def dataset_targets(ds: torch.utils.data.Dataset) -> List[int]:
    """Class index of every sample of a timm / torchvision dataset (without decoding images when possible)."""
    reader = getattr(ds, 'reader', None)
    if reader is not None and hasattr(reader, 'samples'):
        return [t for _, t in reader.samples]
    if hasattr(ds, 'targets'):
        return [int(t) for t in ds.targets]
    return [int(ds[i][1]) for i in range(len(ds))]


def fit_channels(data_config: dict, in_chans: int) -> dict:
    """Make a timm data config agree with the model's input channels (timm keeps the pretrained cfg's 3).

    A 1-channel model gets input_size (1, H, W) and the mean of the per-channel mean / std.
    """
    cfg = dict(data_config)
    c, h, w = cfg['input_size']
    if c != in_chans:
        cfg['input_size'] = (in_chans, h, w)
    for k in ('mean', 'std'):
        v = tuple(cfg[k])
        if len(v) != in_chans:
            if len(v) == 1:
                cfg[k] = v * in_chans
            elif in_chans == 1:
                cfg[k] = (sum(v) / len(v),)
            else:
                raise ValueError(f'{k} has {len(v)} values for a {in_chans}-channel model: pass --{k} with '
                                 f'{in_chans} values.')
    return cfg


def data_config_at(data_config: dict, img_size: Optional[int] = None,
                     input_size: Optional[Sequence[int]] = None) -> dict:
    """`data_config` at another input size (`input_size` C H W, or `img_size` square), unchanged when both are None.

    The evaluation config of a run is its training config at `--eval-img-size` / `--eval-input-size` (timm's
    train.py evaluates at the training size); everything else (crop_pct, interpolation, mean, std) is shared: the
    eval transform resizes to size / crop_pct and centre-crops size (224 with crop_pct 224 / 240: 240 -> 224)."""
    cfg = dict(data_config)
    if input_size is not None:
        cfg['input_size'] = tuple(int(v) for v in input_size)
    elif img_size is not None:
        cfg['input_size'] = (cfg['input_size'][0], int(img_size), int(img_size))
    return cfg


def run_data_configs(run: Mapping[str, Any], model: torch.nn.Module, in_chans: int,
                     verbose: bool = False) -> Tuple[dict, dict]:
    """A run's (training, evaluation) data configs from its arguments: timm-stim-train's namespace as a dict, or a
    run's recorded `args.yaml`. timm's `resolve_data_config` over its data flags (the model's cfg fills the rest),
    fitted to `in_chans`, then the same config at `eval_img_size` / `eval_input_size` when the run set one."""
    from timm.data import resolve_data_config
    train = fit_channels(resolve_data_config(dict(run), model=model, verbose=verbose), in_chans)
    return train, data_config_at(train, run.get('eval_img_size'), run.get('eval_input_size'))
