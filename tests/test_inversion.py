"""Test-time refinement of the one token (reptok.inversion): it lowers the decoder's own loss on
the image, leaves the decoder alone, and is reproducible; 0 steps is the encoder's token."""

from __future__ import annotations

import pytest
import torch

from reptok.decoder import ImageSpaceConfig
from reptok.flow import flow_loss
from reptok.inversion import REFINE_PRESETS, refine
from reptok.pipeline import RepTok
from tests.helpers import TINY_VAE_CONFIG, randomize_, tiny_config


def _model(space: str) -> RepTok:
    cfg = tiny_config(with_text=False)
    if space == "vae":
        cfg.decoder = cfg.decoder.replace(in_channels=4, input_size=16, patch_size=4)
        cfg.image_space = ImageSpaceConfig(kind="vae", vae_config=TINY_VAE_CONFIG)
    torch.manual_seed(0)
    model = RepTok.from_config(cfg)
    randomize_(model.decoder, seed=1)
    return model


def _loss(model: RepTok, images: torch.Tensor, z: torch.Tensor) -> float:
    """The decoder's flow loss on the images given z, over fixed draws of (t, noise): 32 per image."""
    with torch.no_grad():
        latents = model.image_space.encode(model.preprocess(images)).repeat_interleave(32, 0)
        g = torch.Generator().manual_seed(123)
        return float(
            flow_loss(lambda x, t: model.decoder(x, t, z.repeat_interleave(32, 0)), latents, generator=g)
        )


@pytest.mark.parametrize("space", ["pixel", "vae"])
@pytest.mark.parametrize("preset", ["fast", "default"])
def test_refining_lowers_the_decoders_loss_on_the_image(space: str, preset: str) -> None:
    model = _model(space)
    images = (
        torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0)) * 2
        - 1
    )
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    z0 = model.encode(images)  # (2, 1, D)
    z = refine(model, images, config=REFINE_PRESETS[preset].replace(lr=0.05))
    assert z.shape == z0.shape and not torch.equal(z, z0)
    assert _loss(model, images, z) < _loss(model, images, z0)  # on draws the refinement never saw
    # The decoder is untouched and collects no gradients; the same seed gives the same token.
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.decoder.parameters())
    assert torch.equal(refine(model, images, config=REFINE_PRESETS[preset].replace(lr=0.05)), z)


def test_zero_steps_is_the_encoders_token_and_a_given_start_is_used() -> None:
    model = _model("pixel")
    images = torch.zeros(1, 3, model.image_size, model.image_size)
    assert torch.equal(refine(model, images, config=REFINE_PRESETS["off"]), model.encode(images))
    start = torch.randn(1, 1, model.token_dim)
    assert torch.equal(refine(model, images, start, config=REFINE_PRESETS["off"]), start)
    calls = []
    refine(model, images, config=REFINE_PRESETS["fast"], progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 10) for i in range(1, 11)]
