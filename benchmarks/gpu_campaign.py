#!/usr/bin/env python3
"""The GPU campaign of issue 27 (item 5): the long-schedule question on one GPU, every run at once.

ResNet-20 and ResNet-56 (`cifar_resnet20` / `cifar_resnet56` for the baseline, their `_stim` forms for ST++),
baseline (`--stim-mode off`) against the chosen CIFAR ST++ arm (`cards.HEADLINE_RUNS['chosen']`, flags from
`benchmarks/cifar10.py` ARMS: stpp, st space, minimum input scale 0.75) with K = 1 and K = 6 sub-networks, 200
epochs, seeds 0, 1, 2: 18 runs of the CIFAR recipe (`benchmarks/recipes/cifar10.yaml`, read through
`timm-stim-train`'s own parser: SGD Nesterov 0.9, lr 0.1, batch 128, weight decay 5e-4 on every parameter, 1
warm-up epoch then cosine per step, 4-px pad crop + flip). At the end every run gets BN re-estimated on 2,000
augmented training images per depth configuration and is tested on the 10,000 test images
(`validate.evaluate_depths`, the project's sweep). Results: `benchmarks/results/gpu_campaign.json`.

    python benchmarks/gpu_campaign.py prepare                 # once, here: -> .gpu_data/cifar10_jpeg.npz (18 MB)
    python benchmarks/gpu_campaign.py plan                    # FLOPs, kernel counts and a time estimate, no training
    python benchmarks/gpu_campaign.py run --toy               # CPU, ~20 s: 3 tiny runs (tests/test_gpu_campaign.py)

The device command (the device tool's `run`, carry ['.gpu_data', '.whl'], timeout_s 600):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/timm-1.0.31-py3-none-any.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_campaign.py run --data .gpu_data/cifar10_jpeg.npz --out $OUT/gpu_campaign.json

`.whl` holds the timm this project tests with (timm_stim needs timm >= 1.0.31, the device image's may be older; here,
once: `python -m pip download --no-deps timm==1.0.31 -d .whl`); the device's own torch runs the step. A task's device
time is 15 minutes, machine start and transfers included: the script stops itself within `--time-budget` seconds of
its start (default 540), so the call ends inside the tool's 600 s, with no time left to rerun. The tool sends the
whole working tree and refuses one over 64 MiB: hence the small data file (CIFAR-10's own JPEG bytes, headers stored
once: 18 MB for the 60,000 images, where the uint8 arrays are 184 MB; decoded here and there with PIL, checked by
sha256 to be the tensors `load_image_tensors` gives).

Design (all runs at once, few launches per step):
* Data: the whole uint8 train set lives on the GPU; each run draws a seeded permutation and crop / flip offsets per
  epoch there, and every step gathers, pads, crops, flips and normalises its batch on the GPU (no loader).
* Engine `graphs` (CUDA): each run's step is cut where ST++'s loss allows it (the teacher is detached, so the
  gradient is the main loss's plus one term per sub-network): a full-network piece (batch, forward, main loss through
  the trainer's own `forward` with no sub-network, gradients), K sub-network pieces (the batch resized by
  `losses.smaller_input`, the sub-network, `losses.kl_minus`, gradients) and an optimiser piece (sum; SGD Nesterov,
  the learning rate read from a table of timm's scheduler on the GPU). Each piece is one CUDA graph: a step costs the
  host K + 2 graph launches. The K sub-network pieces run at once on K streams, every run has its own streams, and
  the host steps all runs in turn, so all of them train together. One graph per (piece, input side) serves every
  sub-network: the blocks a sub-network drops (identity-shortcut blocks at the end of a stage, `depth.find_stages`)
  are skipped exactly by a forward hook returning `torch.where(gate, block(x), x)`, the gates read from a per-epoch
  plan that the trainer's own `DepthSampler` draws in `StimulativeTrainer.forward`'s order. The dropped blocks are
  computed and thrown away (K = 6: 5.6 forward passes per step instead of 4.0 for ResNet-20, 3.6 for ResNet-56),
  for static graphs; loss and gradients are the trainer's (the concurrent sub-network pieces also race on the BN
  running statistics, which training never reads and the final re-estimation overwrites). Before the campaign
  `selfcheck` compares 3 steps in float32 with `StimulativeTrainer.forward` + `backward()` + timm's SGD: the
  sub-networks drawn, the gradients (1e-7 relative on the CPU) and the update.
* Engine `pieces`: the same pieces eagerly (the CPU, `--toy`); `trainer`: the reference, eager and slow.
* Time budget: runs are built and timed model by model in priority order (ResNet-20 first; then seed; arms off, K=1,
  K=6). The timed steps are undone (`Run.reset`), the per-FLOP time predicts which runs of the next model fit
  `--time-budget` (training + evaluation), only those are built, and what still overruns after timing is dropped
  from the end of the order and recorded as skipped; every admitted run then trains from step 0, all together.
  Epochs stop early (runs recorded as partial) if the time runs out anyway. `--models / --arms / --seeds` and
  `--merge` split the campaign over several calls.

How long: `plan` counts, on the CPU, the FLOPs the pieces execute (18 runs: 252 PFLOP, 180 as specified) and the
bfloat16 activation traffic of their ops unfused (7.9 PB), and the kernels of each run's critical path (ResNet-56 with
sub-networks: 1,250 kernels a step, 78,000 steps). At 200 TFLOP/s, 3 TB/s and 4 us a kernel that is 21, 44 and 6.5
minutes: the 18 runs do not fit 10 minutes on one H200 (even at the H200's peak bf16 rate, 790 TFLOP/s, the FLOPs
alone take 5.3 minutes). ResNet-20's 9 runs need 62 PFLOP and 2.0 PB (5 to 11 minutes, L2 hits decide), so a
540-second call trains ResNet-20's 9 runs, or as many as the timing admits, and ResNet-56 needs further calls
(`--models cifar_resnet56 --seeds 0 --merge`: 63 PFLOP executed and 1.9 PB a seed, as much as ResNet-20's 9 runs).
"""
from __future__ import annotations

import os
import time

T_START = time.time()
os.environ.setdefault('CUDA_DEVICE_MAX_CONNECTIONS', '32')  # many streams: before CUDA initialises

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, git_commit, git_dirty, machine_info, write_report  # noqa: E402

sys.path.insert(0, str(ROOT))
from timm import utils as timm_utils  # noqa: E402
from timm.scheduler import create_scheduler_v2, scheduler_kwargs  # noqa: E402

from timm_stim import train as stim_train  # noqa: E402
from timm_stim.cards import HEADLINE_RUNS  # noqa: E402
from timm_stim.data import ImageTensors, TensorLoader, batch_seed, load_image_tensors, subset_indices  # noqa: E402
from timm_stim.depth import find_stages, valid_depths  # noqa: E402
from timm_stim.elastic import depth_profile  # noqa: E402
from timm_stim.heldout import heldout_record, split_heldout  # noqa: E402
from timm_stim.losses import kl, kl_minus, smaller_input  # noqa: E402
from timm_stim.trainer import StimulativeTrainer  # noqa: E402
from timm_stim.validate import _sweep_configs, evaluate_depths  # noqa: E402

RECIPE = ROOT / 'benchmarks' / 'recipes' / 'cifar10.yaml'
DATA_DIR = (ROOT / '..' / 'shared' / 'data' / 'cifar10').resolve()
DATA_FILE = ROOT / '.gpu_data' / 'cifar10_jpeg.npz'
OUT = ROOT / 'benchmarks' / 'results' / 'gpu_campaign.json'
TOY_OUT = ROOT / 'output' / 'gpu_campaign_toy.json'

MODELS = ('cifar_resnet20', 'cifar_resnet56')
SEEDS = (0, 1, 2)
EPOCHS = 200
TIME_BUDGET = 540.
EVAL_BATCH = 1000
# toy: tiny subsets, 2 epochs, one model, CPU
TOY = dict(train=128, test=100, batch_size=32, epochs=2, bn_images=64, models=('cifar_resnet20',), seeds=(0,),
           sweep=(4, 4))
SWEEP = (20, 64)  # validate --robustness auto: every configuration up to 64, else the full network + a seeded 20


def _cifar_arms() -> Dict[str, Any]:
    import cifar10  # benchmarks/cifar10.py: the arms of every CIFAR run
    return cifar10.ARMS


def arm_flags(arm: str) -> List[str]:
    """`off`: the baseline arm's flags; `k<K>`: the chosen ST++ arm's flags with K sub-networks per step."""
    arms = _cifar_arms()
    if arm == 'off':
        return list(arms['baseline'][0])
    if arm.startswith('k') and arm[1:].isdigit():
        flags = list(arms[HEADLINE_RUNS['chosen']][0])
        if '--stim-subnets' in flags:
            flags[flags.index('--stim-subnets') + 1] = arm[1:]
            return flags
        return flags + ['--stim-subnets', arm[1:]]
    raise ValueError(f'unknown arm {arm!r}: off or k<K> (k1, k6)')


ARMS = ('off', 'k1', 'k6')


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    arm: str
    seed: int

    @property
    def arch(self) -> str:
        """The plain name for the baseline, the `_stim` form for ST++ (same architecture and initialisation)."""
        return self.model if self.arm == 'off' else self.model + '_stim'

    @property
    def name(self) -> str:
        return f'{self.model}-{self.arm}-s{self.seed}'


def campaign_specs(models: Sequence[str], arms: Sequence[str], seeds: Sequence[int]) -> List[RunSpec]:
    """Runs in priority order (the first are kept when the time budget drops some): model, seed, arm."""
    return [RunSpec(m, a, s) for m in models for s in seeds for a in arms]


# ------------------------------------------------------------------------------------------------------ data
def _jpeg_head(b: bytes) -> int:
    """Length of a JPEG's headers up to and including the start-of-scan segment (0 when there is none)."""
    i = b.find(b'\xff\xda')
    return 0 if i < 0 else i + 2 + int.from_bytes(b[i + 2:i + 4], 'big')


def _sha(images: np.ndarray, targets: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
    return h.hexdigest()


def _pack_split(root: Path, split: str, subset: Optional[int]) -> Dict[str, np.ndarray]:
    """One split's JPEG bytes (headers stored once) in the ImageFolder order of `load_image_tensors`, checked: the
    bytes decode to exactly the project's uint8 tensors."""
    from timm.data import create_dataset
    samples = create_dataset('', root=str(root), split=split).reader.samples
    samples = [samples[i] for i in subset_indices([t for _, t in samples], subset)]
    ref = load_image_tensors('', str(root), split, subset=subset)
    heads: Dict[bytes, int] = {}
    head_id, scans = [], []
    for path, _ in samples:
        b = Path(path).read_bytes()
        n = _jpeg_head(b)
        head_id.append(heads.setdefault(b[:n], len(heads)))
        scans.append(b[n:])
    lens = np.array([0] + [len(s) for s in scans], dtype=np.int64)
    hlens = np.array([0] + [len(h) for h in heads], dtype=np.int64)
    packed = dict(scans=np.frombuffer(b''.join(scans), dtype=np.uint8), offsets=np.cumsum(lens),
                  heads=np.frombuffer(b''.join(heads), dtype=np.uint8), head_offsets=np.cumsum(hlens),
                  head_id=np.array(head_id, dtype=np.int32),
                  targets=np.array([t for _, t in samples], dtype=np.uint8))
    images = _decode(packed)
    ref_images = ref.images.numpy()
    if not (np.array_equal(images, ref_images) and np.array_equal(packed['targets'], ref.targets.numpy())):
        raise SystemExit(f'{root}/{split}: the packed JPEG bytes do not decode to load_image_tensors\' tensors')
    packed['sha256'] = np.array(_sha(ref_images, ref.targets.numpy()))
    packed['classes'] = np.array(ref.classes)
    return packed


def _decode(packed: Dict[str, np.ndarray]) -> np.ndarray:
    """uint8 (N, 3, H, W) from packed JPEG bytes (PIL, as `timm_stim.data` decodes the ImageFolder)."""
    from PIL import Image
    scans, off, heads, hoff, hid = (packed[k] for k in ('scans', 'offsets', 'heads', 'head_offsets', 'head_id'))
    head_bytes = [heads[hoff[i]:hoff[i + 1]].tobytes() for i in range(len(hoff) - 1)]
    out = []
    for i in range(len(hid)):
        with Image.open(io.BytesIO(head_bytes[hid[i]] + scans[off[i]:off[i + 1]].tobytes())) as im:
            out.append(np.asarray(im.convert('RGB')))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def prepare(args: argparse.Namespace) -> Dict[str, Any]:
    """Pack the train and test splits into one small .npz outside git (`.gpu_data/` is ignored)."""
    t0 = time.time()
    out, arrays, info = Path(args.out), {}, {}
    for key, split in (('train', 'train'), ('test', 'validation')):
        packed = _pack_split(Path(args.data_dir), split, args.subset)
        arrays.update({f'{key}_{k}': v for k, v in packed.items()})
        info[key] = dict(images=int(len(packed['targets'])), jpeg_bytes=int(packed['scans'].size),
                         distinct_headers=int(len(packed['head_offsets']) - 1), sha256=str(packed['sha256']))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, source=np.array(str(args.data_dir)), **arrays)
    size = out.stat().st_size
    counts = ', '.join(f"{k} {v['images']} images" for k, v in info.items())
    print(f'wrote {out}: {size / 2**20:.1f} MiB ({counts}), decoding to exactly the tensors of load_image_tensors; '
          f'{time.time() - t0:.0f} s')
    return dict(file=str(out), bytes=size, **info)


def load_data(path: Path) -> Tuple[ImageTensors, ImageTensors, Dict[str, Any]]:
    """(train, test) decoded from a `prepare` file, and a record of it (decoded bytes checked against prepare's)."""
    t0 = time.time()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    splits, record = [], dict(file=str(path), bytes=Path(path).stat().st_size, source=str(arrays['source']))
    for key in ('train', 'test'):
        packed = {k[len(key) + 1:]: v for k, v in arrays.items() if k.startswith(key + '_')}
        images = _decode(packed)
        same = _sha(images, packed['targets']) == str(packed['sha256'])
        if not same:
            print(f'WARNING: {key} decodes to other pixels than where it was packed (another libjpeg?)', flush=True)
        record[key] = dict(images=int(len(images)), identical_to_prepare=same)
        splits.append(ImageTensors(torch.from_numpy(images), torch.from_numpy(packed['targets'].astype(np.int64)),
                                   [str(c) for c in packed['classes']]))
    record['decode_s'] = round(time.time() - t0, 2)
    return splits[0], splits[1], record


def take(data: ImageTensors, idx: torch.Tensor) -> ImageTensors:
    return ImageTensors(data.images[idx], data.targets[idx], data.classes)


def augment(images: torch.Tensor, idx: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
            pad: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The recipe's augmentation of one batch on the images' device, as `TensorLoader` does it on the CPU: crop at
    (oy, ox) of the zero-padded image, flip the crop where `flip`, normalise; channels_last float32."""
    x = images.index_select(0, idx)
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).expand(b, h) + oy[:, None]
    cols = torch.arange(w, device=x.device).expand(b, w) + ox[:, None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    x = F.pad(x, (pad,) * 4)
    x = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    x = (x.permute(0, 3, 1, 2).float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------------- runs
def recipe_args(spec: RunSpec, epochs: int, toy: bool = False, batch_size: Optional[int] = None
                ) -> argparse.Namespace:
    """The run's `timm-stim-train` arguments: the CIFAR recipe, the arm's flags (toy: smaller batch and BN set)."""
    argv = ['-c', str(RECIPE), '--model', spec.arch, '--seed', str(spec.seed), '--epochs', str(epochs),
            *arm_flags(spec.arm)]
    if toy:
        argv += ['--batch-size', str(TOY['batch_size']), '--stim-bn-recalib', str(TOY['bn_images'])]
    if batch_size:
        argv += ['--batch-size', str(batch_size)]
    args = stim_train._parse_args(argv)
    args.rank, args.world_size, args.distributed = 0, 1, False
    return args


def lr_table(args: argparse.Namespace, model: torch.nn.Module, steps: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Learning rate of every update from timm's scheduler (as `timm-stim-train` steps it: `step_update(u)` before
    update u), and the optimizer's hyper-parameters from timm's optimizer factory."""
    opt = stim_train._create_optimizer(args, model)
    hp = {k: opt.param_groups[0][k] for k in ('momentum', 'nesterov', 'weight_decay', 'dampening')}
    if not hp['nesterov'] or hp['dampening'] or len(opt.param_groups) != 1:
        raise ValueError(f'the GPU step implements one group of SGD Nesterov without dampening, not {opt}')
    sched, num_epochs = create_scheduler_v2(opt, **scheduler_kwargs(args), updates_per_epoch=steps)
    lrs = []
    for u in range(num_epochs * steps):
        sched.step_update(num_updates=u)
        lrs.append(opt.param_groups[0]['lr'])
    return torch.tensor(lrs, dtype=torch.float32), hp


_DEVICE_DATA: Dict[Any, Tuple[torch.Tensor, torch.Tensor]] = {}


def on_device(data: ImageTensors, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """One device copy of a training set, shared by every run."""
    key = (id(data.images), str(device))
    if key not in _DEVICE_DATA:
        _DEVICE_DATA.clear()
        _DEVICE_DATA[key] = data.images.to(device), data.targets.to(device)
    return _DEVICE_DATA[key]


class Run:
    """One training run: model, trainer, optimizer state and the buffers its steps read and write."""

    def __init__(self, spec: RunSpec, args: argparse.Namespace, train: ImageTensors, device: torch.device,
                 amp_dtype: Optional[torch.dtype], engine: str, schedule: Optional[Tuple[torch.Tensor, dict]] = None):
        self.spec, self.args, self.device, self.engine, self.amp_dtype = spec, args, device, engine, amp_dtype
        self.B = args.batch_size
        self.steps = len(train) // self.B
        timm_utils.random_seed(args.seed, 0)  # as timm-stim-train: the CPU runs' initialisation
        self.model, data_config, _ = stim_train._create_model(args, torch.device('cpu'))
        self.model.to(device).train()
        self.trainer = stim_train._create_task(args, self.model, device)
        self.cfg = self.trainer.stim
        self.K = self.cfg.subnets
        self.H = train.images.shape[-1]
        self.data_config = data_config
        self.schedule = schedule or lr_table(args, self.model, self.steps)
        lrs_cpu, self.hp = self.schedule
        self.autocast = (partial(torch.autocast, device_type=device.type, dtype=amp_dtype, cache_enabled=False)
                         if amp_dtype is not None else nullcontext)
        self.params = [p for p in self.model.parameters()]
        # the whole training set on the device; per-epoch order and augmentation draws
        self.images, self.targets = on_device(train, device)
        self.mean = torch.tensor(data_config['mean'], device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(data_config['std'], device=device).view(1, -1, 1, 1) * 255
        self.pad, self.hflip = args.crop_padding, args.hflip
        shape = (self.steps, self.B)
        self.order = torch.zeros(shape, dtype=torch.long, device=device)
        self.oy, self.ox = (torch.zeros(shape, dtype=torch.long, device=device) for _ in range(2))
        self.flip = torch.zeros(shape, dtype=torch.bool, device=device)
        self.lrs = lrs_cpu.to(device)
        self.gstep = torch.zeros(1, dtype=torch.long, device=device)  # updates done: index of the lr table
        self.estep = torch.zeros(1, dtype=torch.long, device=device)  # step within the epoch: row of the tables
        # epoch sums of the main loss and of each sub-network slot's KL term (one cell per stream: no shared add)
        self.loss_acc = torch.zeros(self.K + 1, device=device)
        self.history: List[Dict[str, float]] = []
        self.graphs: Dict[Any, Any] = {}
        self._drawn: Optional[Tuple[int, list, list]] = None  # (epoch, config indices, input sides) of draw_plan
        self.epochs_done, self.status = 0, 'running'
        if engine == 'trainer':
            self.optimizer = stim_train._create_optimizer(args, self.model)
        else:
            self._build_pieces()

    # ------------------------------------------------------------------------------------ pieces (and graphs)
    def _build_pieces(self) -> None:
        dev = self.device
        self.main_task = StimulativeTrainer(self.model, criterion=self.trainer.criterion,
                                            stim=dataclasses.replace(self.cfg, subnets=0), device=dev, verbose=False)
        self.x_buf = torch.zeros(self.B, 3, self.H, self.H, device=dev).contiguous(memory_format=torch.channels_last)
        self.y_buf = torch.zeros(self.B, dtype=torch.long, device=dev)
        self.teacher = torch.zeros(self.B, self.model.num_classes, device=dev)
        self.gbufs = [[torch.zeros_like(p) for p in self.params] for _ in range(self.K + 1)]
        self.mom = [torch.zeros_like(p) for p in self.params]
        # gates: one per droppable block (a prefix of each stage is kept); a table row per depth configuration
        self._gates: Optional[torch.Tensor] = None
        self.hooks, slots = [], []
        for si, st in enumerate(find_stages(self.model)):
            blocks = list(st.container.children())[st.start:st.start + st.num_blocks]
            for pos in range(st.min_depth, st.num_blocks):
                self.hooks.append(blocks[pos].register_forward_hook(partial(self._gate, len(slots))))
                slots.append((si, pos))
        self.configs = valid_depths(self.model)
        self.config_index = {c: i for i, c in enumerate(self.configs)}
        self.gate_table = torch.tensor([[pos < c[si] for si, pos in slots] for c in self.configs], device=dev)
        self.plan_cfg = torch.zeros(self.steps, max(self.K, 1), dtype=torch.long, device=dev)
        self.plan_host = torch.zeros(self.steps, max(self.K, 1), dtype=torch.long,
                                     pin_memory=dev.type == 'cuda')
        self.plan_sizes: List[List[Optional[int]]] = []
        lo = max(1, int(self.cfg.min_scale * self.H)) if self.cfg.min_scale < 1 else self.H
        self.sizes = [None] if lo >= self.H else list(range(lo, self.H + 1))

    def _gate(self, k: int, module, inputs, output):
        """Forward hook of droppable block k: its output where the sub-network keeps it, else its input."""
        return output if self._gates is None else torch.where(self._gates[k], output, inputs[0])

    def _batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = [t.index_select(0, self.estep).view(-1) for t in (self.order, self.oy, self.ox, self.flip)]
        x = augment(self.images, rows[0], rows[1], rows[2], rows[3], self.pad, self.mean, self.std)
        return x, self.targets.index_select(0, rows[0])

    def full_piece(self) -> None:
        """Batch, full network, main loss (the trainer's own step with no sub-network), its gradients."""
        x, y = self._batch()
        self.x_buf.copy_(x)
        self.y_buf.copy_(y)
        with self.autocast():
            out = self.main_task(self.x_buf, self.y_buf)
        grads = torch.autograd.grad(out['loss'], self.params)
        with torch.no_grad():
            torch._foreach_copy_(self.gbufs[0], list(grads))
            self.teacher.copy_(out['output'].detach())
            self.loss_acc[0:1].add_(out['loss'].detach().float())

    def sub_piece(self, j: int, size: Optional[int]) -> None:
        """Sub-network j of the step (depths from the plan, input side `size`): its weighted KL term, gradients."""
        cfg = self.plan_cfg.index_select(0, self.estep).view(-1)[j - 1:j]
        self._gates = self.gate_table.index_select(0, cfg).view(-1)
        try:
            with self.autocast():
                z = self.model(smaller_input(self.x_buf, size))
                # as StimulativeTrainer.forward: KL- on A * LN(z) when an amplitude applies, else plain KL
                if self.cfg.loss == 'kl-' and self.trainer.amplitude is not None:
                    term = kl_minus(self.teacher, z, self.cfg.temperature, self.trainer.amplitude)
                else:
                    term = kl(self.teacher, z, self.cfg.temperature)
                loss = self.cfg.weight * term
        finally:
            self._gates = None
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            torch._foreach_copy_(self.gbufs[j], list(grads))
            self.loss_acc[j:j + 1].add_(term.detach().float())

    @torch.no_grad()
    def opt_piece(self) -> None:
        """Sum the pieces' gradients; SGD with Nesterov momentum and weight decay (torch.optim.SGD's update), the
        learning rate read from the table on the device."""
        g, hp = self.gbufs[0], self.hp
        for j in range(1, self.K + 1):
            torch._foreach_add_(g, self.gbufs[j])
        torch._foreach_add_(g, self.params, alpha=hp['weight_decay'])
        torch._foreach_mul_(self.mom, hp['momentum'])
        torch._foreach_add_(self.mom, g)
        torch._foreach_add_(g, self.mom, alpha=hp['momentum'])
        torch._foreach_mul_(g, self.lrs.index_select(0, self.gstep).view(()))
        torch._foreach_sub_(self.params, g)
        self.gstep.add_(1)
        self.estep.add_(1)

    def capture(self, warmup: int = 2) -> None:
        """One CUDA graph per piece and sub-network input size; slot j's graphs share its stream and memory pool
        (never replayed at once, outputs written to buffers outside the pool)."""
        snapshot = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.streams = [torch.cuda.Stream(self.device) for _ in range(self.K + 1)]
        self.events = [torch.cuda.Event() for _ in range(self.K + 1)]
        pools = [torch.cuda.graph_pool_handle() for _ in range(self.K + 1)]
        torch.cuda.synchronize()

        def graph(fn, slot):
            with torch.cuda.stream(self.streams[slot]):
                for _ in range(warmup):
                    fn()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pools[slot], stream=self.streams[slot]):
                fn()
            return g

        self.graphs['full'] = graph(self.full_piece, 0)
        for j in range(1, self.K + 1):
            for size in self.sizes:
                self.graphs[j, size] = graph(partial(self.sub_piece, j, size), j)
        self.graphs['opt'] = graph(self.opt_piece, 0)
        torch.cuda.synchronize()
        self.model.load_state_dict(snapshot)  # in place: the graphs keep their addresses
        with torch.no_grad():
            for t in [*self.mom, *(t for gb in self.gbufs for t in gb), self.loss_acc, self.gstep, self.estep]:
                t.zero_()
        torch.cuda.synchronize()

    # ------------------------------------------------------------------------------------------------ steps
    def start(self) -> None:
        """Epoch 0's tables and, for the graphs engine, the capture (the sampler is rewound after the capture's
        draws, so that the run sees the trainer's sequence of sub-networks from its first step)."""
        if self.engine == 'graphs':
            state = self.trainer.sampler.state_dict()
            self.new_epoch(0)
            self.capture()
            self.trainer.sampler.load_state_dict(state)
            self._drawn = None
        self.new_epoch(0)
        if self.engine == 'graphs':
            self.streams[0].wait_stream(torch.cuda.current_stream())
        self._initial = ({k: v.clone() for k, v in self.model.state_dict().items()},
                         self.trainer.sampler.state_dict())

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the state of `start` (after timing steps): weights, BN buffers, optimizer state, counters and
        the sampler, all in place (the graphs keep their addresses)."""
        _sync(self.device)
        weights, sampler = self._initial
        self.model.load_state_dict(weights)
        self.trainer.sampler.load_state_dict(sampler)
        if self.engine == 'trainer':
            self.optimizer.state.clear()
        else:
            torch._foreach_zero_(self.mom)
        self.gstep.zero_()
        self._drawn = None
        _sync(self.device)
        self.new_epoch(0)

    def draw_plan(self, epoch: int) -> None:
        """The epoch's sub-networks (host only: call it while the device works), drawn by the trainer's sampler in
        `StimulativeTrainer.forward`'s order: per step, per sub-network, depths then input side."""
        if self.engine == 'trainer' or not self.K or (self._drawn and self._drawn[0] == epoch):
            return
        sampler, rows, sizes = self.trainer.sampler, [], []
        for _ in range(self.steps):
            row, size = [], []
            for _ in range(self.K):
                row.append(self.config_index[sampler.sample_depths()])
                size.append(sampler.sample_size(self.H, self.cfg.min_scale))
            rows.append(row)
            sizes.append(size)
        self._drawn = (epoch, rows, sizes)

    def new_epoch(self, epoch: int) -> None:
        """The epoch's order and augmentation draws (on the device, seeded by run seed and epoch) and sub-network
        plan (`draw_plan`), written into the buffers the steps read (on the run's first stream)."""
        self.draw_plan(epoch)
        ctx = torch.cuda.stream(self.streams[0]) if self.graphs else nullcontext()
        with ctx, torch.no_grad():
            g = torch.Generator(device=self.device)
            g.manual_seed(batch_seed(self.spec.seed, epoch, -1))
            n, shape = len(self.images), (self.steps, self.B)
            self.order.copy_(torch.randperm(n, generator=g, device=self.device)[:self.steps * self.B].view(shape))
            self.oy.copy_(torch.randint(0, 2 * self.pad + 1, shape, generator=g, device=self.device))
            self.ox.copy_(torch.randint(0, 2 * self.pad + 1, shape, generator=g, device=self.device))
            self.flip.copy_(torch.rand(shape, generator=g, device=self.device) < self.hflip)
            self.estep.zero_()
            self.loss_acc.zero_()
            if self._drawn is not None:
                _, rows, self.plan_sizes = self._drawn
                self.plan_host.copy_(torch.tensor(rows, dtype=torch.long))  # the last copy ended at the epoch's sync
                self.plan_cfg.copy_(self.plan_host, non_blocking=True)

    def step(self, s: int) -> None:
        if self.engine == 'trainer':
            return self._trainer_step()
        self.gradients(s)
        self.update()

    def gradients(self, s: int) -> None:
        """Step s's full-network and sub-network pieces: every term's gradients in `gbufs`."""
        sizes = self.plan_sizes[s] if self.K else []
        if not self.graphs:
            self.full_piece()
            for j, size in enumerate(sizes, 1):
                self.sub_piece(j, size)
            return
        s0, ev = self.streams[0], self.events
        with torch.cuda.stream(s0):
            self.graphs['full'].replay()
            ev[0].record(s0)
        for j, size in enumerate(sizes, 1):  # the K sub-networks at once, each on its stream
            sj = self.streams[j]
            with torch.cuda.stream(sj):
                sj.wait_event(ev[0])
                self.graphs[j, size].replay()
                ev[j].record(sj)
        with torch.cuda.stream(s0):
            for j in range(1, len(sizes) + 1):
                s0.wait_event(ev[j])

    def update(self) -> None:
        if not self.graphs:
            return self.opt_piece()
        with torch.cuda.stream(self.streams[0]):
            self.graphs['opt'].replay()

    def _trainer_step(self) -> None:
        """The reference: StimulativeTrainer.forward, backward, timm's SGD at the table's learning rate."""
        x, y = self._batch()
        u = int(self.gstep)
        for group in self.optimizer.param_groups:
            group['lr'] = float(self.lrs[u])
        with self.autocast():
            out = self.trainer(x, y)
        self.optimizer.zero_grad()
        out['loss'].backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_acc[0] += out['loss_main'].float()
            self.loss_acc[1:] += out['loss_kl'].float()
            self.gstep += 1
            self.estep += 1

    def end_epoch(self, sums: torch.Tensor) -> None:
        main, kl_sum = float(sums[0]) / self.steps, float(sums[1:].sum()) / self.steps
        self.history.append(dict(loss_main=round(main, 4), loss_kl=round(kl_sum, 4)))
        self.epochs_done += 1
        if not (math.isfinite(main) and math.isfinite(kl_sum)):
            self.status = f'failed: non-finite loss at epoch {self.epochs_done - 1}'

    def release(self) -> None:
        """Drop the graphs and the training buffers; remove the gate hooks (evaluation runs the plain model)."""
        for h in getattr(self, 'hooks', []):
            h.remove()
        self.hooks, self.graphs = [], {}
        for name in ('gbufs', 'mom', 'images', 'targets', 'order', 'oy', 'ox', 'flip'):
            if hasattr(self, name):
                delattr(self, name)

    def step_cost(self) -> Dict[str, float]:
        return step_cost(self.spec.model, self.cfg, self.H)


# ------------------------------------------------------------------------------------------------ campaign
class Clock:
    def __init__(self, budget: float, start: float = T_START):
        self.start, self.budget = start, budget

    def now(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.budget - self.now()


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def train_steps(runs: Sequence[Run], start: int, stop: int) -> None:
    """Steps [start, stop) of the epoch for every run, interleaved (each run on its own streams)."""
    for s in range(start, stop):
        for r in runs:
            r.step(s)


def end_epoch(runs: Sequence[Run], next_epoch: Optional[int] = None) -> List[Run]:
    """Draw the next epoch's sub-network plans while the device works, then read the epoch's loss sums of every run
    (one device-wide sync: the sums are written on the runs' streams) and record them; returns the runs still
    training."""
    if next_epoch is not None:
        for r in runs:
            r.draw_plan(next_epoch)
    if runs:
        _sync(runs[0].device)
    sums = [r.loss_acc.cpu() for r in runs]
    for r, v in zip(runs, sums):
        r.end_epoch(v)
    return [r for r in runs if r.status == 'running']


def fit_budget(runs: List[Run], t_step: float, steps_left: int, time_left: float, eval_s: Callable[[List[Run]], float]
               ) -> List[Run]:
    """Runs to drop (lowest priority first) so that training at `t_step` s per step, scaled by the runs' executed
    FLOPs, and the evaluation fit `time_left`."""
    need = t_step * steps_left + eval_s(runs)
    if need <= time_left:
        return []
    units = {r.spec: r.cost['executed'] for r in runs}
    total = sum(units.values())
    kept, dropped = list(runs), []
    while len(kept) > 1:
        share = sum(units[r.spec] for r in kept) / total
        if t_step * share * steps_left + eval_s(kept) <= time_left:
            break
        dropped.append(kept.pop())
    return dropped


def eval_seconds_guess(runs: Sequence[Any], per_config: Dict[str, float], mode: str, sweep=SWEEP) -> float:
    """Evaluation time of `runs` (Runs or RunSpecs) at `per_config` seconds per depth configuration."""
    def n_configs(model: str) -> int:
        n = len(_profile(model))
        return 1 if mode == 'full' else n if mode == 'all' or n <= sweep[1] else sweep[0] + 1
    return sum(per_config.get(r.spec.model if isinstance(r, Run) else r.model, 0.3) * n_configs(
        r.spec.model if isinstance(r, Run) else r.model) for r in runs)


def _configs(run: Run, mode: str, sweep: Tuple[int, int] = SWEEP) -> List[Tuple[int, ...]]:
    if mode == 'full':
        return [valid_depths(run.model)[-1]]
    return _sweep_configs(run.model, mode, *sweep, 0)  # the project's sweep: the same sample for every run of an arch


def evaluate_run(run: Run, test: ImageTensors, train: ImageTensors, mode: str, bn_images: int, extra=None,
                 sweep: Tuple[int, int] = SWEEP) -> Dict[str, Any]:
    """Every selected depth configuration: BN re-estimated on `bn_images` augmented training images (the same for
    every configuration), top-1 on the test set (and on the held-out images when given)."""
    t0 = time.time()
    dev, mean, std = run.device, run.data_config['mean'], run.data_config['std']
    common = dict(input_size=(3, run.H, run.H), device=dev, channels_last=True)
    bn_loader = TensorLoader(train, run.B, True, mean, std, seed=run.spec.seed, padding=run.pad, hflip=run.hflip,
                             shuffle=True, num_batches=-(-bn_images // run.B), **common)
    autocast = partial(torch.autocast, device_type=dev.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext
    configs = _configs(run, mode, sweep)
    out: Dict[str, Any] = {}
    for key, data in [('test', test)] + ([('heldout', extra)] if extra is not None else []):
        loader = TensorLoader(data, EVAL_BATCH, False, mean, std, **common)
        rows = evaluate_depths(run.model, configs, loader, bn_loader, bn_images, dev, autocast, True, (3, run.H, run.H))
        rows = [dict(depths=r['depths'], full=r['full'], flops_share=round(r['flops_share'], 4),
                     top1=round(r['top1'], 2), bn_images=r['bn_images']) for r in rows]
        sub = [r['top1'] for r in rows if not r['full']]
        out[key] = dict(full_top1=next((r['top1'] for r in rows if r['full']), None),
                        sub_mean_top1=round(statistics.mean(sub), 2) if sub else None, configs=rows)
    out['eval_s'] = round(time.time() - t0, 1)
    out['configs_mode'] = mode
    return out


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and sd over seeds per (model, arm); ST++ minus baseline paired by seed."""
    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return dict(mean=round(statistics.mean(values), 2),
                    sd=round(statistics.stdev(values), 2) if len(values) > 1 else None, n=len(values))
    done = [r for r in runs if r.get('status') == 'done' and r.get('test')]
    out: Dict[str, Any] = {}
    for model in sorted({r['model'] for r in done}):
        arms = ['off'] + [a for a in dict.fromkeys(r['arm'] for r in done) if a != 'off']
        rows = {a: {r['seed']: r for r in done if r['model'] == model and r['arm'] == a} for a in arms}
        entry = {}
        for arm, by_seed in rows.items():
            if not by_seed:
                continue
            entry[arm] = dict(full_top1=stat([r['test']['full_top1'] for r in by_seed.values()]),
                              sub_mean_top1=stat([r['test']['sub_mean_top1'] for r in by_seed.values()]),
                              seeds=sorted(by_seed))
            if arm != 'off' and rows['off']:
                paired = sorted(set(by_seed) & set(rows['off']))
                entry[arm]['minus_off'] = dict(
                    full_top1=stat([by_seed[s]['test']['full_top1'] - rows['off'][s]['test']['full_top1']
                                    for s in paired]),
                    sub_mean_top1=stat([by_seed[s]['test']['sub_mean_top1'] - rows['off'][s]['test']['sub_mean_top1']
                                        for s in paired]), seeds=paired)
        out[model] = entry
    return out


def _record(run: Run, partial_epochs: bool) -> Dict[str, Any]:
    return dict(name=run.spec.name, model=run.spec.model, arch=run.spec.arch, arm=run.spec.arm, seed=run.spec.seed,
                flags=arm_flags(run.spec.arm), stim=dataclasses.asdict(run.cfg), epochs=run.args.epochs,
                epochs_done=run.epochs_done, partial=partial_epochs, status=run.status, steps_per_epoch=run.steps,
                batch_size=run.B, flops_per_image=run.cost, train_loss=run.history)


_PROFILES: Dict[str, List[Dict[str, Any]]] = {}


def _profile(model: str) -> List[Dict[str, Any]]:
    """FLOPs per image of every depth configuration (`elastic.depth_profile`, 32 x 32 px), once per architecture."""
    if model not in _PROFILES:
        import timm
        _PROFILES[model] = depth_profile(timm.create_model(model), (3, 32, 32))
    return _PROFILES[model]


def step_cost(model: str, cfg, side: int = 32) -> Dict[str, float]:
    """Forward FLOPs per image of one step: executed by the pieces (every block of K sub-networks, at their mean
    input area) and as specified (the sub-networks' own blocks; the st space draws every configuration alike)."""
    prof = _profile(model)
    full = max(p['flops'] for p in prof)
    area = 1. if cfg.min_scale >= 1 else statistics.mean(
        (s / side) ** 2 for s in range(max(1, int(cfg.min_scale * side)), side + 1))
    mean_sub = statistics.mean(p['flops'] for p in prof)
    return dict(full=full, executed=full * (1 + cfg.subnets * area), specified=full + cfg.subnets * mean_sub * area)


def spec_units(spec: RunSpec, epochs: int, toy: bool) -> float:
    """Forward FLOPs per image that one step of `spec` executes, without building its run."""
    from timm_stim.trainer import StimConfig
    return step_cost(spec.model, StimConfig.from_args(recipe_args(spec, epochs, toy)))['executed']


def build_runs(specs, args, train, device, amp_dtype, engine, log) -> List[Run]:
    runs, schedule = [], None  # one recipe: every run has the same learning-rate table and SGD settings
    for spec in specs:
        run = Run(spec, recipe_args(spec, args.epochs, args.toy), train, device, amp_dtype, engine, schedule)
        schedule = run.schedule
        run.cost = run.step_cost()
        run.start()
        runs.append(run)
        log(f'built {spec.name}: {run.steps} steps/epoch, K={run.K}, {len(getattr(run, "sizes", []))} input sizes')
    return runs


def selfcheck(train: ImageTensors, device: torch.device, engine: str, steps: int = 3, toy: bool = False,
              arm: str = 'k6') -> Dict[str, Any]:
    """`engine` against the reference for `steps` steps of one ResNet-20 run in float32, each step from the same
    state: the sub-networks drawn (`StimulativeTrainer.forward`'s), the gradients (its loss, `backward()`) and the
    update (timm's SGD, fed the same gradients). Free-running trajectories are no test: early in training the
    layer-normalised logits turn rounding differences of 1e-8 into gradients a few % apart within two steps."""
    spec = RunSpec('cifar_resnet20', arm, 0)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    try:
        ref, run = (Run(spec, recipe_args(spec, 1, toy), train, device, None, e) for e in ('trainer', engine))
        for r in (ref, run):
            r.start()
        opt = ref.optimizer
        for s in range(steps):
            x, y = ref._batch()
            for group in opt.param_groups:
                group['lr'] = float(ref.lrs[s])
            with ref.autocast():
                out = ref.trainer(x, y)
            opt.zero_grad()
            out['loss'].backward()
            run.gradients(s)
            _sync(device)
            got = [sum(gb[i] for gb in run.gbufs) for i in range(len(run.params))]
            want = [p.grad for p in ref.params]
            grad_diff = float(torch.cat([(a - b).flatten() for a, b in zip(want, got)]).norm()
                              / torch.cat([a.flatten() for a in want]).norm())
            plan = [(run.configs[int(c)], size or run.H) for c, size in zip(run.plan_cfg[s].tolist(), run.plan_sizes[s])
                    ] if run.K else []
            with torch.no_grad():
                for gb, g in zip(run.gbufs[0], want):
                    gb.copy_(g)
                for gb in run.gbufs[1:]:
                    torch._foreach_zero_(gb)
            _sync(device)  # the copies above are on the default stream, the update on the run's
            run.update()
            opt.step()
            _sync(device)
            with torch.no_grad():
                param_diff = max(float((a - b).abs().max()) for a, b in zip(ref.params, run.params))
                for a, b in zip(ref.params, run.params):  # the next step starts from the same state
                    b.copy_(a)
                for a, m in zip(ref.params, run.mom):
                    m.copy_(opt.state[a]['momentum_buffer'])
                ref.gstep += 1
                ref.estep += 1
            _sync(device)
            rows.append(dict(step=s, grad_diff_rel=grad_diff, param_diff_after_update=param_diff,
                             same_subnetworks=plan == list(zip(out['depths'], out['sizes']))))
        for r in (ref, run):
            r.release()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    tol = 1e-4 if device.type == 'cpu' else 1e-3
    ok = all(r['grad_diff_rel'] < tol and r['param_diff_after_update'] < 1e-6 and r['same_subnetworks'] for r in rows)
    return dict(engine=engine, reference='StimulativeTrainer.forward + backward + timm SGD', arm=arm,
                precision='float32', steps=rows, tolerance=dict(grad_diff_rel=tol, param_diff_after_update=1e-6), ok=ok)


def time_steps(runs: Sequence[Run], n: int) -> float:
    """Seconds per step of all `runs` together (steps n/2..n of epoch 0, after n/2 to fill the queues); the runs
    are reset afterwards, so that these steps count for nothing."""
    n = max(2, min(n, runs[0].steps))
    train_steps(runs, 0, n // 2)
    _sync(runs[0].device)
    t0 = time.time()
    train_steps(runs, n // 2, n)
    _sync(runs[0].device)
    t = (time.time() - t0) / (n - n // 2)
    for r in runs:
        r.reset()
    return t


def admit(specs: List[RunSpec], args, train, device, amp_dtype, engine, clock: Clock, eval_s, report, log):
    """Build and admit runs model by model in priority order: time the admitted runs with the next model's, predict
    from the per-FLOP time which of the next model's runs fit the budget, build only those, time again, and drop
    from the end of the priority order what still does not fit. Returns (every run built, the admitted)."""
    total_steps = args.epochs * (len(train) // recipe_args(specs[0], args.epochs, args.toy).batch_size)
    built: List[Run] = []
    active: List[Run] = []
    per_unit: Optional[float] = None  # seconds per step per executed forward-FLOP, from the last timing
    margin = 15.
    for model in dict.fromkeys(s.model for s in specs):
        group = [s for s in specs if s.model == model]
        if per_unit is not None:  # predict: admit the group's prefix that fits (with its building time)
            units = sum(r.cost['executed'] for r in active)
            fits = []
            for spec in group:
                units += spec_units(spec, args.epochs, args.toy)
                need = per_unit * units * total_steps + eval_s(active) + eval_s(fits + [spec]) + 2 * (len(fits) + 1)
                if need > clock.left() - margin:
                    break
                fits.append(spec)
            for spec in group[len(fits):]:
                report['skipped'].append(dict(name=spec.name, reason='time budget (predicted before building)'))
            group = fits
        if not group:
            break
        new = build_runs(group, args, train, device, amp_dtype, engine, log)
        built += new
        trial = active + new
        t_step = time_steps(trial, args.calib_steps)
        per_unit = t_step / sum(r.cost['executed'] for r in trial)
        drop = fit_budget(trial, t_step, total_steps, clock.left() - margin, eval_s)
        record = dict(runs=[r.spec.name for r in trial], s_per_step=round(t_step, 6),
                      projected_train_s=round(t_step * total_steps, 1), projected_eval_s=round(eval_s(trial), 1),
                      time_left_s=round(clock.left(), 1), dropped=[r.spec.name for r in drop])
        report.setdefault('calibration', []).append(record)
        log(f'timed {len(trial)} runs: {1e3 * t_step:.2f} ms per step of all of them, projected training '
            f'{t_step * total_steps:.0f} s + evaluation {eval_s(trial):.0f} s, {clock.left():.0f} s left'
            + (f'; dropping {", ".join(r.spec.name for r in drop)}' if drop else ''))
        for r in drop:
            r.status = 'skipped: time budget'
            report['skipped'].append(dict(name=r.spec.name, reason='time budget (projection after timing)'))
            r.release()
        active = [r for r in trial if r not in drop]
        if drop:
            later = [sp for sp in specs[specs.index(group[-1]) + 1:]]
            report['skipped'] += [dict(name=sp.name, reason='time budget (not built)') for sp in later]
            break
    return built, active


def run_campaign(args: argparse.Namespace) -> Dict[str, Any]:
    # the budget counts from the start of the process (imports included) when run from the shell
    clock = Clock(args.time_budget, start=T_START if args.argv is None else time.time())
    log = partial(_log, clock)
    device = torch.device(args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu'))
    engine = args.engine if args.engine != 'auto' else ('graphs' if device.type == 'cuda' else 'pieces')
    if engine == 'graphs' and device.type != 'cuda':
        raise SystemExit('--engine graphs needs CUDA')
    precision = args.precision if args.precision != 'auto' else ('bfloat16' if device.type == 'cuda' else 'float32')
    amp_dtype = {'bfloat16': torch.bfloat16, 'float32': None}[precision]
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    models, arms, seeds = args.models, args.arms, args.seeds
    report: Dict[str, Any] = dict(
        benchmark='gpu_campaign', issue='27 item 5', question='long schedule: ST++ (K = 1, 6) vs baseline, 200 epochs',
        command=command_line('benchmarks/gpu_campaign.py', args.argv), git_commit=git_commit(), git_dirty=git_dirty(),
        machine=machine_info(device=device.type), gpu=torch.cuda.get_device_name(device) if device.type == 'cuda'
        else None, precision=f'{precision} autocast' if amp_dtype else 'float32', engine=engine, toy=args.toy,
        recipe=str(RECIPE.relative_to(ROOT)), epochs=args.epochs, time_budget_s=args.time_budget,
        configs_mode=args.configs, runs=[], skipped=[])
    log(f'device {device} ({report["gpu"] or "cpu"}), engine {engine}, precision {report["precision"]}')

    train, test, report['data'] = load_data(Path(args.data))
    if args.toy:
        train = take(train, torch.tensor(subset_indices(train.targets.tolist(), TOY['train'])))
        test = take(test, torch.tensor(subset_indices(test.targets.tolist(), TOY['test'])))
    heldout = None
    if args.heldout:
        keep, held = split_heldout(len(train))
        train, heldout = take(train, keep), take(train, held)
        report['data']['heldout'] = heldout_record(len(keep) + len(held))
    report['data'].update(train_images=len(train), test_images=len(test))
    log(f'data: {len(train)} train / {len(test)} test images decoded in {report["data"]["decode_s"]} s')

    if args.selfcheck:
        try:
            report['selfcheck'] = selfcheck(train, device, engine, toy=args.toy)
        except Exception as e:  # e.g. a capture this torch refuses: say so in the results file, stop at once
            report['error'] = f'selfcheck raised {type(e).__name__}: {e}'
            _write(report, args.out, log)
            raise
        worst = max(r['grad_diff_rel'] for r in report['selfcheck']['steps'])
        log(f'selfcheck {engine} vs StimulativeTrainer: gradients within {worst:.1e} (relative norm), same '
            f'sub-networks and updates: {"ok" if report["selfcheck"]["ok"] else "FAILED"}')
        if not report['selfcheck']['ok']:
            report['error'] = 'selfcheck failed: the engine does not reproduce StimulativeTrainer.forward'
            _write(report, args.out, log)
            raise SystemExit(report['error'])

    per_config = {'cifar_resnet20': 0.15, 'cifar_resnet56': 0.3} if device.type == 'cuda' else {}
    if args.toy:
        per_config = {m: 0.05 for m in models}
    sweep = TOY['sweep'] if args.toy else SWEEP
    eval_s = partial(eval_seconds_guess, per_config=per_config, mode=args.configs, sweep=sweep)
    runs, active = admit(campaign_specs(models, arms, seeds), args, train, device, amp_dtype, engine, clock,
                         eval_s, report, log)
    if device.type == 'cuda':
        report['gpu_memory_after_capture_gb'] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    report['build_s'] = round(clock.now(), 1)
    epochs = args.epochs
    steps = active[0].steps if active else 0
    log(f'training {len(active)} runs at once: {", ".join(r.spec.name for r in active)}')
    t_train0, epoch_times, stopped_early = time.time(), [], False
    for epoch in range(epochs):
        if not active:
            break
        t0 = time.time()
        if epoch and clock.left() < 1.1 * statistics.median(epoch_times[-5:]) + eval_s(active) + 5:
            stopped_early = True
            log(f'time budget: stopping after {epoch} epochs (partial results)')
            break
        for r in active:
            if epoch:
                r.new_epoch(epoch)
        train_steps(active, 0, steps)
        active = end_epoch(active, epoch + 1 if epoch + 1 < epochs else None)
        epoch_times.append(time.time() - t0)
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs or epoch == 0:
            log(f'epoch {epoch + 1}/{epochs}: {statistics.mean(epoch_times[-10:]):.2f} s/epoch')
            report['runs'] = [_record(r, True) for r in runs]
            _write(report, args.out, log, quiet=True)
    _sync(device)
    report['train_s'] = round(time.time() - t_train0, 1)
    report['s_per_epoch'] = round(statistics.mean(epoch_times), 3) if epoch_times else None

    for r in runs:
        r.release()
        if r.status == 'running':
            r.status = 'done' if r.epochs_done == epochs else 'partial'
    records = []
    for r in runs:
        if r.status.startswith('skipped'):
            continue  # in report['skipped']
        rec = _record(r, r.status == 'partial')
        if r.status in ('done', 'partial'):
            mode = args.configs if clock.left() > eval_s([r]) + 5 else 'full'
            rec.update(evaluate_run(r, test, train, mode, r.args.stim_bn_recalib, heldout, sweep))
            per_config[r.spec.model] = rec['eval_s'] / max(1, len(rec['test']['configs'])) / (2 if heldout else 1)
            log(f'{r.spec.name}: full {rec["test"]["full_top1"]:.2f}  sub-network mean '
                f'{rec["test"]["sub_mean_top1"] if rec["test"]["sub_mean_top1"] is not None else "-"}  '
                f'({len(rec["test"]["configs"])} configurations, {rec["eval_s"]} s)')
        rec['train_wall_s'] = report['train_s']
        rec['wall_s'] = round(report['train_s'] + rec.get('eval_s', 0.), 1)
        records.append(rec)
    report.update(runs=records, stopped_early=stopped_early, summary=summarize(records), wall_s=round(clock.now(), 1))
    if device.type == 'cuda':
        report['gpu_memory_peak_gb'] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        names = {r['name'] for r in records}
        report['runs'] = [r for r in old.get('runs', []) if r['name'] not in names] + records
        report['summary'] = summarize(report['runs'])
        report['merged_from'] = old.get('command')
    _write(report, args.out, log)
    return report


def _log(clock: Clock, msg: str) -> None:
    print(f'[{clock.now():7.1f} s] {msg}', flush=True)


def _write(report: Dict[str, Any], out: str, log, quiet: bool = False) -> None:
    if quiet:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    else:
        write_report(report, Path(out), no_plot=True)


# ---------------------------------------------------------------------------------------------------- plan
def plan(args: argparse.Namespace) -> Dict[str, Any]:
    """FLOPs of every run, kernels per step (aten ops of the pieces, counted on the CPU) and a time estimate for an
    H200: the largest of the critical path (each run's full piece + one sub-network piece + optimiser piece in series,
    `--kernel-us` per kernel), the FLOPs (at `--tflops`) and the activation traffic (bfloat16, unfused, at `--tbps`)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    views = {'view', '_unsafe_view', 'detach', 'alias', 'expand', 'permute', 'select', 'slice', 't', 'unsqueeze',
             'squeeze', 'transpose', 'as_strided', 'unbind', 'split', 'reshape', 'lift_fresh'}

    class Count(TorchDispatchMode):
        ops, bytes = 0, 0

        def __torch_dispatch__(self, func, types, a=(), kw=None):
            out = func(*a, **(kw or {}))
            if func._schema.name.split('::')[-1] not in views:
                self.ops += 1
                outs = list(out) if isinstance(out, (tuple, list)) else [out]
                self.bytes += 2 * sum(t.numel() for t in [*a, *outs] if isinstance(t, torch.Tensor) and t.dim() == 4)
            return out

    b, batch = 8, 128  # kernels do not depend on the batch; bytes are counted at 8 and scaled to 128
    data = ImageTensors(torch.randint(0, 255, (4 * b, 3, 32, 32), dtype=torch.uint8), torch.arange(4 * b) % 10,
                        [str(i) for i in range(10)])
    steps = 50000 // batch * args.epochs
    rows, total_flops, total_bytes, crit = [], 0., 0., 0.
    for model in args.models:
        for arm in args.arms:
            spec = RunSpec(model, arm, 0)
            r = Run(spec, recipe_args(spec, args.epochs, batch_size=b), data, torch.device('cpu'), None, 'pieces')
            r.new_epoch(0)
            pieces = [('full', r.full_piece)] + ([('sub', partial(r.sub_piece, 1, 28))] if r.K else [])
            counts = {}
            for name, fn in pieces + [('opt', r.opt_piece)]:
                with Count() as c:
                    fn()
                counts[name] = (c.ops, c.bytes * batch / b)
            sub = counts.get('sub', (0, 0.))
            cost = r.step_cost()
            flops = 3 * cost['executed'] * batch * steps  # forward + backward ~ 3 forwards
            traffic = (counts['full'][1] + r.K * sub[1]) * steps
            path = (counts['full'][0] + sub[0] + counts['opt'][0]) * args.kernel_us * 1e-6 * steps
            rows.append(dict(model=model, arm=arm, forward_mflops_per_image=round(cost['full'] / 1e6, 1),
                             step_forwards_executed=round(cost['executed'] / cost['full'], 2),
                             step_forwards_specified=round(cost['specified'] / cost['full'], 2),
                             train_pflops=round(flops / 1e15, 2), traffic_tb=round(traffic / 1e12, 1),
                             ops_per_piece={k: v[0] for k, v in counts.items()},
                             kernels_per_step=counts['full'][0] + r.K * sub[0] + counts['opt'][0],
                             critical_path_s=round(path)))
            total_flops += flops * len(args.seeds)
            total_bytes += traffic * len(args.seeds)
            crit = max(crit, path)
    est = dict(runs=len(args.models) * len(args.arms) * len(args.seeds), total_pflops=round(total_flops / 1e15, 1),
               total_traffic_tb=round(total_bytes / 1e12), critical_path_s=round(crit),
               flops_s=round(total_flops / (args.tflops * 1e12)), traffic_s=round(total_bytes / (args.tbps * 1e12)),
               assumptions=dict(kernel_us=args.kernel_us, tflops=args.tflops, tbps=args.tbps))
    est['estimate_s'] = max(est['critical_path_s'], est['flops_s'], est['traffic_s'])
    for row in rows:
        print(json.dumps(row))
    print(json.dumps(est))
    return dict(runs=rows, estimate=est)


# ----------------------------------------------------------------------------------------------------- CLI
def _csv(kind):
    return lambda text: [kind(v) for v in text.split(',') if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    pp = sub.add_parser('prepare', help='pack CIFAR-10 (JPEG bytes, headers once) into one small .npz')
    pp.add_argument('--data-dir', default=str(DATA_DIR))
    pp.add_argument('--out', default=str(DATA_FILE))
    pp.add_argument('--subset', type=int, default=None, help='a class-balanced subset per split (tests)')
    for name in ('run', 'plan'):
        q = sub.add_parser(name)
        q.add_argument('--models', type=_csv(str), default=None, help=f'default {",".join(MODELS)} (--toy: '
                                                                      f'{",".join(TOY["models"])})')
        q.add_argument('--arms', type=_csv(str), default=list(ARMS))
        q.add_argument('--seeds', type=_csv(int), default=None, help=f'default {",".join(map(str, SEEDS))} (--toy: '
                                                                     f'{",".join(map(str, TOY["seeds"]))})')
        q.add_argument('--epochs', type=int, default=EPOCHS)
    r = sub.choices['run']
    r.add_argument('--data', default=str(DATA_FILE))
    r.add_argument('--out', default=None, help=f'results JSON (default {OUT.relative_to(ROOT)}; --toy: '
                                                f'{TOY_OUT.relative_to(ROOT)})')
    r.add_argument('--time-budget', type=float, default=TIME_BUDGET, metavar='S',
                   help='seconds from the start of the script: drop runs / stop epochs to end within it')
    r.add_argument('--engine', default='auto', choices=('auto', 'graphs', 'pieces', 'trainer'))
    r.add_argument('--device', default='auto')
    r.add_argument('--precision', default='auto', choices=('auto', 'bfloat16', 'float32'))
    r.add_argument('--configs', default='auto', choices=('auto', 'all', 'full'),
                   help='depth configurations evaluated: auto = all when <= 64 (ResNet-20: 27), else the full network '
                        'and the same seeded 20 (validate --robustness auto)')
    r.add_argument('--calib-steps', type=int, default=40)
    r.add_argument('--no-selfcheck', dest='selfcheck', action='store_false')
    r.add_argument('--heldout', action='store_true', help='train on the 45,000 images outside the held-out split '
                                                          'and report the held-out top-1 too')
    r.add_argument('--merge', action='store_true', help='keep the runs of an existing --out that this call does '
                                                        'not repeat')
    r.add_argument('--toy', action='store_true', help=f'CPU-sized: {TOY}')
    q = sub.choices['plan']
    q.add_argument('--kernel-us', type=float, default=4.)
    q.add_argument('--tflops', type=float, default=200.)
    q.add_argument('--tbps', type=float, default=3.)
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.cmd != 'prepare':
        toy = getattr(args, 'toy', False)
        args.models = args.models or list(TOY['models'] if toy else MODELS)
        args.seeds = args.seeds if args.seeds is not None else list(TOY['seeds'] if toy else SEEDS)
        for arm in args.arms:
            arm_flags(arm)  # unknown arms fail here, before anything is built
    if args.cmd == 'prepare':
        return prepare(args)
    if args.cmd == 'plan':
        return plan(args)
    if args.toy and args.epochs == EPOCHS:
        args.epochs = TOY['epochs']
    if args.out is None:
        args.out = str(TOY_OUT if args.toy else OUT)
    return run_campaign(args)


if __name__ == '__main__':
    main()
