"""The pieces of a training checkpoint that are not the model: its format tag, the global RNG states,
the fingerprint of the frozen weights (what --resume checks instead of storing them), and the atomic
write (train/files.py's, for torch.save). train/common.py's Trainer puts them together.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from train.files import atomic_path

CHECKPOINT_FORMAT = "reptok-train-checkpoint"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, python) as plain types and tensors."""
    np_kind, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_kind, torch.from_numpy(np_key.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def fingerprint(named: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal exactly when the tensors are."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_atomic(state: Any, path: Path) -> None:
    """torch.save through `train.files.atomic_path`: a kill never leaves half a file at `path`, and
    two processes writing the same file (a shared cache) each write their own temp file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
