"""Whole-or-nothing file writes: write to a temporary file beside the target, then rename it over the target."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ['atomic_path', 'atomic_write_text']


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = '.tmp') -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block ends without error, rename it over `path`.
    On an error (or a kill) `path` keeps its old content and the temporary file is removed (or left, never read)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write `text` to `path` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
