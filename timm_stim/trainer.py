"""`StimulativeTrainer`: the ST / ST++ training step as a timm `TrainingTask`.

A drop-in for timm's `ClassificationTask` (same constructor, `forward(input, target) -> dict`), so timm's own
`train.py` and any hand-written loop can use it. The whole step is `forward`, top to bottom.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.task import ClassificationTask
from timm.utils.model import unwrap_model

from .bf16_conv import strided_conv_guard
from .depth import MultiDepthForward, compile_blocks, depth_ranges, find_stages, recalibrate_bn, run_subnetworks
from .losses import DEFAULT_AMPLITUDE, MIN_LN_CLASSES, kl, kl_minus, logit_amplitude, normalize_logits
from .sampling import SPACES, DepthSampler, build_space, parse_space

__all__ = ['StimConfig', 'StimulativeTrainer', 'MODES', 'MODE_DEFAULTS', 'LOSSES', 'STIM_CHECKS', 'add_stim_args']

_logger = logging.getLogger(__name__)

MODES = ('off', 'st', 'stpp')
LOSSES = ('kl', 'kl-')

# the one set of range checks on the numeric knobs: StimConfig.resolved (Python API) and every command's --stim-*
# flags (add_stim_args) use this table
STIM_CHECKS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    'subnets': (lambda v: v >= 0, 'must be >= 0'),
    'temperature': (lambda v: v > 0, 'must be > 0'),
    'weight': (lambda v: v >= 0, 'must be >= 0'),
    'amplitude': (lambda v: v > 0, 'must be > 0'),
    'min_scale': (lambda v: 0 < v <= 1, 'must be in (0, 1]'),
}


def _check_space_text(space: str) -> None:
    """Refuse a malformed space string before any model exists (stage counts are checked by `build_space`)."""
    if space not in SPACES:
        parse_space(space)


@dataclass
class StimConfig:
    """Every knob of ST / ST++. `None` fields take the mode's default (`MODE_DEFAULTS`).

    mode: 'off' (plain baseline), 'st' or 'stpp'. subnets: K sub-networks per step (KL terms summed).
    space: 'st', 'stpp' or per-stage kept-sets. loss: 'kl' or 'kl-'. temperature: T. weight: lambda.
    amplitude: A of KL- and of the normalised main loss (default None: the class-count rule of
    `losses.logit_amplitude`, A = 1 as released for >= 3 classes, raw logits for 2; a value overrides it).
    main_on_normalized: compute the main loss on A * LN(z_main), as the released ST++ code does. min_scale:
    sub-network input side uniform in [int(min_scale * H), H] (1.0 disables smaller inputs). seed: seed of the
    sub-network sampler.
    """
    mode: str = 'stpp'
    subnets: Optional[int] = None
    space: Optional[Union[str, Sequence[Sequence[int]]]] = None
    loss: Optional[str] = None
    temperature: float = 1.0
    weight: float = 1.0
    amplitude: Optional[float] = None
    main_on_normalized: Optional[bool] = None
    min_scale: Optional[float] = None
    seed: int = 0

    def resolved(self) -> 'StimConfig':
        """The mode's defaults filled in, every knob checked (`ValueError` naming the knob)."""
        if self.mode not in MODES:
            raise ValueError(f'unknown stim mode {self.mode!r}: use one of {MODES}.')
        defaults = MODE_DEFAULTS[self.mode]
        out = StimConfig(**{k: (defaults.get(k) if v is None else v) for k, v in asdict(self).items()})
        if out.loss not in LOSSES:
            raise ValueError(f'unknown stim loss {out.loss!r}: use one of {LOSSES}.')
        for name, (ok, rule) in STIM_CHECKS.items():
            value = getattr(out, name)
            if value is not None and not ok(value):
                raise ValueError(f'{name} {rule}, got {value}.')
        if isinstance(out.space, str):
            _check_space_text(out.space)
        return out

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'StimConfig':
        """The resolved config of parsed `add_stim_args` flags; the seed is `--stim-seed`, else `--seed`, else 0."""
        seed = getattr(args, 'stim_seed', None)
        if seed is None:
            seed = getattr(args, 'seed', None) or 0
        return cls(
            mode=args.stim_mode, subnets=args.stim_subnets, space=args.stim_space, loss=args.stim_loss,
            temperature=args.stim_temp, weight=args.stim_weight, amplitude=args.stim_amplitude,
            main_on_normalized=args.stim_main_normalized, min_scale=args.stim_min_scale, seed=seed,
        ).resolved()


MODE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # the baseline: same recipe with no sub-network (lambda = 0)
    'off': dict(subnets=0, space='st', loss='kl', main_on_normalized=False, min_scale=1.0),
    # ST (NeurIPS 2022): one sub-network from the full space, plain KL, full-size input
    'st': dict(subnets=1, space='st', loss='kl', main_on_normalized=False, min_scale=1.0),
    # ST++ released recipe: K = 6, space3-style rule, KL-, random smaller inputs, main CE on A * LN(z)
    'stpp': dict(subnets=6, space='stpp', loss='kl-', main_on_normalized=True, min_scale=0.43),
}


def _checked(name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` converting with `convert` and applying `STIM_CHECKS[name]`."""
    ok, rule = STIM_CHECKS[name]

    def parse(text: str) -> Any:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f'{rule}, got {text}')
        return value

    parse.__name__ = convert.__name__  # argparse names the type in "invalid int value" errors
    return parse


def _space_arg(text: str) -> str:
    try:
        _check_space_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_stim_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the `--stim-*` knobs of `StimConfig` (read them back with `StimConfig.from_args`); returns the group."""
    g = parser.add_argument_group('Stimulative training (timm-stim)')
    g.add_argument('--stim-mode', default='stpp', choices=MODES,
                   help='off = plain baseline; st = ST (NeurIPS 2022); stpp = ST++ released recipe')
    g.add_argument('--stim-subnets', type=_checked('subnets', int), default=None, metavar='K',
                   help='sub-networks per step (default: 1 for st, 6 for stpp)')
    g.add_argument('--stim-space', type=_space_arg, default=None, metavar='SPACE',
                   help="sampling space: st, stpp, or per-stage kept-sets such as '3|2,3|3'")
    g.add_argument('--stim-loss', default=None, choices=LOSSES, help='kl (ST) or kl- (ST++)')
    g.add_argument('--stim-temp', type=_checked('temperature', float), default=1.0, metavar='T')
    g.add_argument('--stim-weight', type=_checked('weight', float), default=1.0, metavar='LAMBDA')
    g.add_argument('--stim-min-scale', type=_checked('min_scale', float), default=None, metavar='S',
                   help='sub-network input side uniform in [int(S*H), H] (default 0.43 for stpp, 1.0 = off)')
    g.add_argument('--stim-amplitude', type=_checked('amplitude', float), default=None, metavar='A',
                   help='amplitude A of KL- and of the normalised main loss (default: 1, the released value, for '
                        '>= 3 classes; raw logits, i.e. plain KL and CE on z, for 2 classes, where LN(z) = +-1 has no '
                        'gradient); a value overrides that rule')
    g.add_argument('--stim-main-normalized', action=argparse.BooleanOptionalAction, default=None,
                   help='main loss on A * LN(z) (default: on for stpp)')
    g.add_argument('--stim-seed', type=int, default=None, metavar='N',
                   help="seed of the sub-network sampler (default: the command's --seed, else 0)")
    return g


def _check_smaller_inputs(model: nn.Module, cfg: StimConfig) -> None:
    """Refuse random smaller inputs (ST++ §3.2) for a model whose patch embedding needs a fixed input size."""
    if cfg.subnets == 0 or cfg.min_scale >= 1:
        return
    patch_embed = getattr(unwrap_model(model), 'patch_embed', None)
    if patch_embed is None:
        return
    fix = ('create the model with dynamic_img_size=True, dynamic_img_pad=True, or use min_scale=1.0 '
           '(no smaller inputs).')
    if getattr(patch_embed, 'strict_img_size', False):
        raise ValueError(f'{type(unwrap_model(model)).__name__} accepts only {patch_embed.img_size} inputs, but '
                         f'min_scale={cfg.min_scale} feeds sub-networks smaller ones: {fix}')
    if not getattr(patch_embed, 'dynamic_img_pad', True) and max(getattr(patch_embed, 'patch_size', (1,))) > 1:
        raise ValueError(f'{type(unwrap_model(model)).__name__} needs input sides divisible by its patch size '
                         f'{patch_embed.patch_size}, but min_scale={cfg.min_scale} draws any side: {fix}')


def _num_classes(model: nn.Module) -> Optional[int]:
    """The model's class count (timm's `num_classes`, else its classifier's `out_features`); None when unknown or
    when the model has no classifier (num_classes 0: its outputs are features, the count is read from them)."""
    m = unwrap_model(model)
    n = getattr(m, 'num_classes', None)
    if not isinstance(n, int) and hasattr(m, 'get_classifier'):
        n = getattr(m.get_classifier(), 'out_features', None)
    return n if isinstance(n, int) and n > 0 else None


class StimulativeTrainer(ClassificationTask):
    """ST / ST++ as a timm training task: `out = trainer(images, targets)`.

    Returns `{'loss', 'output', 'loss_main', 'loss_kl', 'depths', 'sizes'}`: total loss, the full network's raw
    logits, the main loss, a tensor of the K KL terms, and the sampled depths and input sizes of each
    sub-network. Takes any timm loss (`criterion`, or `criterion_kwargs` for `create_classification_loss`),
    including mixup / cutmix soft targets, label smoothing and BCE. With `mode='off'` it equals
    `ClassificationTask`.
    """

    def __init__(
            self,
            model: nn.Module,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            stim: Optional[StimConfig] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
            **stim_kwargs: Any,
    ):
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose)
        if stim is not None and stim_kwargs:
            raise ValueError('pass either stim=StimConfig(...) or keyword knobs, not both.')
        self.stim = (stim or StimConfig(**stim_kwargs)).resolved()
        if self.stim.mode != 'off':
            _check_smaller_inputs(model, self.stim)
            stages = find_stages(model)
            space = build_space(self.stim.space, depth_ranges(stages))
        else:
            space = []
        self.sampler = DepthSampler(space, seed=self.stim.seed)
        self.num_classes: Optional[int] = None  # the class count the amplitude rule was applied to
        self.amplitude: Optional[float] = None  # A of the normalised-logit terms; None: raw logits (2 classes)
        classes = _num_classes(model)
        if classes is not None:
            self._apply_class_rule(classes)  # else at the first step, from the logits
        if verbose and (self.stim.mode != 'off' or self._uses_ln()):
            _logger.info(f'StimulativeTrainer: {self.stim}, {len(self.sampler)} sub-network configurations; '
                         f'{self.logit_rule}')

    def _apply_class_rule(self, num_classes: int) -> None:
        """Set `amplitude` for `num_classes` (`losses.logit_amplitude`); refuse a 1-class model in st / stpp."""
        cfg = self.stim
        if cfg.mode != 'off' and num_classes < 2:
            raise ValueError(f'--stim-mode {cfg.mode} needs at least 2 classes, got a model with {num_classes} '
                             f'output: a softmax over one class is constant, so the KL terms carry no signal (a binary '
                             f'task needs --num-classes 2; or use --stim-mode off).')
        self.num_classes = num_classes
        if num_classes < 2:  # mode off: plain training, nothing to decide
            self.amplitude = cfg.amplitude if cfg.amplitude is not None else DEFAULT_AMPLITUDE
            return
        self.amplitude = logit_amplitude(num_classes, cfg.amplitude)
        if self._uses_ln() and num_classes < MIN_LN_CLASSES and self.amplitude is not None:
            _logger.warning(f'StimulativeTrainer: {num_classes} classes with an explicit amplitude A = '
                            f'{self.amplitude:g}: A * LN(z) is +-A whatever z, so KL-'
                            f'{" and the main loss" if cfg.main_on_normalized else ""} have no gradient (but for '
                            f'LN\'s eps where the two logits nearly tie): nothing learns from them; leave the '
                            f'amplitude unset to use raw logits.')

    def _uses_ln(self) -> bool:
        """True when a term of the step is on A * LN(z): KL- with sub-networks, or the normalised main loss."""
        cfg = self.stim
        return cfg.loss == 'kl-' and (cfg.subnets > 0 or bool(cfg.main_on_normalized))

    @property
    def logit_rule(self) -> str:
        """The logits the KL and main terms use, in words (logged at construction, or at the first step)."""
        cfg, c = self.stim, self.num_classes
        if c is None:
            return 'logits rule set at the first step (class count unknown)'
        if not self._uses_ln():
            return f'{c} classes, raw logits'
        terms = ' and '.join(t for t, on in (('KL-', cfg.subnets > 0), ('main loss', cfg.main_on_normalized)) if on)
        if self.amplitude is None:
            return (f'{c} classes: raw logits for {terms} (LN(z) is +-1 at {c} classes: plain KL, main loss on z; '
                    f'losses.logit_amplitude)')
        how = 'explicit' if cfg.amplitude is not None else f'the released value, rule for >= {MIN_LN_CLASSES} classes'
        return f'{c} classes: {terms} on A * LN(z), A = {self.amplitude:g} ({how})'

    # ------------------------------------------------------------------------------------------- the step
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, Any]:
        """One ST++ step: full network, K sampled sub-networks on smaller copies, main loss + summed KL."""
        cfg = self.stim
        plan = [(self.sampler.sample_depths(), self.sampler.sample_size(input.shape[-2], cfg.min_scale))
                for _ in range(cfg.subnets)]
        with strided_conv_guard():  # CPU bfloat16: 1-px inputs of strided convs in float32 (timm_stim.bf16_conv)
            outputs = self._passes(input, plan)
        z_main = outputs[0]
        if z_main.shape[-1] != self.num_classes:
            self._apply_class_rule(z_main.shape[-1])
            if self.verbose:
                _logger.info(f'StimulativeTrainer: {self.logit_rule}')
        # KL-: A * LN(z) (ST++ §3.1); None at 2 classes, where LN(z) = +-1: raw logits (losses.logit_amplitude)
        direction_only = cfg.loss == 'kl-' and self.amplitude is not None

        main_logits = normalize_logits(z_main, self.amplitude) if direction_only and cfg.main_on_normalized else z_main
        loss_main = self.criterion(main_logits, target)
        if direction_only:
            kls = [kl_minus(z_main, z_sub, cfg.temperature, self.amplitude) for z_sub in outputs[1:]]
        else:
            kls = [kl(z_main, z_sub, cfg.temperature) for z_sub in outputs[1:]]
        loss_kl = torch.stack(kls) if kls else z_main.new_zeros(0)
        loss = loss_main + cfg.weight * loss_kl.sum() if kls else loss_main
        return {
            'loss': loss,
            'output': z_main,
            'loss_main': loss_main.detach(),
            'loss_kl': loss_kl.detach(),
            'depths': [d for d, _ in plan],
            'sizes': [s if s is not None else input.shape[-2] for _, s in plan],
        }

    def _passes(self, input: torch.Tensor, plan) -> list:
        module = self.trainable_module
        if isinstance(module, (nn.parallel.DistributedDataParallel, MultiDepthForward)):
            return module(input, plan)  # one forward of the wrapped module: full network + K sub-networks
        return run_subnetworks(module, input, plan)

    # --------------------------------------------------------------------------------------------- timm API
    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'StimulativeTrainer':
        """Wrap the model in DDP so that the full network and all K sub-networks share one forward/backward."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        if ddp_kwargs.get('find_unused_parameters') or ddp_kwargs.get('static_graph'):
            raise ValueError('StimulativeTrainer uses every parameter in the full pass: keep '
                             'find_unused_parameters=False and static_graph=False.')
        if device_ids is not None and all(not isinstance(d, int) and torch.device(d).type == 'cpu'
                                          for d in device_ids):
            device_ids = None  # DDP on CPU takes no device_ids
        if ddp_kwargs.get('broadcast_buffers') is True:
            # DDP's default in every torch version; recent torch warns (FutureWarning) whenever it is passed at all
            del ddp_kwargs['broadcast_buffers']
        self.trainable_module = DDP(MultiDepthForward(self.trainable_module), device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile each residual block in place (`depth.compile_blocks`), not the whole model.

        A whole-model compile recompiles for every new sub-network; per-block graphs serve them all. Call before
        `prepare_distributed`. Returns the (same) eval model.
        """
        model = unwrap_model(self.trainable_module)
        compile_blocks(model, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = model
        return model

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The sampler's RNG state, so that a resumed run draws the same sub-networks."""
        return {} if ema else {'stim_sampler': self.sampler.state_dict()}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if state and 'stim_sampler' in state and not ema:
            self.sampler.load_state_dict(state['stim_sampler'])

    def recalibrate_bn(self, batches: Iterable, num_images: int = 2000) -> int:
        """Re-estimate BN statistics with the full network (ST: after every epoch, ~2,000 images).

        The EMA model, when there is one, is re-estimated on the same batches: its averaged buffers mix the
        statistics of the sub-network passes (smaller inputs, fewer blocks) just as the trained model's do.
        """
        models = [unwrap_model(self.trainable_module)]
        if self.has_ema():
            models.append(unwrap_model(self.get_eval_model(ema=True)))
        return recalibrate_bn(models, batches, num_images)
