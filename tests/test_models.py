"""Encoder, decoder and generators, parametrised over their presets."""

from __future__ import annotations

import math

import pytest
import torch

from reptok import flow
from reptok.decoder import DECODER_PRESETS, Decoder, ImageSpace, ImageSpaceConfig, patchify, unpatchify
from reptok.encoder import ENCODER_PRESETS, Encoder, EncoderConfig
from reptok.generator import MIXER_PRESETS, TEXT_PRESETS, MixerGenerator, TextGenerator
from tests.helpers import TINY_VAE_CONFIG, randomize_

CPU_PRESETS_ENC = ["test", "vit-s8-64px"]  # the hub presets need the network
CPU_PRESETS_DEC = ["test", "s4-64px", "xs2-latent16-map"]


# ----------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("preset", CPU_PRESETS_ENC)
def test_encoder_shapes_and_only_cls_is_trainable(preset: str) -> None:
    enc = Encoder(ENCODER_PRESETS[preset])
    trainable = [name for name, p in enc.named_parameters() if p.requires_grad]
    assert trainable == ["backbone.cls_token"]
    x = torch.rand(3, 3, 40, 56) * 2 - 1  # non-square, other size: cropped and resized
    out = enc(x, return_frozen=True)
    assert out.z.shape == (3, 1, enc.dim) and out.z_frozen.shape == (3, 1, enc.dim)
    assert torch.isfinite(out.z).all()
    torch.testing.assert_close(out.z, out.z_frozen)  # nothing adapted yet


@pytest.mark.parametrize(
    "backbone",
    ["vit_small_patch14_reg4_dinov2", "vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai"],
)
def test_real_backbone_classes_built_small(backbone: str) -> None:
    cfg = EncoderConfig(
        backbone=backbone,
        backbone_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        image_size=32,
    )
    enc = Encoder(cfg)
    assert enc(torch.zeros(2, 3, 32, 32)).z.shape == (2, 1, 32)
    if "clip" in backbone:  # normalisation comes from the backbone's own pretrained config
        torch.testing.assert_close(enc.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))


def test_cosine_term_is_zero_at_init_and_grows_when_the_token_moves() -> None:
    enc = Encoder(ENCODER_PRESETS["test"].replace(cosine_weight=2.0)).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss0 = enc(x).cosine_loss
    assert loss0 is not None and abs(float(loss0)) < 1e-5
    with torch.no_grad():
        enc.backbone.cls_token.add_(torch.randn_like(enc.backbone.cls_token))
    loss1 = enc(x).cosine_loss
    assert float(loss1) > 1e-3
    loss1.backward()
    assert enc.backbone.cls_token.grad is not None and enc.backbone.cls_token.grad.abs().sum() > 0
    # λ scales it linearly
    enc.config = enc.config.replace(cosine_weight=1.0)
    assert float(enc(x).cosine_loss) == pytest.approx(float(loss1) / 2, rel=1e-4)


def test_given_anchor_tokens_replace_the_frozen_pass() -> None:
    """Stage A hands the encoder each image's original token, computed once: same loss, same gradient."""
    enc = Encoder(ENCODER_PRESETS["test"].replace(cosine_weight=0.5)).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        enc.backbone.cls_token.add_(torch.randn_like(enc.backbone.cls_token))
        anchors = enc.eval()(x, return_frozen=True).z_frozen  # (4, 1, D)
    enc.train()
    grads = []
    for given in (None, anchors):
        enc.backbone.cls_token.grad = None
        out = enc(x, z_frozen=given)
        out.cosine_loss.backward()
        grads.append(enc.backbone.cls_token.grad.clone())
        assert float(out.cosine_loss) > 1e-3
    torch.testing.assert_close(grads[0], grads[1])
    # a wrong anchor changes the loss: the given tokens are what it measures against
    assert not torch.allclose(enc(x, z_frozen=-anchors).cosine_loss, enc(x).cosine_loss)


def test_frozen_token_lambda_inf_has_nothing_to_train() -> None:
    enc = Encoder(ENCODER_PRESETS["test"].replace(cosine_weight=math.inf)).train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc(torch.zeros(1, 3, 32, 32)).cosine_loss is None


def test_backbone_stays_in_eval_mode() -> None:
    enc = Encoder(ENCODER_PRESETS["test"]).train()
    assert enc.training and not enc.backbone.training


def test_clear_errors_for_backbones_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="timm does not know"):
        Encoder(EncoderConfig(backbone="vit_definitely_not_a_model", backbone_kwargs={}))
    with pytest.raises(ValueError, match="cls_token"):
        Encoder(EncoderConfig(backbone="resnet18", backbone_kwargs={}))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Encoder(ENCODER_PRESETS["test"])(torch.zeros(3, 32, 32))


# ----------------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("preset", CPU_PRESETS_DEC)
def test_decoder_shapes_zero_init_and_gradients(preset: str) -> None:
    cfg = DECODER_PRESETS[preset]
    dec = Decoder(cfg)
    b, s = 2, cfg.input_size
    x, t, z = torch.randn(b, cfg.in_channels, s, s), torch.rand(b), torch.randn(b, 1, cfg.token_dim)
    v = dec(x, t, z)
    assert v.shape == x.shape
    assert float(v.abs().max()) == 0.0  # zero-initialised output: training starts from v = 0
    randomize_(dec)
    v = dec(x, t, z)
    assert torch.isfinite(v).all() and float(v.abs().max()) > 0
    v.square().mean().backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert missing == []


def test_decoder_depends_on_token_time_and_input() -> None:
    cfg = DECODER_PRESETS["test"]
    dec = Decoder(cfg)
    randomize_(dec)
    x, t, z = torch.randn(2, 3, 32, 32), torch.full((2,), 0.3), torch.randn(2, 1, cfg.token_dim)
    v = dec(x, t, z)
    assert not torch.allclose(v, dec(x, t, z + 1.0))
    assert not torch.allclose(v, dec(x, t + 0.4, z))
    assert not torch.allclose(v, dec(x + 1.0, t, z))
    # samples in a batch are independent
    torch.testing.assert_close(dec(x[:1], t[:1], z[:1]), v[:1], atol=1e-5, rtol=1e-4)


def test_time_reversed_decoder_is_the_official_convention_converted() -> None:
    cfg = DECODER_PRESETS["test"]
    ours = Decoder(cfg)
    randomize_(ours)
    official = Decoder(cfg.replace(time_reversed=True))
    official.load_state_dict(ours.state_dict())
    x, t, z = torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 1, cfg.token_dim)
    # official(t) = -ours(1 - t): same network, time and velocity flipped at the boundary
    torch.testing.assert_close(official(x, t, z), -ours(x, 1 - t, z))


def test_token_map_starts_closed_and_reads_the_token() -> None:
    """A decoder given a token map starts as the same decoder without one (its embedding is
    zero-initialised), which is what lets --init add it to a trained decoder; once open, the map
    makes the output depend on z through every patch."""
    cfg = DECODER_PRESETS["test"]
    plain = Decoder(cfg)
    randomize_(plain)
    mapped = Decoder(cfg.replace(token_map_channels=2))
    assert set(mapped.state_dict()) - set(plain.state_dict()) == {
        "token_map.weight", "token_map.bias", "token_map_embed.weight"
    }  # fmt: skip
    mapped.load_state_dict(mapped.state_dict() | plain.state_dict())
    x, t, z = torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 1, cfg.token_dim)
    torch.testing.assert_close(mapped(x, t, z), plain(x, t, z))
    with torch.no_grad():
        mapped.token_map_embed.weight.normal_(std=0.1)
    z2 = torch.randn_like(z)
    gain, gain2 = mapped(x, t, z) - plain(x, t, z), mapped(x, t, z2) - plain(x, t, z2)  # (B, C, S, S)
    assert float(gain.abs().min(dim=0).values.mean()) > 0 and not torch.allclose(gain, gain2)


def test_patchify_is_row_major_cells_and_unpatchify_inverts_it() -> None:
    x = torch.randn(2, 3, 8, 8)
    patches = patchify(x, 4)  # (2, 4, 48)
    assert patches.shape == (2, 4, 48)
    # the second patch is the top-right 4×4 cell, its 16 pixels with the 3 channels last
    assert torch.equal(patches[:, 1], x[:, :, :4, 4:].permute(0, 2, 3, 1).reshape(2, 48))
    assert torch.equal(unpatchify(patches, 4, 2), x)


def test_decoder_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Decoder(DECODER_PRESETS["test"].replace(patch_size=5))
    with pytest.raises(ValueError, match="at least token_dim"):
        Decoder(DECODER_PRESETS["test"].replace(token_dim=128))


def test_decoder_overfits_one_small_batch() -> None:
    torch.manual_seed(0)
    cfg = DECODER_PRESETS["test"]
    dec = Decoder(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(4, 1, cfg.token_dim, generator=g)
    noise, t = torch.randn(x.shape, generator=g), torch.rand(4, generator=g)
    opt = torch.optim.Adam(dec.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = flow.flow_loss(lambda x_t, tt: dec(x_t, tt, z), x, noise=noise, t=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_vae_image_space_round_trip_shapes() -> None:
    from diffusers import AutoencoderKL

    vae_cfg = TINY_VAE_CONFIG
    space = ImageSpace(ImageSpaceConfig(kind="vae", vae_config=vae_cfg), AutoencoderKL.from_config(vae_cfg))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = space.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    out = space.decode(latents)
    assert out.shape == (2, 3, 32, 32) and float(out.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="needs an AutoencoderKL"):
        ImageSpace(ImageSpaceConfig(kind="vae"))


# -------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("preset", ["test", "mixer-s"])
def test_mixer_generator(preset: str) -> None:
    cfg = MIXER_PRESETS[preset]
    gen = MixerGenerator(cfg)
    assert not any("attn" in n for n, _ in gen.named_modules())  # attention-free
    z, t = torch.randn(3, 1, cfg.token_dim), torch.rand(3)
    labels = torch.tensor([0, 1, gen.null_class])
    assert float(gen(z, t, labels).abs().max()) == 0.0  # zero-init output
    randomize_(gen)
    v = gen(z, t, labels)
    assert v.shape == z.shape and torch.isfinite(v).all()
    assert not torch.allclose(v[:1], gen(z[:1], t[:1], torch.tensor([1])))  # the class matters
    v.square().mean().backward()
    assert [n for n, p in gen.named_parameters() if p.grad is None] == []
    # A token-mixing fc2 bias shifts each token by a constant across channels, which the next
    # LayerNorm over channels removes: its true gradient is 0 (float noise, sometimes exactly 0).
    dead = [n for n, p in gen.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert [n for n in dead if not n.endswith("token_mix.fc2.bias")] == []


@pytest.mark.parametrize("preset", ["test", "text-s"])
def test_text_generator(preset: str) -> None:
    cfg = TEXT_PRESETS[preset]
    gen = TextGenerator(cfg)
    randomize_(gen)
    z, t = torch.randn(2, 1, cfg.token_dim), torch.rand(2)
    text = torch.randn(2, 5, cfg.text_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    v = gen(z, t, text, mask)
    assert v.shape == z.shape and torch.isfinite(v).all()
    # padding is ignored: changing padded positions changes nothing
    text2 = text.clone()
    text2[0, 3:] = 100.0
    torch.testing.assert_close(gen(z, t, text2, mask), v)
    # the null prompt ignores the text entirely
    uncond = torch.tensor([True, True])
    torch.testing.assert_close(
        gen(z, t, text, mask, uncond=uncond), gen(z, t, torch.randn_like(text), mask, uncond=uncond)
    )
    assert not torch.allclose(gen(z, t, text, mask, uncond=uncond), v)
    (v.square().mean() + gen(z, t, text, mask, uncond=uncond).square().mean()).backward()
    missing = [n for n, p in gen.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert missing == []


def test_latent_stats_round_trip() -> None:
    gen = MixerGenerator(MIXER_PRESETS["test"])
    tokens = torch.randn(100, 1, 48) * 3 + 5
    gen.stats.set_stats(tokens)
    normed = gen.stats.normalize(tokens)
    assert abs(float(normed.mean())) < 1e-4 and float(normed.std()) == pytest.approx(1.0, rel=0.05)
    torch.testing.assert_close(gen.stats.denormalize(normed), tokens)
