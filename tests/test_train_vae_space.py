"""Stage A in a VAE latent, end to end on a tiny image folder: an in-house backbone folder and a VAE
config, the in-house VAE and its decoder fine-tune, and the latents and anchors that --cache-dir keeps
for the next run (bitwise what a run without it computes).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reptok.encoder import ENCODER_PRESETS, create_backbone
from reptok.pipeline import RepTok
from tests.helpers import assert_same_state, stage_a_args
from train import stage_a_setup, train_tokenizer, train_vae


def test_stage_a_in_house_backbone_folder_and_vae_space(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "backbone"
    folder.mkdir()
    config = ENCODER_PRESETS["test"]
    torch.manual_seed(123)
    weights = create_backbone(config).state_dict()
    save_file(weights, folder / "backbone.safetensors")
    (folder / "config.json").write_text(json.dumps({"encoder": config.to_dict(), "method": "random"}))
    vae = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
        "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32,
    }  # fmt: skip
    (tmp_path / "vae.json").write_text(json.dumps(vae))
    extra = ["--backbone", str(folder), "--space", "vae", "--vae", str(tmp_path / "vae.json"), "--steps", "2"]
    out = train_tokenizer.main(stage_a_args(data_dir, tmp_path / "run", *extra))
    model = RepTok.from_pretrained(out)
    assert model.config.image_space.kind == "vae" and (out / "vae").is_dir()
    assert model.config.decoder.in_channels == 4 and model.config.decoder.input_size == 16
    # The folder's weights were loaded (stored fp16), not re-drawn from the seed.
    assert torch.equal(model.encoder.backbone.pos_embed, weights["pos_embed"].half().float())
    assert model.reconstruct(torch.zeros(1, 3, 32, 32), steps=1, output_type="pt").shape == (1, 3, 32, 32)


def test_vae_trains_a_latent_space_that_stage_a_runs_in(data_dir: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    vae_dir = train_vae.main(["--preset", "test", "--data", str(data_dir), "--out", str(tmp_path / "vae")])
    vae = AutoencoderKL.from_pretrained(vae_dir)
    info = json.loads((vae_dir / "training.json").read_text())
    # SD's convention: the scaling factor makes the train split's latents unit-variance.
    assert vae.config.scaling_factor == pytest.approx(info["scaling_factor"]) and info["scaling_factor"] > 0
    assert 0.0 <= info["heldout"]["identification"] <= 1.0 and info["heldout"]["n"] > 0
    records = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if "event" in r][-1] == "done"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    # Stage A runs in it: the cached latents are the VAE's, the model references the VAE.
    extra = ["--space", "vae", "--vae", str(vae_dir), "--steps", "2"]
    out = train_tokenizer.main(stage_a_args(data_dir, tmp_path / "tok", *extra))
    model = RepTok.from_pretrained(out)
    assert model.config.image_space.scale == pytest.approx(info["scaling_factor"])
    assert model.reconstruct(torch.zeros(1, 3, 32, 32), steps=1, output_type="pt").shape == (1, 3, 32, 32)


def test_stage_a_takes_its_image_space_from_init_backbone_or_preset(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --space / --vae / --lam: an --init model continues in its own space, VAE and λ; a
    preset sized for a latent (cpu-xs, cpu-main, gpu-b) runs in the VAE of a saved model given as
    --backbone, and says what it needs where nothing names a VAE (it used to fall back to pixels:
    16× the patches)."""
    assert {name: p.space for name, p in train_tokenizer.PRESETS.items()} == {
        "test": "pixel", "cpu-s": "pixel", "cpu-xs": "vae", "cpu-main": "vae", "gpu-b": "vae"
    }  # fmt: skip
    vae_dir = train_vae.main(["--preset", "test", "--data", str(data_dir), "--out", str(tmp_path / "vae")])
    saved = train_tokenizer.main(
        stage_a_args(
            data_dir,
            tmp_path / "saved",
            "--space",
            "vae",
            "--vae",
            str(vae_dir),
            "--lam",
            "0.25",
            "--steps",
            "1",
        )
    )
    assert stage_a_setup.saved_model_vae(saved) == str(saved / "vae")
    vae_weights = load_file(saved / "vae" / "diffusion_pytorch_model.safetensors")

    def run(name: str, *extra: str) -> RepTok:
        return RepTok.from_pretrained(
            train_tokenizer.main(stage_a_args(data_dir, tmp_path / name, *extra, "--steps", "1"))
        )

    continued = run("init", "--init", str(saved))  # the test preset is pixel: --init's space wins
    fresh = run("backbone", "--backbone", str(saved), "--space", "vae")
    assert continued.config.encoder.cosine_weight == 0.25  # and its λ
    assert fresh.config.encoder.cosine_weight == train_tokenizer.PRESETS["test"].lam
    for model in (continued, fresh):
        assert model.config.image_space.kind == "vae" and model.config.decoder.in_channels == 4
        stored = load_file(Path(model.source) / "vae" / "diffusion_pytorch_model.safetensors")
        assert_same_state(stored, vae_weights)
    assert run("pixel", "--backbone", str(saved)).config.image_space.kind == "pixel"  # the preset's

    monkeypatch.setitem(
        train_tokenizer.PRESETS, "test", dataclasses.replace(train_tokenizer.PRESETS["test"], space="vae")
    )
    assert run("preset", "--backbone", str(saved)).config.image_space.kind == "vae"
    assert run("override", "--backbone", str(saved), "--space", "pixel").config.image_space.kind == "pixel"
    with pytest.raises(ValueError, match="pass --vae"):
        run("nothing")  # a timm backbone, no VAE anywhere


def test_vae_decoder_finetune_keeps_the_latent_space(data_dir: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    base_dir = train_vae.main(["--preset", "test", "--data", str(data_dir), "--out", str(tmp_path / "vae")])
    argv = ["--preset", "test", "--finetune-decoder", str(base_dir), "--crop-size", "0", "--lr", "1e-2"]
    tuned_dir = train_vae.main([*argv, "--data", str(data_dir), "--out", str(tmp_path / "ft")])
    base, tuned = AutoencoderKL.from_pretrained(base_dir), AutoencoderKL.from_pretrained(tuned_dir)
    # The encoder, its posterior and the scaling factor are the base VAE's: every latent (and every
    # tokenizer trained on them) stays valid; the decoder moved.
    old, new = base.state_dict(), tuned.state_dict()
    assert old.keys() == new.keys()
    encoder_keys = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    assert encoder_keys and all(torch.equal(old[k], new[k]) for k in encoder_keys)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    assert tuned.config.scaling_factor == base.config.scaling_factor
    info = json.loads((tuned_dir / "training.json").read_text())
    assert info["finetuned_decoder_of"] == str(base_dir) and info["crop_size"] == 0
    with pytest.raises(ValueError, match="finetune-decoder"):
        train_vae.main(["--preset", "cpu-decoder", "--data", str(data_dir), "--out", str(tmp_path / "x")])

    # A stage-A run resumes after its VAE's decoder is swapped for the fine-tuned one (stage A only
    # encodes), and refuses once the encoder differs.
    vae_dir = tmp_path / "vae-in-use"
    shutil.copytree(base_dir, vae_dir)
    stage_a = ["--space", "vae", "--vae", str(vae_dir), "--ckpt-every", "1"]
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "tok", *stage_a, "--steps", "1"))
    shutil.rmtree(vae_dir)
    shutil.copytree(tuned_dir, vae_dir)
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "tok", *stage_a, "--steps", "2", "--resume"))
    assert json.loads((tmp_path / "tok" / "log.jsonl").read_text().splitlines()[-1])["event"] == "done"
    new["encoder.conv_in.bias"] += 1.0
    tuned.load_state_dict(new)
    tuned.save_pretrained(vae_dir)
    with pytest.raises(ValueError, match="frozen weights"):
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "tok", *stage_a, "--steps", "3", "--resume"))


def test_stage_a_cache_dir_keeps_latents_and_anchors_for_the_next_run(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae_dir = train_vae.main(["--preset", "test", "--data", str(data_dir), "--out", str(tmp_path / "vae")])
    base = ["--space", "vae", "--vae", str(vae_dir), "--steps", "2"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    plain = train_tokenizer.main(stage_a_args(data_dir, tmp_path / "plain", *base, "--lam", "0.5"))
    first = train_tokenizer.main(stage_a_args(data_dir, tmp_path / "first", *base, *cache, "--lam", "0.5"))
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["anchors", "latents"]
    # Another λ on the same backbone and VAE encodes nothing: both come from the cache.
    plain_b = train_tokenizer.main(stage_a_args(data_dir, tmp_path / "plain-b", *base, "--lam", "0.25"))
    with monkeypatch.context() as m:
        m.setattr(train_tokenizer, "encode_dataset", lambda *a, **k: pytest.fail("encoded again"))
        second = train_tokenizer.main(
            stage_a_args(data_dir, tmp_path / "second", *base, *cache, "--lam", "0.25")
        )
    # The same VAE moved elsewhere is the same key (it is keyed by its weights, not its path).
    moved = [*base[:2], "--vae", str(shutil.copytree(vae_dir, tmp_path / "vae-moved")), *base[4:]]
    with monkeypatch.context() as m:
        m.setattr(train_tokenizer, "encode_dataset", lambda *a, **k: pytest.fail("encoded again"))
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "moved", *moved, *cache, "--lam", "0.25"))
    # What the cache holds is what the run computes: the weights are bitwise those of runs without it.
    for with_cache, without in ((first, plain), (second, plain_b)):
        assert_same_state(
            load_file(with_cache / "tokenizer.safetensors"), load_file(without / "tokenizer.safetensors")
        )
    # Another VAE is another key: its latents are computed and stored beside the first ones.
    other_vae = train_vae.main(
        ["--preset", "test", "--seed", "1", "--data", str(data_dir), "--out", str(tmp_path / "vae-b")]
    )
    other = [*base[:2], "--vae", str(other_vae), *base[4:], *cache, "--lam", "inf"]
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "other", *other))
    assert len(list((tmp_path / "cache").glob("latents-*.pt"))) == 2


def test_cached_latents_are_the_image_spaces_encoding(data_dir: Path) -> None:
    from diffusers import AutoencoderKL

    from reptok.decoder import ImageSpace, ImageSpaceConfig
    from tests.helpers import TINY_VAE_CONFIG
    from train.data import build_dataset

    space = ImageSpace(ImageSpaceConfig(kind="vae"), AutoencoderKL.from_config(TINY_VAE_CONFIG))
    dataset = build_dataset(data_dir, "train", image_size=32)
    cached = stage_a_setup.encode_dataset(space.encode, dataset, batch_size=3)
    direct = space.encode(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))
    assert cached.shape == direct.shape and torch.allclose(cached, direct, atol=1e-5)


def test_cached_anchors_are_the_original_backbones_tokens(data_dir: Path) -> None:
    from reptok.encoder import ENCODER_PRESETS, Encoder
    from train.data import build_dataset

    encoder = Encoder(ENCODER_PRESETS["test"].replace(cosine_weight=0.1)).train()
    with torch.no_grad():
        encoder.backbone.cls_token.normal_()  # timm's 1e-6 init makes the tiny ViT's [cls] ill-conditioned
        encoder.reset_frozen_token()
        original = encoder.backbone.cls_token.detach().clone()
        encoder.backbone.cls_token.add_(torch.randn_like(original))  # adapted: no longer the anchors
    dataset = build_dataset(data_dir, "train", image_size=32)
    cached = stage_a_setup.encode_dataset(stage_a_setup.frozen_tokens(encoder), dataset, batch_size=3)
    assert encoder.training  # restored
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        adapted = encoder.eval()(images).z  # (N, 1, D)
        encoder.backbone.cls_token.copy_(original)
        direct = encoder(images).z  # (N, 1, D): the original backbone's tokens
    assert cached.shape == direct.shape and torch.allclose(cached, direct, atol=1e-5)
    assert not torch.allclose(cached, adapted, atol=1e-2)
