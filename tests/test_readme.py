"""README.md's quick start runs as written, and the FLOPs share it quotes is the one `depth_profile` measures."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / 'README.md'


def test_quick_start_runs_as_written():
    text = README.read_text()
    section = text[text.index('## Quick start'):]
    code = section[section.index('```python\n') + len('```python\n'):section.index('```\n', section.index('```python'))]
    images = torch.randn(2, 3, 32, 32)
    scope = {'images': images}
    exec(compile(code, 'README quick start', 'exec'), scope)
    assert scope['logits'].shape == scope['logits_small'].shape == (2, 10)
    assert not torch.equal(scope['logits'], scope['logits_small'])  # the sub-network is another function
    assert torch.allclose(scope['model'](images), scope['logits'])  # the full network again after the block
    depths = tuple(int(d) for d in re.search(r'at_depth\(model, \(([\d, ]+)\)\)', code).group(1).split(','))
    share = re.search(r'# (\d+) % of the FLOPs', code).group(1)
    (profile,) = scope['model'].depth_profile(depths=[depths])
    assert round(100 * profile['flops_share']) == int(share)
