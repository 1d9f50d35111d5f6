"""The baseline of bench/efficiency.py: a DiT-style class-conditional flow model on the pixel grid.

RepTok's claim is that a generator over one token trains with far less compute than one over a
2-D latent grid. The grid model here is the library's own flow transformer (reptok.decoder:
patches, axial RoPE, adaptive norm on time), with the token it normally gets from the encoder
replaced by a learned class embedding (row `num_classes` is the null class for classifier-free
guidance). So both sides share the flow convention, the loss, the time sampling and the
guidance code; what differs is what is generated: one token, or every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reptok.decoder import Decoder, DecoderConfig
from reptok.sampling import Sampler, guided, integrate, seeded_noise


@dataclass
class ClassDiTConfig:
    decoder: DecoderConfig  # token_dim is the class embedding's size; input_size the image side
    num_classes: int
    class_dropout: float = 0.1  # fraction of training labels replaced by the null class (as the mixer's)


class ClassDiT(nn.Module):
    """v_θ(x_t, t, y) over images (B, 3, S, S): the flow decoder conditioned on a class token."""

    def __init__(self, config: ClassDiTConfig) -> None:
        super().__init__()
        self.config = config
        self.net = Decoder(config.decoder)
        self.class_embed = nn.Embedding(config.num_classes + 1, config.decoder.token_dim)  # last: null

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """x_t (B, C, S, S), t (B,), labels (B,) in [0, num_classes] -> v (B, C, S, S)."""
        return self.net(x_t, t, self.class_embed(labels)[:, None])  # the class as a (B, 1, D) token


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_depth(config: ClassDiTConfig, target_parameters: int) -> int:
    """The depth whose parameter count is closest to `target_parameters` (every layer is the same size)."""
    counts = [
        parameter_count(ClassDiT(ClassDiTConfig(config.decoder.replace(depth=d), config.num_classes)))
        for d in (1, 2)
    ]
    per_layer = counts[1] - counts[0]
    return max(1, round((target_parameters - counts[0]) / per_layer) + 1)


@torch.inference_mode()
def sample_images(
    model: ClassDiT,
    labels: Tensor,
    *,
    steps: int,
    sampler: Sampler,
    cfg_scale: float,
    cfg_interval: tuple[float, float],
    seed: int,
) -> Tensor:
    """Images (B, 3, S, S) in [-1, 1] for labels (B,), guided as RepTok.sample_tokens guides tokens."""
    null = torch.full_like(labels, model.null_class)
    velocity = guided(
        lambda x, t: model(x, t, labels),
        lambda x, t: model(x, t, null),
        cfg_scale=cfg_scale,
        interval=cfg_interval,
    )
    c, s = model.config.decoder.in_channels, model.config.decoder.input_size
    noise = seeded_noise((len(labels), c, s, s), seed, device=labels.device)
    return integrate(velocity, noise, steps=steps, sampler=sampler).clamp(-1.0, 1.0)
