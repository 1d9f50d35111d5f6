"""Paths between two tokens: spherical (slerp, the default: tokens are normalised [cls] outputs)
or linear (lerp). Plain tensor functions; `RepTok.interpolate` is this one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

InterpolationMode = Literal["slerp", "lerp"]


def interpolate_tokens(
    z_a: Tensor, z_b: Tensor, weights: Sequence[float] | Tensor, mode: InterpolationMode = "slerp"
) -> Tensor:
    """Tokens between z_a and z_b ((1, 1, D) or (D,)) at `weights` -> (N, 1, D).
    Weight 0 gives z_a, weight 1 gives z_b, exactly."""
    a, b = z_a.reshape(1, -1).float(), z_b.reshape(1, -1).float()  # (1, D)
    w = torch.as_tensor(weights, dtype=torch.float32, device=a.device).reshape(-1, 1)  # (N, 1)
    if mode == "lerp":
        out = (1 - w) * a + w * b
    elif mode == "slerp":
        cos = torch.nn.functional.cosine_similarity(a, b).clamp(-1.0, 1.0)
        omega = torch.arccos(cos)  # (1,)
        if float(omega) < 1e-4:  # nearly parallel: slerp degenerates to lerp
            out = (1 - w) * a + w * b
        else:
            out = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)
    else:
        raise ValueError(f"mode must be 'slerp' or 'lerp', got {mode!r}")
    return out[:, None, :]  # (N, 1, D)
