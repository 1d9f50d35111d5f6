"""Sampling as plain functions, separate from the models (models only expose forward).

A velocity function `v(x_t, t)` is integrated from t = 0 (noise) to t = 1 (data), the
convention of `reptok.flow`. Randomness only enters through `seeded_noise`, which draws
on a CPU `torch.Generator` so that a seed gives the same noise on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""(x_t (B, ...), t (B,)) -> velocity (B, ...)."""
ProgressFn = Callable[[int, int], None]
"""Called as progress(step_done, total_steps) after every step."""
Sampler = Literal["euler", "heun"]
SAMPLERS: tuple[str, ...] = ("euler", "heun")


def seeded_noise(
    shape: Sequence[int],
    seed: int | Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of `shape` (B, ...), reproducible per sample.

    Sample i is drawn from its own generator seeded with `seed + i` (or `seed[i]`), so
    image i of a batch is the same whether 4 or 16 were asked for. CPU generators make
    the numbers independent of the device the model runs on.
    """
    b, *rest = shape
    seeds = [int(seed) + i for i in range(b)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b}")
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn(rest, generator=g) for g in gens])  # (B, ...)
    return noise.to(device=device, dtype=dtype)


def time_grid(steps: int, *, shift: float = 1.0) -> Tensor:
    """`steps + 1` times from 0 (noise) to 1 (data).

    shift > 1 spends more of the steps near the noise end (the SD3 timestep shift, applied
    to the noise level σ = 1 − t: σ' = shift·σ / (1 + (shift − 1)·σ)); shift = 1 is uniform.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    sigma = 1.0 - torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return (1.0 - sigma).float()


def guided(
    cond_fn: VelocityFn,
    uncond_fn: VelocityFn | None,
    *,
    cfg_scale: float = 1.0,
    interval: tuple[float, float] = (0.0, 1.0),
    joint_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> VelocityFn:
    """Classifier-free guidance v_u + s·(v_c − v_u), applied only for t in `interval`.

    Guidance only inside an interval (Kynkäänniemi et al. 2024; the paper uses [0.3, 0.9]
    in this t = 0-is-noise convention) keeps the diversity of the early steps and the
    detail of the last ones. Outside it, and whenever s = 1, the conditional velocity
    alone is used, so s = 1 is exactly the conditional model. `joint_fn(x, t)` -> (v_cond,
    v_uncond) from one batched call, if given, replaces the two calls inside the interval (one
    forward of 2B rows beats two of B on a CPU, where small models are overhead-bound).
    """
    lo, hi = interval
    if cfg_scale == 1.0 or uncond_fn is None:
        return cond_fn

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t_now = float(t.reshape(-1)[0])  # one time for the whole batch while sampling
        if not lo <= t_now <= hi:
            return cond_fn(x, t)
        v_cond, v_uncond = joint_fn(x, t) if joint_fn is not None else (cond_fn(x, t), uncond_fn(x, t))
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    return velocity


def _batch_time(t: Tensor, x: Tensor) -> Tensor:
    return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])  # (B,)


@torch.no_grad()
def euler(velocity_fn: VelocityFn, x: Tensor, grid: Tensor, progress: ProgressFn | None = None) -> Tensor:
    """First-order integration along `grid`; one velocity evaluation per step."""
    n = len(grid) - 1
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        x = x + (t_next - t).to(x.dtype) * velocity_fn(x, _batch_time(t, x))
        if progress is not None:
            progress(i + 1, n)
    return x


@torch.no_grad()
def heun(velocity_fn: VelocityFn, x: Tensor, grid: Tensor, progress: ProgressFn | None = None) -> Tensor:
    """Second-order (trapezoidal predictor-corrector); two evaluations per step.

    The velocity at t = 1 is defined for flow matching, so the last step is Heun too.
    """
    n = len(grid) - 1
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        h = (t_next - t).to(x.dtype)
        v = velocity_fn(x, _batch_time(t, x))
        x_pred = x + h * v
        v_next = velocity_fn(x_pred, _batch_time(t_next, x))
        x = x + 0.5 * h * (v + v_next)
        if progress is not None:
            progress(i + 1, n)
    return x


def integrate(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    steps: int,
    sampler: Sampler = "euler",
    shift: float = 1.0,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Carry `noise` (t = 0) to data (t = 1) with the named sampler."""
    grid = time_grid(steps, shift=shift)
    if sampler == "euler":
        return euler(velocity_fn, noise, grid, progress)
    if sampler == "heun":
        return heun(velocity_fn, noise, grid, progress)
    raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")


def number_of_evaluations(steps: int, sampler: Sampler) -> int:
    """Velocity evaluations per sample, the cost that matters on a CPU."""
    return steps if sampler == "euler" else 2 * steps
