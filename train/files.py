"""Atomic file writes for the training scripts: checkpoints, caches, backbones, data sets.

Each writer fills a temp file beside its target and moves it into place only when the write
finished, so a killed run (the recipe's stages are resumable and get killed) never leaves half a
file where the next run reads one. No torch here: `prepare_emoji.py` uses it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; when the block ends without an error the file is
    fsynced and moved onto `path` (os.replace), else removed. The temp name carries this process's id,
    so two processes filling one shared cache never write the same temp file, and ends in `path`'s
    suffix, so writers that append one to a bare name (np.save, np.savez) write where we look."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
