"""Helpers shared by the tests: tiny configs from the "test" presets, weight perturbation."""

from __future__ import annotations

import torch

from reptok.decoder import DECODER_PRESETS
from reptok.encoder import ENCODER_PRESETS
from reptok.generator import MIXER_PRESETS, TEXT_PRESETS
from reptok.pipeline import RepTokConfig, SamplingConfig
from reptok.text import TextEncoderConfig

# A diffusers AutoencoderKL small enough for CPU tests: 3 -> 4 channels, 2× downsampling.
TINY_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8,
}  # fmt: skip

CLASS_NAMES = ["Smileys & Emotion", "Food & Drink", "Travel & Places"]


def tiny_config(with_text: bool = True) -> RepTokConfig:
    return RepTokConfig(
        encoder=ENCODER_PRESETS["test"],
        decoder=DECODER_PRESETS["test"],
        class_generator=MIXER_PRESETS["test"],
        text_generator=TEXT_PRESETS["test"].replace(text_dim=384) if with_text else None,
        text_encoder=TextEncoderConfig() if with_text else None,
        class_names=CLASS_NAMES,
        sampling=SamplingConfig(decode_steps=3, generate_steps=4),
    )


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter with small noise, so zero-inits don't hide gradients and the
    outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
