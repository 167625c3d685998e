"""Losses and input strategies of ST / ST++: `kl`, `kl_minus`, `normalize_logits`, `smaller_input`.

ST (arXiv:2210.04153 §3): L_KL = T^2 * KL(softmax(t / T) || softmax(z / T)), batch mean, teacher t detached.
ST++ KL- (arXiv:2305.02507 §3.1): both logits are replaced by A * LN(z), a layer norm over the class dimension
without affine parameters, so that only the direction of the centred logit vector is matched. The released ST++
code computes the main cross-entropy on A * LN(z) too, with A = 1 (ImageNet, C = 1000 classes).

Class-count rule (ours, not the paper's; `logit_amplitude`): the normalised-logit terms need C >= 3.
- C >= 3: A = 1, the released value, whatever C (C = 1000 is the released recipe, bit for bit; C = 10 is unchanged).
  A * LN(z) caps the softmax (at about 0.81 for C = 3, 0.76 for C = 10, 1 - 2e-11 for C = 1000) but it still has
  a gradient, and a larger A does not help: A = sqrt(1000 / C) (the ImageNet norm A * sqrt(C)) stalls CIFAR-10
  training, since the gradient through LN scales with A / std(z) (at initialisation the main CE's gradient is ~76x
  the raw CE's with A = 10), while A = 1 trains as well as the baseline (benchmarks/amplitude.py,
  benchmarks/results/amplitude.json).
- C = 2: a centred 2-vector has one direction up to sign, so LN(z) is exactly (+1, -1) or (-1, +1) whatever z is:
  every A * LN(z) term is piecewise constant in z: zero gradient (but for LN's eps where the two logits tie), and no
  amplitude fixes that. Both terms then
  use the raw logits: the main cross-entropy on z, and the distillation term becomes ST's plain KL on raw logits
  (arXiv:2210.04153 §3).
  Measured (benchmarks/few_classes.py, results/few_classes.json: 1-epoch fine-tunes of the default
  cifar_resnet20_stim tag on Fashion-MNIST subsets, 2 seeds): at 2 classes the rule gives full top-1 83.3 (off: 82.7),
  A = 1 stays at chance (50.0); at 3 and 10 classes the rule is the released A = 1 (73.5 vs off 77.0, seeds 68.5 /
  78.5 against 78.0 / 76.0; 84.5 vs 84.3).
- C = 1: refused (a softmax over one class is constant: no KL term of ST or ST++ carries any signal).
An explicit amplitude (`--stim-amplitude`, `StimConfig.amplitude`) overrides the rule: A * LN(z) with that A for
every C (at C = 2 the trainer warns that these terms have no gradient).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['logit_rule', 'kl', 'kl_minus', 'normalize_logits', 'smaller_input', 'logit_amplitude', 'LN_EPS', 'DEFAULT_AMPLITUDE',
           'MIN_LN_CLASSES']

LN_EPS = 1e-7  # as in the released ST++ code
# A of KL-: the released value, for every class count >= 3 (logit_amplitude). A = sqrt(1000 / C) (keeping the
# ImageNet norm A * sqrt(C)) stalls CIFAR-10 training (at initialisation A / std(z) ~ 40: the main CE's gradient is
# ~76x the raw CE's, KL-'s ~20x), while A = 1 trains as well as the baseline; see benchmarks/amplitude.py,
# benchmarks/results/amplitude.json.
DEFAULT_AMPLITUDE = 1.0
MIN_LN_CLASSES = 3  # below this, LN(z) over the classes is constant (+-1): the normalised terms use raw logits


def logit_amplitude(num_classes: int, amplitude: Optional[float] = None) -> Optional[float]:
    """A of ST++'s normalised-logit terms for `num_classes` classes (the class-count rule of the module docstring).

    `amplitude` (explicit) is returned as given; else `DEFAULT_AMPLITUDE` for C >= 3, and None for C = 2, meaning
    "raw logits": the main loss on z and plain `kl` in place of `kl_minus`. `ValueError` for C < 2.
    """
    if num_classes < 2:
        raise ValueError(f'ST / ST++ need at least 2 classes, got a model with {num_classes} output: a softmax over '
                         f'one class is constant, so no KL term carries any signal (binary task: 2 classes; or '
                         f"mode 'off').")
    if amplitude is not None:
        return float(amplitude)
    return DEFAULT_AMPLITUDE if num_classes >= MIN_LN_CLASSES else None


def logit_rule(num_classes: int, amplitude: Optional[float] = None) -> str:
    """The rule `logit_amplitude` applies, in words (what a release records of how its tag was trained)."""
    a = logit_amplitude(num_classes, amplitude)
    return 'raw logits (2 classes)' if a is None else f'A * LN(z), A = {a:g}'


def normalize_logits(z: torch.Tensor, amplitude: float = 1.0) -> torch.Tensor:
    """A * (z - mean) / sqrt(var + 1e-7) over the class dimension (non-affine layer norm)."""
    return amplitude * F.layer_norm(z, z.shape[-1:], eps=LN_EPS)


def kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over the batch.

    The teacher is detached here, so no gradient reaches it through this term.
    """
    t = teacher.detach().float() / temperature
    s = student.float() / temperature
    kl_elem = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction='none', log_target=True)
    return kl_elem.sum(-1).mean() * temperature ** 2


def kl_minus(
        teacher: torch.Tensor,
        student: torch.Tensor,
        temperature: float = 1.0,
        amplitude: float = 1.0,
) -> torch.Tensor:
    """KL- (direction-only KL): `kl` between the layer-normalised logits A * LN(teacher) and A * LN(student)."""
    return kl(normalize_logits(teacher.detach(), amplitude), normalize_logits(student, amplitude), temperature)


def smaller_input(x: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """The batch resized (bilinear) so that its height is `size` (width scaled alike); `None` keeps `x`.

    ST++ §3.2 (random smaller inputs). Always resize the original batch, never a resized copy.
    """
    if size is None or size == x.shape[-2]:
        return x
    h, w = x.shape[-2:]
    out = (int(size), max(1, round(w * size / h)))
    return F.interpolate(x, size=out, mode='bilinear', align_corners=False)
