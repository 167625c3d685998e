"""The float32 fallback for strided convolutions on 1-px inputs under CPU bfloat16 autocast (`timm_stim.bf16_conv`):
oneDNN's bfloat16 weight gradient is garbage there (benchmarks/results/bf16_conv.json), which ST++'s smaller
inputs hit in timm's ResNets at 32 px."""
import timm
import torch
import torch.nn as nn

import timm_stim  # noqa: F401
from timm_stim import StimulativeTrainer
from timm_stim.bf16_conv import strided_conv_guard


def _grad(conv: nn.Conv2d, x: torch.Tensor, autocast: bool, guard: bool = True):
    conv.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast), strided_conv_guard() if guard else \
            torch.autocast('cpu', enabled=autocast):
        y = conv(x)
    y.float().sum().backward()  # linear: the same upstream gradient whatever the output precision
    return conv.weight.grad.clone(), y.dtype


def test_in_the_guard_a_strided_conv_computes_the_1px_case_in_float32_and_the_rest_in_bfloat16():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, 2, 1, bias=False)
    tiny = torch.randn(16, 64, 1, 1)
    guarded, dtype = _grad(conv, tiny, autocast=True)
    reference, _ = _grad(conv, tiny, autocast=False)
    assert torch.equal(guarded, reference) and dtype == torch.bfloat16  # float32 inside, bfloat16 out as autocast
    assert _grad(conv, torch.randn(16, 64, 4, 4), autocast=True)[1] == torch.bfloat16  # other sizes: bfloat16
    stride1 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
    assert not torch.equal(_grad(stride1, tiny, autocast=True)[0], _grad(stride1, tiny, autocast=False)[0])
    assert nn.Conv2d._conv_forward.__name__ == '_conv_forward'  # restored on exit
    with strided_conv_guard(), strided_conv_guard():  # re-entrant
        pass
    assert nn.Conv2d._conv_forward.__name__ == '_conv_forward'


def test_the_trainer_step_gets_right_14px_subnetwork_gradients_and_leaves_the_model_plain():
    """ST++'s smallest CIFAR input (0.43 x 32 = 14 px) reaches layer4.0 of resnet18 as 1 px: the trainer's step runs
    it in the guard, its bfloat16 weight gradient agrees with float32's, and the model keeps timm's plain classes."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_stim', num_classes=10)
    trainer = StimulativeTrainer(model, mode='stpp', subnets=1, space='st', min_scale=0.43, verbose=False)
    assert type(model.layer4[0].conv1) is nn.Conv2d
    seen = []  # which conv forward ran layer4.0.conv1
    model.layer4[0].conv1.register_forward_hook(lambda m, i, o: seen.append(nn.Conv2d._conv_forward.__name__))
    for _ in range(3):  # a few steps (the bug reads stale memory: a fresh process may not show it unguarded)
        x, y = torch.randn(16, 3, 14, 14), torch.randint(0, 10, (16,))
        grads = []
        for autocast in (True, False):
            seen.clear()
            model.zero_grad()
            trainer.sampler = type(trainer.sampler)(trainer.sampler.space, seed=0)  # the same draw both times
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                out = trainer(x, y)
            out['loss'].backward()
            grads.append(model.layer4[0].conv1.weight.grad.clone())
            # the trainer's step runs in the guard: its forward under bfloat16, the plain one in float32
            assert set(seen) == {'_guarded_conv_forward' if autocast else '_conv_forward'}
        bf16, fp32 = grads
        assert torch.isfinite(bf16).all()
        assert (bf16 - fp32).abs().max() <= 0.1 * fp32.abs().max()
