"""RepTok end to end on a tiny random model: I/O, determinism, the public API."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reptok.decoder import ImageSpaceConfig
from reptok.pipeline import RepTok, RepTokConfig
from tests.helpers import CLASS_NAMES, TINY_VAE_CONFIG, randomize_, tiny_config


def _image(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> Image.Image:
    im = Image.new("RGB", size, color)
    im.paste((255 - color[0], color[1], 255 - color[2]), (5, 5, 20, 30))
    return im


def _all_weights(model: RepTok) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, m in model.components().items() for k, v in m.state_dict().items()}


def test_save_load_round_trip_is_exact(tiny_model: RepTok, tiny_model_dir: Path) -> None:
    loaded = RepTok.from_pretrained(tiny_model_dir)
    a, b = _all_weights(tiny_model), _all_weights(loaded)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.to_dict() | {"backbone_sha256": None} == json.loads(
        (tiny_model_dir / "config.json").read_text()
    ) | {"backbone_sha256": None}
    images = [_image((200, 30, 30)), _image((20, 90, 220))]
    assert torch.equal(tiny_model.encode(images), loaded.encode(images))
    assert torch.equal(
        tiny_model.reconstruct(images, output_type="pt"), loaded.reconstruct(images, output_type="pt")
    )


def test_fp16_files_are_fp16_and_reload_to_the_rounded_weights(tiny_model: RepTok, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)  # default: fp16
    stored = load_file(tmp_path / "tokenizer.safetensors")
    # the [cls] embeddings stay fp32 (they can be ~1e-6, subnormal in fp16); everything else is fp16
    assert {k for k, t in stored.items() if t.dtype == torch.float32} == {
        "encoder.cls_token",
        "encoder.frozen_cls_token",
    }
    assert all(t.dtype == torch.float16 for k, t in stored.items() if not k.endswith("cls_token"))
    loaded = RepTok.from_pretrained(tmp_path)
    for k, v in _all_weights(tiny_model).items():
        keep_fp32 = k.endswith("cls_token") or not v.is_floating_point()
        expected = v if keep_fp32 else v.half().float()
        assert torch.equal(_all_weights(loaded)[k], expected), k
    tiny = torch.full_like(tiny_model.encoder.frozen_cls_token, 1e-6)
    tiny_model.encoder.frozen_cls_token.copy_(tiny)
    try:
        tiny_model.save_pretrained(tmp_path / "small")
        assert torch.equal(RepTok.from_pretrained(tmp_path / "small").encoder.frozen_cls_token, tiny)
    finally:
        tiny_model.encoder.frozen_cls_token.copy_(tiny_model.encoder.backbone.cls_token.detach())


def test_loading_is_strict_and_names_the_problem(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    state = load_file(broken / "tokenizer.safetensors")
    state.pop(sorted(k for k in state if k.startswith("decoder."))[0])
    save_file(state, broken / "tokenizer.safetensors")
    with pytest.raises(ValueError, match=r"decoder: weights do not match the config.*missing"):
        RepTok.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        RepTok.from_pretrained(tmp_path / "nowhere")
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg["decoder"]["made_up_field"] = 1
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown config keys"):
        RepTok.from_pretrained(broken)


def test_a_shared_backbone_is_stored_once_and_checked(tiny_model: RepTok, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "a")
    tiny_model.save_pretrained(tmp_path / "b", backbone_file="../a/backbone.safetensors")
    assert not (tmp_path / "b" / "backbone.safetensors").exists()
    loaded = RepTok.from_pretrained(tmp_path / "b")
    assert torch.equal(
        loaded.encoder.backbone.pos_embed, tiny_model.encoder.backbone.pos_embed.half().float()
    )
    # a pre-training run's file (fp32, with its own cls_token) can be referenced too
    run = {k: v.float() for k, v in tiny_model.encoder.backbone.state_dict().items()}
    save_file({k: v.contiguous() for k, v in run.items()}, tmp_path / "run.safetensors")
    tiny_model.save_pretrained(tmp_path / "e", dtype=torch.float32, backbone_file="../run.safetensors")
    assert torch.equal(RepTok.from_pretrained(tmp_path / "e").encoder.backbone.pos_embed, run["pos_embed"])
    other = RepTok.from_config(tiny_config(with_text=False))  # a different random backbone
    with pytest.raises(ValueError, match="different backbone"):
        other.save_pretrained(tmp_path / "c", backbone_file="../a/backbone.safetensors")
    # a swapped backbone file is caught on load
    other.save_pretrained(tmp_path / "d")
    shutil.copy(tmp_path / "d" / "backbone.safetensors", tmp_path / "a" / "backbone.safetensors")
    with pytest.raises(ValueError, match="sha256"):
        RepTok.from_pretrained(tmp_path / "b")


def test_same_seed_same_output_different_seed_different(tiny_model: RepTok) -> None:
    z = tiny_model.encode(_image((10, 200, 10)))
    a = tiny_model.decode(z, seed=3, output_type="pt")
    assert torch.equal(a, tiny_model.decode(z, seed=3, output_type="pt"))
    assert not torch.equal(a, tiny_model.decode(z, seed=4, output_type="pt"))
    s1 = tiny_model.sample(labels=[0, 1], seed=5, output_type="pt")
    assert torch.equal(s1, tiny_model.sample(labels=[0, 1], seed=5, output_type="pt"))
    assert not torch.equal(s1, tiny_model.sample(labels=[0, 1], seed=6, output_type="pt"))


def test_generate_temperature_scales_the_generators_noise(tiny_model: RepTok, tmp_path: Path) -> None:
    """T scales the generator's starting noise only: T = 0 draws one token per class whatever the
    seed, and the config's default applies when none is passed (and survives a save/load)."""
    base = tiny_model.sample_tokens(labels=[0, 0], seed=3)
    assert not torch.equal(base[0], base[1])
    zero = tiny_model.sample_tokens(labels=[0, 0], seed=3, temperature=0.0)
    torch.testing.assert_close(zero[0], zero[1])
    assert not torch.allclose(tiny_model.sample_tokens(labels=[0], seed=3, temperature=0.5), base[:1])
    tiny_model.config.sampling = tiny_model.config.sampling.replace(generate_temperature=0.0)
    try:
        torch.testing.assert_close(tiny_model.sample_tokens(labels=[0, 0], seed=3), zero)
        tiny_model.save_pretrained(tmp_path / "m")
    finally:
        tiny_model.config.sampling = tiny_model.config.sampling.replace(generate_temperature=1.0)
    assert RepTok.from_pretrained(tmp_path / "m").config.sampling.generate_temperature == 0.0
    # sample() passes it on: its images are the decoded tokens drawn at that T
    images = tiny_model.sample(labels=[1], temperature=0.0, seed=4, output_type="pt")
    tokens = tiny_model.sample_tokens(labels=[1], temperature=0.0, seed=4)
    torch.testing.assert_close(images, tiny_model.decode(tokens, seed=4, output_type="pt"))
    assert not torch.allclose(
        images, tiny_model.sample(labels=[1], temperature=1.0, seed=4, output_type="pt")
    )


def test_decode_temperature_scales_the_starting_noise(tiny_model: RepTok, tmp_path: Path) -> None:
    z = tiny_model.encode(_image((10, 200, 10)))
    c, n = tiny_model.config.decoder.in_channels, tiny_model.config.decoder.input_size
    noise = torch.randn(1, c, n, n, generator=torch.Generator().manual_seed(0))
    half = tiny_model.decode(z, noise=noise, temperature=0.5, steps=2, output_type="pt")
    torch.testing.assert_close(
        half, tiny_model.decode(z, noise=noise * 0.5, temperature=1.0, steps=2, output_type="pt")
    )
    # τ = 0 starts every seed at the same point: the decoder's deterministic path from the origin
    zero = [tiny_model.decode(z, seed=s, temperature=0.0, steps=2, output_type="pt") for s in (1, 2)]
    assert torch.equal(zero[0], zero[1])
    # the config's default applies when no temperature is passed, and survives a save/load
    tiny_model.config.sampling = tiny_model.config.sampling.replace(decode_temperature=0.5)
    try:
        torch.testing.assert_close(tiny_model.decode(z, noise=noise, steps=2, output_type="pt"), half)
        tiny_model.save_pretrained(tmp_path / "m")
    finally:
        tiny_model.config.sampling = tiny_model.config.sampling.replace(decode_temperature=1.0)
    assert RepTok.from_pretrained(tmp_path / "m").config.sampling.decode_temperature == 0.5


def test_bf16_weights_compute_under_autocast_close_to_fp32(tiny_model_dir: Path) -> None:
    """from_pretrained(dtype=torch.bfloat16): every method takes and returns fp32, close to fp32's."""
    fp32 = RepTok.from_pretrained(tiny_model_dir)
    bf16 = RepTok.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert (fp32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    images = [_image((200, 30, 30)), _image((20, 90, 220))]
    z32, z16 = fp32.encode(images), bf16.encode(images)
    assert z16.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(z32, z16, dim=-1).min()) > 0.99
    r32 = fp32.decode(z32, seed=0, steps=2, output_type="pt")
    r16 = bf16.decode(z32, seed=0, steps=2, output_type="pt")
    assert r16.dtype == torch.float32 and float((r16 - r32).abs().mean()) < 0.05
    s16 = bf16.sample_tokens(labels=[0, 1], seed=0, steps=4)
    s32 = fp32.sample_tokens(labels=[0, 1], seed=0, steps=4)
    assert s16.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(s32, s16, dim=-1).min()) > 0.95
    assert (
        bf16.sample(prompts=["red apple"], seed=0, steps=2, decode_steps=2, output_type="pt").isfinite().all()
    )


def test_reconstruct_outputs(tiny_model: RepTok) -> None:
    images = tiny_model.reconstruct([_image((255, 0, 0), (50, 70)), _image((0, 0, 255), (1, 1))], steps=2)
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert all(im.mode == "RGB" for im in images)
    pt = tiny_model.reconstruct(torch.rand(2, 3, 32, 32) * 2 - 1, output_type="pt")
    assert pt.shape == (2, 3, 32, 32) and float(pt.abs().max()) <= 1.0
    # a PIL image and the same pixels as a tensor encode to the same token
    im = _image((120, 40, 200), (32, 32))
    tensor = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(tiny_model.encode(im), tiny_model.encode(tensor), atol=1e-5, rtol=1e-5)
    cos = tiny_model.cosine_to_frozen([im, im])
    assert cos.shape == (2,) and torch.allclose(cos, torch.ones(2), atol=1e-5)  # untrained: token not moved


def test_interpolation_endpoints_equal_the_inputs(tiny_model: RepTok) -> None:
    z = tiny_model.encode([_image((255, 0, 0)), _image((0, 0, 255))])
    for mode in ("slerp", "lerp"):
        path = tiny_model.interpolate(z[0], z[1], torch.linspace(0, 1, 5), mode=mode)
        assert path.shape == (5, 1, z.shape[-1])
        torch.testing.assert_close(path[0], z[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(path[-1], z[1], atol=1e-6, rtol=1e-6)
    lerp_mid = tiny_model.interpolate(z[0], z[1], [0.5], mode="lerp")[0]
    torch.testing.assert_close(lerp_mid, (z[0] + z[1]) / 2)
    with pytest.raises(ValueError, match="slerp"):
        tiny_model.interpolate(z[0], z[1], [0.5], mode="cubic")  # type: ignore[arg-type]


def test_variations_share_the_token_not_the_noise(tiny_model: RepTok) -> None:
    z = tiny_model.encode(_image((30, 30, 30)))
    var = tiny_model.variations(z, 3, seed=0, output_type="pt")
    assert var.shape == (3, 3, 32, 32)
    assert not torch.equal(var[0], var[1])
    # sample 0 is the plain decode with the same seed (up to batched-matmul rounding)
    torch.testing.assert_close(var[0:1], tiny_model.decode(z, seed=0, output_type="pt"), atol=1e-4, rtol=1e-4)


def test_sample_by_class_name_or_id_and_errors(tiny_model: RepTok) -> None:
    by_name = tiny_model.sample(labels=[CLASS_NAMES[1]], seed=1, output_type="pt")
    by_id = tiny_model.sample(labels=[1], seed=1, output_type="pt")
    assert torch.equal(by_name, by_id)
    assert tiny_model.class_id("food & drink") == 1
    with pytest.raises(ValueError, match="unknown class"):
        tiny_model.sample(labels=["Dinosaurs"])
    with pytest.raises(ValueError, match="out of range"):
        tiny_model.sample(labels=[99])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model.sample(labels=[0], prompts=["x"])


def test_class_groups_draw_member_classes_by_seed(tiny_model: RepTok) -> None:
    groups = {"Edible": [CLASS_NAMES[1]], "Any": list(CLASS_NAMES)}
    model = RepTok(
        dataclasses.replace(tiny_model.config, class_groups=groups),
        tiny_model.encoder, tiny_model.decoder, tiny_model.image_space, tiny_model.class_generator,
    )  # fmt: skip
    # A one-member group is that class, with the same noise.
    assert torch.equal(
        model.sample_tokens(labels=["edible"], seed=3), model.sample_tokens(labels=[1], seed=3)
    )
    ids = {model.class_id("Any", generator=torch.Generator().manual_seed(s)) for s in range(40)}
    assert ids == set(range(len(CLASS_NAMES)))  # every member is reachable
    again = model.sample_tokens(labels=["Any"] * 6, seed=5)
    assert torch.equal(again, model.sample_tokens(labels=["Any"] * 6, seed=5))  # the seed fixes the draw
    roundtrip = RepTokConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert roundtrip.class_groups == groups
    with pytest.raises(ValueError, match="known: Edible, Any"):
        model.class_id("Dinosaurs")


def test_cfg_scale_one_matches_the_conditional_model(tiny_model: RepTok) -> None:
    gen = tiny_model.class_generator
    a = tiny_model.sample_tokens(labels=[2, 0], cfg_scale=1.0, seed=9)
    # integrate the conditional model by hand
    from reptok.sampling import integrate, seeded_noise

    y = torch.tensor([2, 0])
    noise = seeded_noise((2, 1, tiny_model.token_dim), 9)
    b = gen.stats.denormalize(integrate(lambda x, t: gen(x, t, y), noise, steps=4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, tiny_model.sample_tokens(labels=[2, 0], cfg_scale=4.0, seed=9))


def test_each_generator_is_guided_over_its_own_default_interval(tiny_model: RepTok, tmp_path: Path) -> None:
    """`cfg_interval` is the class generator's default and, while `text_cfg_interval` is None, the
    text generator's; set, the latter applies to prompts only. An explicit `cfg_interval` wins, and
    both survive a save/load (as tuples)."""
    s = tiny_model.config.sampling
    assert s.text_cfg_interval is None and s.guidance_interval("text") == s.guidance_interval("class")
    kw = {"cfg_scale": 4.0, "seed": 5}
    prompts = ["red apple", "blue car"]
    cls_default, cls_full = (tiny_model.sample_tokens(labels=[1, 2], cfg_interval=i, **kw) for i in (None, (0.0, 1.0)))  # fmt: skip
    text_default, text_full = (tiny_model.sample_tokens(prompts=prompts, cfg_interval=i, **kw) for i in (None, (0.0, 1.0)))  # fmt: skip
    assert not torch.allclose(cls_default, cls_full) and not torch.allclose(text_default, text_full)
    tiny_model.config.sampling = s.replace(text_cfg_interval=(0.0, 1.0))
    try:
        torch.testing.assert_close(tiny_model.sample_tokens(prompts=prompts, **kw), text_full)
        torch.testing.assert_close(tiny_model.sample_tokens(labels=[1, 2], **kw), cls_default)
        explicit = tiny_model.sample_tokens(prompts=prompts, cfg_interval=s.cfg_interval, **kw)
        torch.testing.assert_close(explicit, text_default)
        tiny_model.save_pretrained(tmp_path / "m")
    finally:
        tiny_model.config.sampling = s
    loaded = RepTok.from_pretrained(tmp_path / "m").config.sampling
    assert loaded.text_cfg_interval == (0.0, 1.0) and loaded.cfg_interval == s.cfg_interval


def test_text_sampling(tiny_model: RepTok) -> None:
    long_prompt = "red apple " * 1000  # 10,000 characters: truncated, not an error
    images = tiny_model.sample(prompts=["red apple", "", long_prompt], seed=0)
    assert len(images) == 3 and images[0].size == (32, 32)
    a = tiny_model.sample_tokens(prompts=["red apple", "blue car"], seed=0, cfg_scale=2.0)
    assert not torch.allclose(a[0], a[1])


def _vae_model(seed: int, vae: torch.nn.Module | None = None) -> RepTok:
    """A tiny model in the latent space of the tiny VAE: its own random one, or a copy of `vae`."""
    cfg = tiny_config(with_text=False)
    cfg.decoder = cfg.decoder.replace(in_channels=4, input_size=16, patch_size=4)
    cfg.image_space = ImageSpaceConfig(kind="vae", vae_config=TINY_VAE_CONFIG)
    torch.manual_seed(seed)
    model = RepTok.from_config(cfg)
    randomize_(model.decoder, seed)
    if vae is not None:
        model.image_space.vae.load_state_dict(vae.state_dict())
    return model


def test_vae_space_model_saves_the_vae_once_and_reloads(tmp_path: Path) -> None:
    model = _vae_model(0)
    assert model.image_size == 32
    out = model.reconstruct(torch.rand(1, 3, 32, 32) * 2 - 1, output_type="pt")
    assert out.shape == (1, 3, 32, 32)
    model.save_pretrained(tmp_path / "m", dtype=torch.float32)
    assert (tmp_path / "m" / "vae" / "config.json").is_file()
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["image_space"]["vae"] == "vae" and saved["image_space"]["vae_config"] is None
    assert saved["vae_sha256"] == model.vae_sha256(torch.float32)
    loaded = RepTok.from_pretrained(tmp_path / "m")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(model.reconstruct(x, output_type="pt"), loaded.reconstruct(x, output_type="pt"))


def _vae_dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (not a dict)


def test_models_share_one_fp16_vae_folder(tmp_path: Path) -> None:
    a = _vae_model(0)
    b = _vae_model(1, vae=a.image_space.vae)  # another tokenizer on the same VAE
    assert a.vae_sha256() == b.vae_sha256() and a.backbone_sha256() != b.backbone_sha256()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    before = [m.reconstruct(x, seed=1, output_type="pt") for m in (a, b)]
    a.save_pretrained(tmp_path / "a")  # default: fp16, the VAE too
    b.save_pretrained(tmp_path / "b", vae_folder="../a/vae")
    assert _vae_dtypes(tmp_path / "a" / "vae") == {"F16"}
    assert a.image_space.vae.dtype == torch.float32  # the module in memory keeps its dtype
    assert not (tmp_path / "b" / "vae").exists()
    configs = [json.loads((tmp_path / n / "config.json").read_text()) for n in ("a", "b")]
    assert [c["image_space"]["vae"] for c in configs] == ["vae", "../a/vae"]
    assert configs[0]["vae_sha256"] == configs[1]["vae_sha256"] == a.vae_sha256(torch.float16)
    for model, name, old in zip((a, b), ("a", "b"), before, strict=True):
        loaded = RepTok.from_pretrained(tmp_path / name)
        vae = loaded.image_space.vae
        assert vae.dtype == torch.float32  # stored in fp16, computes in from_pretrained's dtype
        own = model.image_space.vae.state_dict()
        assert all(torch.equal(v, own[k].half().float()) for k, v in vae.state_dict().items())
        torch.testing.assert_close(loaded.reconstruct(x, seed=1, output_type="pt"), old, atol=5e-3, rtol=0)
    # fp32 stays possible, and a config from before vae_sha256 existed still loads
    a.save_pretrained(tmp_path / "c", dtype=torch.float32)
    assert _vae_dtypes(tmp_path / "c" / "vae") == {"F32"}
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    del config["vae_sha256"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    assert torch.equal(
        RepTok.from_pretrained(tmp_path / "c").reconstruct(x, seed=1, output_type="pt"), before[0]
    )


def test_a_different_vae_folder_is_refused_on_save_and_on_load(tmp_path: Path) -> None:
    a, other = _vae_model(0), _vae_model(2)  # other: its own random VAE
    a.save_pretrained(tmp_path / "a")
    a.save_pretrained(tmp_path / "b", vae_folder="../a/vae")
    with pytest.raises(ValueError, match=r"\.\./a/vae holds a different VAE"):
        other.save_pretrained(tmp_path / "c", vae_folder="../a/vae")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        a.save_pretrained(tmp_path / "d", vae_folder="../nowhere/vae")
    with pytest.raises(ValueError, match="pixel space"):
        RepTok.from_config(tiny_config(with_text=False)).save_pretrained(
            tmp_path / "e", vae_folder="../a/vae"
        )
    # the folder both configs name is swapped for another VAE: caught on load, naming the folder
    other.save_pretrained(tmp_path / "o")
    shutil.copy(tmp_path / "o" / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "a" / "vae")
    for name in ("a", "b"):
        with pytest.raises(ValueError, match=r"a/vae does not hold the VAE .*sha256 differs"):
            RepTok.from_pretrained(tmp_path / name)
    shutil.rmtree(tmp_path / "a" / "vae")
    with pytest.raises(FileNotFoundError, match=r"VAE folder .*a/vae is missing"):
        RepTok.from_pretrained(tmp_path / "b")


def test_lambda_inf_round_trips_through_json(tmp_path: Path) -> None:
    cfg = tiny_config(with_text=False)
    cfg.encoder = cfg.encoder.replace(cosine_weight=float("inf"))
    RepTok.from_config(cfg).save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert '"cosine_weight": "inf"' in text
    json.loads(text)  # strict JSON: no bare Infinity
    assert RepTok.from_pretrained(tmp_path).config.encoder.cosine_weight == float("inf")
