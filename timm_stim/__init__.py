"""timm-stim: Stimulative Training (ST) and ST++ (arXiv:2210.04153, arXiv:2305.02507) for timm residual networks.

`import timm_stim` registers the `*_stim` models in timm's registry and exports the public API. The training task
(`StimulativeTrainer`, `StimConfig`, ...) is loaded on first use: it pulls in `timm.task` and `timm.loss`, which
`import timm` does not, and inference does not need them. The commands (`timm_stim.train`, `.validate`,
`.release`, `.hub`, `.cards`) and the data path (`timm_stim.data`, `.loaders`) are never imported here, nor is
anything that draws (matplotlib); `benchmarks/import_time.py` measures what the import adds to `import timm`.
"""
from typing import TYPE_CHECKING

from .version import __version__, MIN_TIMM


def _check_timm() -> None:
    """A clear error instead of an ImportError deep inside when timm is older than MIN_TIMM."""
    import timm
    have = tuple(int(p) for p in timm.__version__.split('.')[:3] if p.isdigit())
    if have < tuple(int(p) for p in MIN_TIMM.split('.')):
        raise ImportError(f'timm-stim needs timm>={MIN_TIMM}, found timm {timm.__version__}: '
                          f'pip install "timm>={MIN_TIMM}"')


_check_timm()
from .depth import (
    Stage, find_stages, register_adapter, supported_families, full_depths, depth_ranges, check_depths,
    subnetwork, run_subnetworks, MultiDepthForward, compile_blocks, valid_depths, export_subnetwork,
)
from .sampling import SPACES, DepthSampler, build_space, parse_space, sample_depths, stpp_kept_set
from .losses import kl, kl_minus, normalize_logits, smaller_input, DEFAULT_AMPLITUDE
from .elastic import (
    set_depth, get_depth, at_depth, list_depths, pick_depth, depth_profile, export_depth, save_exported, recalibrate_bn,
    stats_table,
)
from . import models  # registers the CIFAR architectures and the *_stim models with timm

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from .trainer import MODES, MODE_DEFAULTS, StimConfig, StimulativeTrainer, add_stim_args  # noqa: F401

# loaded on first access (PEP 562): name -> submodule
_LAZY = {name: 'trainer' for name in ('MODES', 'MODE_DEFAULTS', 'StimConfig', 'StimulativeTrainer', 'add_stim_args')}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
