"""The CLIP-style method's text side: frozen MiniLM sentence embeddings of the distinct captions,
computed once per run folder and cached (train/pretrain_backbone.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from train.files import atomic_path

__all__ = ["caption_vectors"]


@torch.no_grad()
def caption_vectors(captions: Sequence[str], cache: Path, batch_size: int = 256) -> tuple[list[str], Tensor]:
    """Mean-pooled (attention-masked), L2-normalised MiniLM embeddings of the distinct captions,
    computed once and cached in a plain .npz (loads without pickle)."""
    unique = sorted(set(captions))
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if npz["captions"].tolist() == unique:
                return unique, torch.from_numpy(npz["vectors"])
    from reptok.text import FrozenTextEncoder, TextEncoderConfig, sentence_embedding

    encoder = FrozenTextEncoder(TextEncoderConfig())
    chunks = []
    for start in range(0, len(unique), batch_size):
        chunks.append(sentence_embedding(*encoder(unique[start : start + batch_size])))  # (b, Dt)
    vectors = torch.cat(chunks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        np.savez(tmp, captions=np.array(unique, dtype=str), vectors=vectors.numpy())
    return unique, vectors
