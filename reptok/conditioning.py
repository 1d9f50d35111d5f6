"""How a generator is asked for classes or prompts: the conditional, unconditional and joint
velocity functions that classifier-free guidance (`reptok.sampling.guided`) combines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from reptok.generator import MixerGenerator, TextGenerator
from reptok.sampling import VelocityFn
from reptok.text import FrozenTextEncoder


class Velocities(NamedTuple):
    cond: VelocityFn  # (x_t, t) -> v given the condition
    uncond: VelocityFn  # ... given the null condition
    joint: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # both from one batch of 2B rows


def class_velocities(gen: MixerGenerator, y: Tensor) -> Velocities:
    """The mixer asked for class ids `y` (B,), and for its null class."""
    null = torch.full_like(y, gen.null_class)
    both = torch.cat([y, null])  # (2B,)
    return Velocities(
        cond=lambda x, t: gen(x, t, y),
        uncond=lambda x, t: gen(x, t, null),
        joint=lambda x, t: gen(x.repeat(2, 1, 1), t.repeat(2), both).chunk(2),
    )


def text_velocities(
    gen: TextGenerator, text_encoder: FrozenTextEncoder, prompts: Sequence[str]
) -> Velocities:
    """The text generator asked for `prompts`, and for the null text. Each distinct prompt is
    encoded once (the app asks for 16 samples of one prompt)."""
    unique = list(dict.fromkeys(str(p) for p in prompts))
    text, mask = text_encoder(unique)  # (U, L, Dt), (U, L)
    where = torch.tensor([unique.index(str(p)) for p in prompts], device=text.device)
    text, mask = text[where], mask[where]  # (B, L, Dt), (B, L)
    drop = torch.ones(len(prompts), dtype=torch.bool, device=text.device)
    text2, mask2 = text.repeat(2, 1, 1), mask.repeat(2, 1)  # (2B, L, Dt), (2B, L)
    drop2 = torch.cat([~drop, drop])  # first half conditional, second half null text
    return Velocities(
        cond=lambda x, t: gen(x, t, text, mask),
        uncond=lambda x, t: gen(x, t, text, mask, uncond=drop),
        joint=lambda x, t: gen(x.repeat(2, 1, 1), t.repeat(2), text2, mask2, uncond=drop2).chunk(2),
    )
