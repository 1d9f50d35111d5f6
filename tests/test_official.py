"""reptok.official: the released RepTok-XL checkpoint, converted into this library's format.

The checkpoint is rebuilt here at a tiny size from this file's own table of the official key
layout and shapes (no official code involved), with random values, saved as a Lightning
checkpoint, converted, and loaded back: every official tensor must land where it belongs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from app_parts.registry import ModelRegistry
from reptok.__main__ import main
from reptok.official import SD_VAE, convert_official, load_checkpoint
from reptok.pipeline import RepTok
from reptok.sampling import seeded_noise
from tests.helpers import TINY_VAE_CONFIG

# The official architecture, tiny: DINOv2-reg (one 64-wide head), decoder, MLP-Mixer over 1000 classes.
D, ENC_DEPTH = 64, 1
WIDTH, LAYERS, HEAD_DIM, MAPPING = 96, 1, 48, 32
MIX_WIDTH, MIX_DEPTH, CLASSES = 48, 2, 1000
IMAGE = 64  # the first stage's image_size: latents of side IMAGE // 8 = 8, 2×2 patches
SCALE = 2.0  # the first stage's scale_factor
DEC = "first_stage.decoder.decoder."
DINO = DEC + "encoder.dino."


def dino_shapes() -> dict[str, tuple[int, ...]]:
    """DinoVisionTransformer (with registers): the positional grid is always 37×37 (518 px)."""
    shapes = {
        "cls_token": (1, 1, D), "pos_embed": (1, 1 + 37 * 37, D), "register_tokens": (1, 4, D),
        "mask_token": (1, D), "patch_embed.proj.weight": (D, 3, 14, 14), "patch_embed.proj.bias": (D,),
        "norm.weight": (D,), "norm.bias": (D,),
    }  # fmt: skip
    for i in range(ENC_DEPTH):
        for name, shape in {
            "norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D),
            "attn.qkv.bias": (3 * D,), "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "ls1.gamma": (D,),
            "norm2.weight": (D,), "norm2.bias": (D,), "mlp.fc1.weight": (4 * D, D), "mlp.fc1.bias": (4 * D,),
            "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,), "ls2.gamma": (D,),
        }.items():  # fmt: skip
            shapes[f"blocks.{i}.{name}"] = shape
    return shapes


def decoder_shapes() -> dict[str, tuple[int, ...]]:
    heads, w, m = WIDTH // HEAD_DIM, WIDTH, MAPPING
    shapes = {
        "backbone.mid_merge.pre_proj.proj.weight": (w, 16), "backbone.mid_merge.proj.weight": (w, w),
        "backbone.mid_split.post_proj.norm.scale": (w,), "backbone.mid_split.post_proj.proj.weight": (16, w),
        "time_emb.weight": (m // 2, 1), "time_in_proj.weight": (m, m),
        "mapping.in_norm.scale": (m,), "mapping.out_norm.scale": (m,),
    }  # fmt: skip
    for i in range(LAYERS):
        a, f = f"backbone.mid_level.{i}.self_attn.", f"backbone.mid_level.{i}.ff."
        shapes |= {
            a + "norm.linear.weight": (w, m), a + "qkv_proj.weight": (3 * w, w), a + "scale": (heads,),
            a + "pos_emb.freqs": (2, heads, HEAD_DIM // 8), a + "out_proj.weight": (w, w),
            f + "norm.linear.weight": (w, m), f + "up_proj.weight": (6 * w, w),
            f + "down_proj.weight": (w, 3 * w),
        }  # fmt: skip
    for i in range(2):
        shapes |= {f"mapping.blocks.{i}.norm.scale": (m,), f"mapping.blocks.{i}.up_proj.weight": (6 * m, m)}
        shapes[f"mapping.blocks.{i}.down_proj.weight"] = (m, 3 * m)
    return shapes


def mixer_shapes() -> dict[str, tuple[int, ...]]:
    """MLPMixer1D under torch.compile (`_orig_mod`): Sequential(Linear, blocks..., LayerNorm, Linear)."""
    w, mix = MIX_WIDTH, "mixer._orig_mod."
    shapes = {
        "pos_embed": (1, 1, D), "label_embedder.embedding_table.weight": (CLASSES + 1, D),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        mix + "0.weight": (w, D), mix + "0.bias": (w,),
        f"{mix}{MIX_DEPTH + 1}.weight": (w,), f"{mix}{MIX_DEPTH + 1}.bias": (w,),
        f"{mix}{MIX_DEPTH + 2}.weight": (D, w), f"{mix}{MIX_DEPTH + 2}.bias": (D,),
    }  # fmt: skip
    for i in range(1, MIX_DEPTH + 1):
        b = f"{mix}{i}."
        shapes |= {
            b + "0.norm.weight": (w,), b + "0.norm.bias": (w,), b + "0.fn.0.weight": (9, 3, 1),
            b + "0.fn.0.bias": (9,), b + "0.fn.3.weight": (3, 9, 1), b + "0.fn.3.bias": (3,),
            b + "1.norm.weight": (w,), b + "1.norm.bias": (w,), b + "1.fn.0.weight": (4 * w, w),
            b + "1.fn.0.bias": (4 * w,), b + "1.fn.3.weight": (w, 4 * w), b + "1.fn.3.bias": (w,),
        }  # fmt: skip
    return shapes


def rope_freqs(head_dim: int, heads: int) -> Tensor:
    """The official AxialRoPE2D frequencies, stored in its state dict: (2, heads, head_dim / 8)."""
    d = head_dim // 8
    freqs = torch.linspace(math.log(math.pi), math.log(10 * math.pi), heads * d + 1)[:-1].exp()
    return torch.stack([freqs] * 2).view(2, d, heads).mT.contiguous()


def official_state(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Tensor]:
        return {prefix + k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}

    fine_tuned = rand(dino_shapes(), "")
    state = {DINO + "model." + k: v for k, v in fine_tuned.items()}
    # the frozen original differs only in its [cls] embedding; RepTokImageEncoder holds a bf16 copy
    state |= {DINO + "target_model." + k: v.clone() for k, v in fine_tuned.items()}
    state[DINO + "target_model.cls_token"] = torch.randn(1, 1, D, generator=g)
    state |= {"first_stage.encoder.encoder." + k: v.to(torch.bfloat16) for k, v in fine_tuned.items()}
    state |= rand({"temp_pos_embed": (1, 1, 1, D), "new_reg": (1, 2, D)}, DINO)
    proj = {"fc.weight": (WIDTH, D), "fc.bias": (WIDTH,), "ln.weight": (WIDTH,), "ln.bias": (WIDTH,)}
    state |= rand(proj, DINO + "backbone.")
    state |= rand(decoder_shapes(), DEC)
    freqs = rope_freqs(HEAD_DIM, WIDTH // HEAD_DIM)  # fixed, not random
    state |= {f"{DEC}backbone.mid_level.{i}.self_attn.pos_emb.freqs": freqs for i in range(LAYERS)}
    vae = {k: tuple(v.shape) for k, v in AutoencoderKL.from_config(TINY_VAE_CONFIG).state_dict().items()}
    state |= rand(vae, DEC + "ae.ae.")
    state |= rand(mixer_shapes(), "model.net.") | rand(mixer_shapes(), "ema_model.net.")
    state |= rand({"fid.inception.fc.weight": (3, 3)}, "metric_tracker.")
    return state


def write_checkpoint(path: Path, state: dict[str, Tensor], hparams: object = None) -> Path:
    if hparams is None:
        params = {"config_path": "configs/model/reptok.yaml", "scale_factor": SCALE, "image_size": IMAGE}
        stage = {"target": "reptok.trainer.TrainerAutoencoder", "params": params}
        hparams = {"first_stage_cfg": stage, "lr": 1e-4, "ema_rate": 0.9999}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": 600_000}, path)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], Path]:
    state = official_state()
    return state, write_checkpoint(tmp_path_factory.mktemp("official") / "tiny.ckpt", state)


@pytest.fixture(scope="module")
def converted(official: tuple[dict[str, Tensor], Path], tmp_path_factory: pytest.TempPathFactory) -> RepTok:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent copies: the converter has nothing to warn about
        out = tmp_path_factory.mktemp("converted") / "xl-tiny"
        convert_official(official[1], out, vae="checkpoint", vae_config=TINY_VAE_CONFIG, dtype=torch.float32)
    return RepTok.from_pretrained(out)


def test_encoder_weights_land_in_place(official: tuple[dict[str, Tensor], Path], converted: RepTok) -> None:
    """The fp32 fine-tuned DINOv2, in timm's layout: cls position folded in, grid resampled to 224 px."""
    o, enc = official[0], converted.encoder.backbone.state_dict()
    ft = {k.removeprefix(DINO + "model."): v for k, v in o.items() if k.startswith(DINO + "model.")}
    for key in [k for k in ft if k.startswith(("blocks.", "patch_embed.", "norm."))]:
        assert torch.equal(enc[key], ft[key]), key
    assert torch.equal(enc["cls_token"], ft["cls_token"] + ft["pos_embed"][:, :1])
    assert torch.equal(enc["reg_token"], ft["register_tokens"])
    grid = ft["pos_embed"][:, 1:].reshape(1, 37, 37, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)  # 224 px / 14
    assert torch.equal(enc["pos_embed"], grid.permute(0, 2, 3, 1).reshape(1, 256, D))
    frozen = o[DINO + "target_model.cls_token"] + o[DINO + "target_model.pos_embed"][:, :1]
    assert torch.equal(converted.encoder.frozen_cls_token, frozen)


def test_decoder_weights_land_in_place(official: tuple[dict[str, Tensor], Path], converted: RepTok) -> None:
    o, dec = official[0], converted.decoder.state_dict()
    pairs = {
        "backbone.mid_merge.pre_proj.proj.weight": "patch_embed.weight",
        "backbone.mid_merge.proj.weight": "joint_proj.weight",
        "backbone.mid_split.post_proj.norm.scale": "out_norm.scale",
        "backbone.mid_split.post_proj.proj.weight": "out_proj.weight",
        "time_emb.weight": "time_embed.freqs",
        "time_in_proj.weight": "time_embed.in_proj.weight",
        "mapping.in_norm.scale": "time_embed.in_norm.scale",
        "mapping.out_norm.scale": "time_embed.out_norm.scale",
    }
    for i in range(LAYERS):
        a, f, ours = f"backbone.mid_level.{i}.self_attn.", f"backbone.mid_level.{i}.ff.", f"layers.{i}."
        pairs[a + "norm.linear.weight"] = ours + "attn.norm.linear.weight"
        pairs[a + "qkv_proj.weight"] = ours + "attn.qkv.weight"
        pairs[a + "scale"] = ours + "attn.scale"
        pairs[a + "out_proj.weight"] = ours + "attn.out.weight"
        pairs[f + "norm.linear.weight"] = ours + "ff.norm.linear.weight"
        pairs[f + "up_proj.weight"] = ours + "ff.ff.up.weight"
        pairs[f + "down_proj.weight"] = ours + "ff.ff.down.weight"
    for i in range(2):
        b, ours = f"mapping.blocks.{i}.", f"time_embed.blocks.{i}."
        pairs[b + "norm.scale"] = ours + "norm.scale"
        pairs[b + "up_proj.weight"] = ours + "ff.up.weight"
        pairs[b + "down_proj.weight"] = ours + "ff.down.weight"
    assert len(pairs) + LAYERS == len(decoder_shapes())  # every official tensor but the fixed RoPE
    for theirs, ours in pairs.items():
        assert torch.equal(dec[ours], o[DEC + theirs]), theirs
    # The official decoder projects z + temp_pos_embed: folded into the projection, exactly.
    z = torch.randn(3, 1, D)
    zt = z + o[DINO + "temp_pos_embed"].reshape(1, 1, D)
    fc = F.linear(zt, o[DINO + "backbone.fc.weight"], o[DINO + "backbone.fc.bias"])
    want = F.layer_norm(fc, (WIDTH,), o[DINO + "backbone.ln.weight"], o[DINO + "backbone.ln.bias"])
    with torch.no_grad():
        assert torch.allclose(converted.decoder.token_proj(z), want + F.pad(zt, (0, WIDTH - D)), atol=1e-5)
    vae = converted.image_space.vae.state_dict()
    assert all(torch.equal(vae[k], o[DEC + "ae.ae." + k]) for k in vae)


def test_generator_weights_land_in_place(official: tuple[dict[str, Tensor], Path], converted: RepTok) -> None:
    """The EMA weights (what the official code samples with), Conv1d kernels squeezed."""
    o, gen = official[0], converted.class_generator.state_dict()
    ema = {k.removeprefix("ema_model.net."): v for k, v in o.items() if k.startswith("ema_model.net.")}
    mix = "mixer._orig_mod."
    pairs = {"pos_embed": "pos_embed", "label_embedder.embedding_table.weight": "class_embed.weight"}
    for p in ("weight", "bias"):
        pairs[f"t_embedder.mlp.0.{p}"] = f"time_embed.fc1.{p}"
        pairs[f"t_embedder.mlp.2.{p}"] = f"time_embed.fc2.{p}"
        pairs[f"{mix}0.{p}"] = f"in_proj.{p}"
        pairs[f"{mix}{MIX_DEPTH + 1}.{p}"] = f"out_norm.{p}"
        pairs[f"{mix}{MIX_DEPTH + 2}.{p}"] = f"out_proj.{p}"
        for i in range(MIX_DEPTH):
            for j, branch in enumerate(("token_mix", "channel_mix")):
                for theirs, ours in (("norm", "norm"), ("fn.0", "fc1"), ("fn.3", "fc2")):
                    pairs[f"{mix}{i + 1}.{j}.{theirs}.{p}"] = f"blocks.{i}.{branch}.{ours}.{p}"
    assert len(pairs) == len(mixer_shapes())
    for theirs, ours in pairs.items():
        value = ema[theirs][..., 0] if ".0.fn." in theirs and theirs.endswith("weight") else ema[theirs]
        assert torch.equal(gen[ours], value), theirs
    assert torch.equal(gen["stats.latent_std"], torch.full((1, 1, D), SCALE))  # it samples z / scale_factor
    assert not gen["stats.latent_mean"].any()


def test_converted_config(converted: RepTok) -> None:
    cfg = converted.config
    assert cfg.decoder.time_reversed and cfg.decoder.input_size == IMAGE // 8 and cfg.decoder.patch_size == 2
    assert (cfg.encoder.image_size, cfg.encoder.crop, cfg.encoder.resize) == (224, "center", "pool-bilinear")
    assert cfg.encoder.mean == (0.485, 0.456, 0.406) and cfg.encoder.std == (0.229, 0.224, 0.225)
    assert cfg.encoder.backbone_kwargs["num_heads"] == D // 64 and not cfg.encoder.pretrained
    assert cfg.class_generator.num_classes == CLASSES and converted.class_generator.null_class == 1000
    assert cfg.class_names[:2] == ["tench", "goldfish"] and len(cfg.class_names) == 1000
    assert converted.class_id("goldfish") == 1
    s = cfg.sampling
    assert (s.decode_steps, s.generate_steps, s.cfg_scale, s.cfg_interval) == (50, 50, 1.5, (0.3, 0.9))
    assert cfg.info["generator_weights"] == "ema" and cfg.image_space.scale == 0.18215


def test_sampling_matches_the_official_loop(converted: RepTok) -> None:
    """FlowModel.generate_with_cfg_interval, written out: t from 0 (noise) on a float32 linspace,
    guidance u + s·(c − u) with the null class 1000 unless t < 0.3 or t > 0.9; then × scale_factor."""
    gen, y, steps = converted.class_generator, torch.tensor([0, 417, 999]), 10
    null = torch.full_like(y, 1000)
    x = seeded_noise((3, 1, D), 7)
    times = torch.linspace(0, 1, steps + 1)
    with torch.no_grad():
        for t_curr, t_next in itertools.pairwise(times):
            t = torch.full((3,), float(t_curr))
            v = gen(x, t, y)
            if not (t_curr < 0.3 or t_curr > 0.9):
                u = gen(x, t, null)
                v = u + 1.5 * (v - u)
            x = x + (t_next - t_curr) * v
    ours = converted.sample_tokens(labels=[0, 417, 999], steps=steps, seed=7)
    assert torch.allclose(ours, x * SCALE, atol=1e-5)
    images = converted.sample(labels=["tench"], steps=2, decode_steps=2, output_type="pt")
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()  # tiny VAE: 2× up


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({DEC + "backbone.mid_level.0.self_attn.gate": torch.zeros(1)}), "self_attn.gate"),
        (lambda s: s.pop(DEC + "backbone.mid_level.0.ff.up_proj.weight"), "decoder.layers.0.ff.ff.up.weight"),
        (
            lambda s: s.update({DEC + "time_in_proj.weight": torch.zeros(MAPPING, 7)}),
            "time_embed.in_proj.weight",
        ),
        (lambda s: s.update({"some_head.weight": torch.zeros(1)}), "some_head.weight"),
        (lambda s: s.update({"ema_model.net.mixer._orig_mod.9.weight": torch.zeros(1)}), "mixer.9.weight"),
    ],
)
def test_mismatch_names_the_key(edit, message: str, tmp_path: Path) -> None:
    state = official_state()
    edit(state)
    ckpt = write_checkpoint(tmp_path / "bad.ckpt", state)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        convert_official(ckpt, tmp_path / "out", vae="checkpoint", vae_config=TINY_VAE_CONFIG)


def test_inconsistent_dino_copies_are_reported(tmp_path: Path) -> None:
    """Our frozen path shares every weight but the [cls] embedding: a target that differs elsewhere
    cannot be represented, and the converter says where."""
    state = official_state()
    state[DINO + "target_model.blocks.0.attn.qkv.weight"] += 1.0
    ckpt = write_checkpoint(tmp_path / "t.ckpt", state)
    with pytest.warns(UserWarning, match=r"frozen original differ at 'blocks\.0\.attn\.qkv\.weight'"):
        convert_official(ckpt, tmp_path / "out", vae="checkpoint", vae_config=TINY_VAE_CONFIG)


class Pwn:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    ("hparams", "named"),
    [({"args": argparse.Namespace(lr=1e-4)}, "argparse.Namespace"), ({"x": Pwn()}, "system")],
)
def test_unexpected_pickled_class_is_refused(hparams: dict, named: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = write_checkpoint(tmp_path / "evil.ckpt", {"a": torch.zeros(1)}, hparams)
    with pytest.raises(ValueError, match=f"refusing to load .*{named}"):
        load_checkpoint(ckpt)
    assert not (tmp_path / "pwned").exists()


def test_omegaconf_hyper_parameters_load(tmp_path: Path) -> None:
    """Lightning pickles the omegaconf configs the module was built from: they load as plain data,
    without omegaconf's code (its classes are replaced by inert stand-ins)."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"params": {"scale_factor": 3.5, "image_size": 256, "steps": [0.3, 0.9]}}
    )
    ckpt = write_checkpoint(tmp_path / "o.ckpt", {"a": torch.zeros(1)}, {"first_stage_cfg": cfg, "lr": 1e-4})
    _, hparams = load_checkpoint(ckpt)
    assert hparams == {
        "first_stage_cfg": {"params": {"scale_factor": 3.5, "image_size": 256, "steps": [0.3, 0.9]}},
        "lr": 1e-4,
    }


def test_cli_convert_official(
    official: tuple[dict[str, Tensor], Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "models" / "reptok-xl-tiny"
    assert main(["convert-official", str(official[1]), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["image_space"]["vae"] == SD_VAE and not (out / "vae").exists()  # named, not downloaded
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "backbone.safetensors", "class_generator.safetensors", "tokenizer.safetensors",
    ]  # fmt: skip
    monkeypatch.setenv("REPTOK_MODELS_DIR", str(out.parent))
    assert "reptok-xl-tiny" in ModelRegistry().labels  # the app lists it
    # Offline, stand a random tiny VAE in for the hub one, and run a reconstruction end to end.
    config["image_space"] |= {"vae": None, "vae_config": TINY_VAE_CONFIG}
    (out / "config.json").write_text(json.dumps(config))
    model = RepTok.from_pretrained(out)
    assert model.reconstruct(torch.zeros(1, 3, 40, 30), steps=2, output_type="pt").shape == (1, 3, 16, 16)
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["convert-official", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
