"""Test-time refinement of the one token: gradient descent on the decoder's own flow loss for the
image at hand, the decoder frozen, starting from the encoder's token.

    z = refine(model, image)                      # (1, 1, D), RefineConfig() = 25 steps
    better = model.decode(z, seed=0)[0]

RepTok's encoder is amortised: one ViT pass guesses the token for any image. For one image a few
gradient steps find a token that the same decoder renders closer to it, as GAN inversion refines an
encoder's guess. The result is still one token of the same size, but it is not what the encoder
gives and it drifts from it: tokens that the generators or the manifold compare stay the encoder's
(interpolation may start and end on refined tokens: the app's slider, `interpolate --refine-steps`).
Measured on the shipped emoji default: MODEL_CARD.md, sessions 27–28.

Written here rather than taken from a library: a loop of Adam steps over one tensor with the
decoder's training loss (`reptok.flow.flow_loss`), which no inversion package fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from reptok.config import Config
from reptok.decoder import Decoder
from reptok.flow import TimeSampling, flow_loss
from reptok.image_tensors import ImageInput
from reptok.sampling import ProgressFn

if TYPE_CHECKING:
    from reptok.pipeline import RepTok


@dataclass
class RefineConfig(Config):
    steps: int = 25  # Adam steps; 0 keeps the encoder's token
    lr: float = 0.1  # swept 0.02-0.2 on held-out emoji (MODEL_CARD.md, session 28): best in 10-50 steps
    samples: int = 4  # (t, noise) draws per image and step: each step's loss is a noisy estimate
    schedule: TimeSampling = "logit_normal"  # the decoder's training schedule
    seed: int = 0  # the draws: the same image, token and seed give the same result


REFINE_PRESETS: dict[str, RefineConfig] = {
    "off": RefineConfig(steps=0),
    "fast": RefineConfig(steps=10),
    "default": RefineConfig(),
    "long": RefineConfig(steps=100),
}


def refine_tokens(
    decoder: Decoder, latents: Tensor, z: Tensor, config: RefineConfig, progress: ProgressFn | None = None
) -> Tensor:
    """Tokens (B, 1, D) that `decoder` renders closer to `latents` (B, C, S, S), the images in its
    image space (pixels or VAE latents), from `z` (B, 1, D). The decoder's weights get no gradient."""
    with torch.inference_mode(False), torch.enable_grad():
        token = z.detach().clone().float().requires_grad_(True)  # (B, 1, D); not an inference tensor
        target = latents.detach().clone().repeat_interleave(config.samples, 0)  # (B·K, C, S, S)
        optimizer = torch.optim.Adam([token], lr=config.lr)
        generator = torch.Generator(device="cpu").manual_seed(config.seed)

        def velocity(x_t: Tensor, t: Tensor) -> Tensor:
            return decoder(x_t, t, token.repeat_interleave(config.samples, 0))  # token (B·K, 1, D)

        for step in range(config.steps):
            loss = flow_loss(velocity, target, schedule=config.schedule, generator=generator)
            (token.grad,) = torch.autograd.grad(loss, [token])  # the token's gradient alone
            optimizer.step()
            if progress is not None:
                progress(step + 1, config.steps)
    return token.detach()


def refine(
    model: RepTok,
    images: ImageInput,
    z: Tensor | None = None,
    config: RefineConfig | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """One token per image (B, 1, D), refined on that image from `z` (default: the encoder's)."""
    x = model.preprocess(images)  # (B, 3, S, S) in [-1, 1]
    with torch.inference_mode(), model.autocast():
        latents = model.image_space.encode(x).float()  # (B, C, S', S')
    start = model.encode(x) if z is None else z
    with model.autocast():
        return refine_tokens(model.decoder, latents, start, config or RefineConfig(), progress).float()
