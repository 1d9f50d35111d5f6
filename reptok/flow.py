"""The flow-matching convention, written once and used everywhere.

    x_t = t · x_data + (1 − t) · noise,      t = 0 is noise, t = 1 is data,
    velocity target  v = x_data − noise,     so dx_t/dt = v.

Decoder (stage A) and generators (stage B) train with `flow_loss`; `sampling.py`
integrates the learned velocity from t = 0 to t = 1. Checkpoints written with the
opposite convention (the official RepTok decoder: t = 1 is noise, v = noise − x)
are converted at the boundary, in the model that wraps them, never here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

TimeSampling = Literal["uniform", "logit_normal"]


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against `like`."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The point x_t on the straight path from noise (t = 0) to data (t = 1)."""
    tt = _expand_time(t, x_data)
    return tt * x_data + (1.0 - tt) * noise


def velocity_target(x_data: Tensor, noise: Tensor) -> Tensor:
    """d x_t / d t along the straight path: constant in t."""
    return x_data - noise


def sample_time(
    n: int,
    *,
    schedule: TimeSampling = "logit_normal",
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times in (0, 1).

    logit-normal (SD3, and the official RepTok decoder) puts more steps in the middle of
    the path, where the velocity is hardest to predict; uniform is the plain rectified flow.
    Drawn on the generator's device (CPU by default) so a seed means the same thing everywhere.
    """
    gen_device = generator.device if generator is not None else "cpu"
    if schedule == "uniform":
        t = torch.rand(n, generator=generator, device=gen_device)
    elif schedule == "logit_normal":
        t = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, device=gen_device))
    else:
        raise ValueError(f"unknown time schedule {schedule!r}; use 'uniform' or 'logit_normal'")
    return t.to(device)


def flow_loss(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],
    x_data: Tensor,
    *,
    noise: Tensor | None = None,
    t: Tensor | None = None,
    schedule: TimeSampling = "logit_normal",
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Conditional flow-matching loss ‖v_θ(x_t, t) − (x_data − noise)‖².

    `velocity_fn(x_t, t)` closes over any conditioning (token, class, text). Noise and
    times come from `generator` when not given, so a training step is reproducible.
    With reduction="none" the loss is per sample, shape (B,).
    """
    b = x_data.shape[0]
    if noise is None:
        gen_device = generator.device if generator is not None else "cpu"
        noise = torch.randn(x_data.shape, generator=generator, device=gen_device, dtype=x_data.dtype)
        noise = noise.to(x_data.device)
    if t is None:
        t = sample_time(b, schedule=schedule, generator=generator, device=x_data.device)
    x_t = interpolate(x_data, noise, t)  # (B, ...)
    v = velocity_fn(x_t, t.to(x_data.dtype))  # (B, ...)
    per_sample = (v.float() - velocity_target(x_data, noise).float()).square().flatten(1).mean(1)  # (B,)
    return per_sample.mean() if reduction == "mean" else per_sample
