"""Whole-or-nothing writes (`timm_stim.atomic`): what the manifest, summaries, sweeps and joined parts rely on."""
import pytest

from timm_stim.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'results.json'
    target.write_text('old')
    assert atomic_write_text(target, 'new') == target
    assert target.read_text() == 'new' and sorted(p.name for p in tmp_path.iterdir()) == ['results.json']


def test_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / 'manifest.json'
    target.write_text('old')
    with pytest.raises(RuntimeError, match='killed'):
        with atomic_path(target) as tmp:
            tmp.write_text('half')
            raise RuntimeError('killed mid-write')
    assert target.read_text() == 'old' and sorted(p.name for p in tmp_path.iterdir()) == ['manifest.json']
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / 'new.json'):
            raise RuntimeError('before any byte')
    assert not (tmp_path / 'new.json').exists()
