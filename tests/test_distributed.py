"""Two gloo processes on CPU train exactly like one process on the whole global batch.

Model choice: `convnext_atto` (LayerNorm, no BatchNorm) at 64x64 with sub-network inputs in [32, 64] (ConvNeXt's
stem and three stride-2 downsamples need a side of at least 32). With BatchNorm each rank would normalise its
half batch with its own statistics, so the two-process run would legitimately differ from the one-process run;
LayerNorm works per sample, so the per-rank mean losses (main cross-entropy and KL terms are batch means) average
under DDP to exactly the global-batch loss, and the parameters must agree up to float rounding.
"""
import os
import socket
import tempfile
import warnings

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from timm_stim import StimulativeTrainer

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
SIDE = 64
STIM = dict(mode='stpp', subnets=2, seed=3, min_scale=0.5, verbose=False)


def _model():
    torch.manual_seed(0)
    return timm.create_model('convnext_atto', num_classes=10)


def _data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 3, SIDE, SIDE, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    # depthwise conv grads of shape [C, 1, k, k] differ from the bucket view only in a size-1 dim's stride
    warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        model = _model()
        inner_calls = []
        model.register_forward_pre_hook(lambda m, a: inner_calls.append(a[0].shape[-1]))
        trainer = StimulativeTrainer(model, **STIM).prepare_distributed(device_ids=['cpu'])
        ddp = trainer.trainable_module
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        assert not ddp.find_unused_parameters and not ddp.static_graph
        ddp_calls = []
        ddp.register_forward_pre_hook(lambda m, a: ddp_calls.append(1))
        reduced = []  # ids of the parameters of every bucket all-reduced, per step

        def counting_allreduce(state, bucket):
            reduced.extend(id(p) for p in bucket.parameters())
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        opt = _optimizer(model)
        half = GLOBAL_BATCH // WORLD
        counts = []
        for step in range(STEPS):
            x, y = _data(step)
            inner_calls.clear(), ddp_calls.clear(), reduced.clear()
            out = trainer(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
            opt.zero_grad()
            out['loss'].backward()
            opt.step()
            per_param = {pid: reduced.count(pid) for pid in set(reduced)}
            counts.append(dict(
                ddp_forwards=len(ddp_calls), model_forwards=len(inner_calls),
                params_reduced=len(per_param), max_reductions=max(per_param.values()),
                depths=out['depths'], sizes=out['sizes']))
        torch.save(dict(state=model.state_dict(), counts=counts,
                        num_params=len(list(model.parameters()))), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='torch.distributed gloo needed')
def test_two_gloo_processes_match_one_process():
    # one process, whole global batch
    model = _model()
    trainer = StimulativeTrainer(model, **STIM)
    opt = _optimizer(model)
    ref_plans = []
    for step in range(STEPS):
        out = trainer(*_data(step))
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        ref_plans.append((out['depths'], out['sizes']))
    assert any(s < SIDE for _, sizes in ref_plans for s in sizes)  # smaller inputs were exercised

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(out_dir, f'rank{r}.pt'), weights_only=False) for r in range(WORLD)]

    for r, res in enumerate(results):
        for step, c in enumerate(res['counts']):
            # same sub-networks as the single process, on every rank
            assert (c['depths'], c['sizes']) == ref_plans[step]
            # one forward of the DDP module runs the full network and the K sub-networks
            assert c['ddp_forwards'] == 1 and c['model_forwards'] == 1 + STIM['subnets']
            # one gradient all-reduce per step: every parameter reduced exactly once
            assert c['params_reduced'] == res['num_params'] and c['max_reductions'] == 1
    ref = model.state_dict()
    for k, v in ref.items():
        for res in results:
            torch.testing.assert_close(res['state'][k], v, rtol=1e-4, atol=2e-6, msg=lambda m: f'{k}: {m}')
        assert torch.equal(results[0]['state'][k], results[1]['state'][k]), k
    # the steps really moved the weights
    assert not torch.equal(ref['stem.0.weight'], _model().state_dict()['stem.0.weight'])


def test_prepare_distributed_passes_no_deprecated_ddp_flag():
    """broadcast_buffers=True (timm's train.py always passes it) is DDP's default: it is not forwarded, so recent
    torch raises no FutureWarning about it; broadcast_buffers=False (--no-ddp-bb) still reaches DDP."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()))
    dist.init_process_group('gloo', rank=0, world_size=1)
    try:
        for flag in (True, False):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                task = StimulativeTrainer(torch.nn.Sequential(torch.nn.Linear(4, 4)), mode='off', verbose=False)
                ddp = task.prepare_distributed(device_ids=['cpu'], broadcast_buffers=flag).trainable_module
            assert ddp.broadcast_buffers is flag
            if flag:
                assert not [str(w.message) for w in caught if 'broadcast_buffers' in str(w.message)]
    finally:
        dist.destroy_process_group()
