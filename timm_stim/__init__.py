"""timm-stim: Stimulative Training (ST) and ST++ (arXiv:2210.04153, arXiv:2305.02507) for timm residual networks.

`import timm_stim` registers the `*_stim` models in timm's registry and exports the public API.
"""
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
    subnetwork, run_subnetworks, MultiDepthForward, compile_blocks, valid_depths, export_subnetwork, recalibrate_bn,
)
from .sampling import SPACES, DepthSampler, build_space, parse_space, sample_depths, stpp_kept_set
from .losses import kl, kl_minus, normalize_logits, smaller_input, DEFAULT_AMPLITUDE
from .trainer import MODES, MODE_DEFAULTS, StimConfig, StimulativeTrainer, add_stim_args
from .elastic import set_depth, get_depth, at_depth, list_depths, depth_profile, export_depth, save_exported
from . import models  # registers the CIFAR architectures and the *_stim models with timm
