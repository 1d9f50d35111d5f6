"""The whole training chain on tiny synthetic emoji, ending in train/export.py:

pre-train (random) -> stage A at two λ -> stage B (class) -> evaluate -> export -> the app's loaders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from app_parts.registry import ModelRegistry
from reptok.manifold import load_manifold
from reptok.pipeline import RepTok
from tests.helpers import COLOURS, shape_image, write_shapes_npz
from train import evaluate, export, train_generator, train_tokenizer
from train import pretrain_backbone as pb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(2)
    labels = [(i // 2) % 3 for i in range(36)]
    images = [shape_image(c, COLOURS[c], rng) for c in labels]
    splits = ["heldout" if i // 2 in (0, 4, 8, 12) else "train" for i in range(36)]
    data = write_shapes_npz(root / "shapes.npz", images, labels, splits)
    backbone = root / "backbone"
    pb.main(["--method", "random", "--preset", "test", "--data", str(data), "--out", str(backbone)])
    common = ["--preset", "test", "--data", str(data), "--backbone", str(backbone), "--image-size", "32"]
    main_a = train_tokenizer.main([*common, "--lam", "0.5", "--out", str(root / "a-half")])
    zero_a = train_tokenizer.main([*common, "--lam", "0", "--out", str(root / "a-zero")])
    gen = ["--preset", "test", "--data", str(data), "--steps", "2"]
    main_b = train_generator.main([*gen, "--tokenizer", str(main_a), "--out", str(root / "b")])
    evaluate.main(["--model", str(main_b), "--data", str(data), "--features", str(backbone), "--n", "4",
                   "--steps", "2"])  # fmt: skip
    return {"data": data, "main": main_b, "zero": zero_a, "root": root}


def test_export_ships_fp16_models_sharing_one_backbone_and_a_manifold(chain: dict[str, Path]) -> None:
    out = chain["root"] / "assets"
    export.main([
        "--model", f"emoji={chain['main']}", "--model", f"emoji-lam0={chain['zero']}",
        "--data", str(chain["data"]), "--out", str(out), "--split", "all", "--max-points", "20", "--decode-steps", "3",
        "--decode-temperature", "0.5", "--decode-shift", "0.5", "--cfg-scale", "2.5",
        "--generate-temperature", "0.7", "--cfg-interval", "0", "1", "--text-cfg-interval", "0.2", "0.8",
    ])  # fmt: skip
    main, zero = out / "models" / "emoji", out / "models" / "emoji-lam0"
    # The backbone is stored once: the λ = 0 model references the main model's file.
    assert (main / "backbone.safetensors").is_file() and not (zero / "backbone.safetensors").exists()
    assert json.loads((zero / "config.json").read_text())["backbone_file"] == "../emoji/backbone.safetensors"
    assert json.loads((main / "metrics.json").read_text())["n"] == 4
    with safe_open(str(main / "tokenizer.safetensors"), framework="pt") as f:
        assert str(f.get_slice("decoder.patch_embed.weight").get_dtype()) == "F16"
        assert str(f.get_slice("encoder.cls_token").get_dtype()) == "F32"  # D numbers, kept exact

    source, shipped = RepTok.from_pretrained(chain["main"]), RepTok.from_pretrained(main)
    assert shipped.config.info["name"] == "emoji" and shipped.class_generator is not None
    # The main model was evaluated before export: it keeps the settings its metrics.json was measured
    # with. The λ = 0 run was not: it ships the export's decoder settings.
    assert shipped.config.sampling == source.config.sampling
    zero_sampling = RepTok.from_pretrained(zero).config.sampling
    assert (
        zero_sampling.decode_steps, zero_sampling.decode_temperature, zero_sampling.decode_shift, zero_sampling.cfg_scale,
        zero_sampling.generate_temperature, zero_sampling.cfg_interval, zero_sampling.text_cfg_interval,
    ) == (3, 0.5, 0.5, 2.5, 0.7, (0.0, 1.0), (0.2, 0.8))  # fmt: skip
    assert RepTok.from_pretrained(chain["zero"]).config.sampling.decode_steps != 3
    image = Image.fromarray(shape_image(1, COLOURS[1], np.random.default_rng(0)))
    recon = shipped.reconstruct([image], steps=2, output_type="pt")
    assert recon.shape == (1, 3, 32, 32)
    # fp16 storage keeps the token: the shipped model encodes like the source model.
    a, b = source.encode([image]).flatten(), shipped.encode([image]).flatten()
    assert float((a @ b) / (a.norm() * b.norm())) > 0.999

    m = load_manifold(out / "manifold.npz")
    assert list(m.settings) == ["0", "0.5", "inf"]  # both runs share the backbone; inf = frozen token
    assert len(m.names) == 20 and set(m.categories) <= {"Animals & Nature", "Food & Drink", "Objects"}
    assert m.settings["inf"]["xy"].shape == (20, 2)
    assert set(m.model_tokens) == {"emoji", "emoji-lam0"}
    # The app finds both shipped models by name, with their λ.
    registry = ModelRegistry([main, zero])
    assert registry.labels == ["emoji", "emoji-lam0"] and registry.by_lambda("0") == "emoji-lam0"


def test_export_stores_a_shared_vae_once(tmp_path: Path) -> None:
    """Three VAE-space models: two on one VAE (one fp16 vae/ folder), one on its own."""
    from tests.test_pipeline import _vae_model

    a = _vae_model(0)
    models = {"a": a, "b": _vae_model(1, vae=a.image_space.vae), "c": _vae_model(2)}
    for name, model in models.items():
        model.save_pretrained(tmp_path / "runs" / name, dtype=torch.float32)
    out = tmp_path / "assets"
    export.main([
        *(f"--model={n}={tmp_path / 'runs' / n}" for n in models),
        "--data", str(tmp_path / "unused.npz"), "--out", str(out), "--no-manifold",
    ])  # fmt: skip
    folders = {n: out / "models" / n for n in models}
    assert sorted(p.parent.name for p in (out / "models").glob("*/vae")) == ["a", "c"]
    configs = {n: json.loads((f / "config.json").read_text()) for n, f in folders.items()}
    assert {n: c["image_space"]["vae"] for n, c in configs.items()} == {
        "a": "vae",
        "b": "../a/vae",
        "c": "vae",
    }
    assert configs["a"]["vae_sha256"] == configs["b"]["vae_sha256"] != configs["c"]["vae_sha256"]
    with safe_open(str(folders["a"] / "vae" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}  # noqa: SIM118
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for name, model in models.items():
        shipped = RepTok.from_pretrained(folders[name])
        torch.testing.assert_close(
            shipped.reconstruct(x, steps=2, output_type="pt"),
            model.reconstruct(x, steps=2, output_type="pt"),
            atol=5e-3,
            rtol=0,
        )


def test_export_tokenizer_only_row_and_the_twin_on_the_map(chain: dict[str, Path]) -> None:
    """A row shipped without its generators keeps the metrics measured with them and says so; at the
    main model's λ the manifold holds its same-budget twin's tokens, and names the model they are of."""
    out = chain["root"] / "assets-rows"
    export.main([
        "--model", f"emoji={chain['main']}", "--model", f"twin={chain['main']}", "--model", f"emoji-lam0={chain['zero']}",
        "--tokenizer-only", "twin", "--data", str(chain["data"]), "--out", str(out), "--split", "all",
        "--max-points", "20",
    ])  # fmt: skip
    main, twin = out / "models" / "emoji", out / "models" / "twin"
    assert (main / "class_generator.safetensors").is_file() and not (
        twin / "class_generator.safetensors"
    ).exists()
    assert (twin / "tokenizer.safetensors").read_bytes() == (main / "tokenizer.safetensors").read_bytes()
    shipped = RepTok.from_pretrained(twin)  # strict keys: no generator expected, none stored
    assert shipped.class_generator is None and shipped.config.class_generator is None
    metrics = json.loads((twin / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["generators_not_shipped"] == ["class_generator"]
    assert "generators_not_shipped" not in json.loads((main / "metrics.json").read_text())
    m = load_manifold(out / "manifold.npz")
    assert list(m.settings) == ["0", "0.5", "inf"]
    assert m.setting_models == {"0": "emoji-lam0", "0.5": "twin"}  # inf: the frozen token, no model's
    registry = ModelRegistry([main, twin])
    assert [key for _, key in registry.choices("class")] == ["emoji"]
    with pytest.raises(SystemExit):
        export.main(["--model", f"x={chain['main']}", "--tokenizer-only", "y", "--data", str(chain["data"]),
                     "--out", str(out)])  # fmt: skip


def test_export_refuses_duplicate_names(chain: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        export.main(["--model", f"x={chain['main']}", "--model", f"x={chain['zero']}",
                     "--data", str(chain["data"]), "--out", str(tmp_path)])  # fmt: skip


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "train/export.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "NAME=FOLDER" in result.stdout and "manifold" in result.stdout
