"""Smoke tests of the weights in assets/: each shipped model loads and reconstructs the example
images above a quality floor, so a regression in the weights or the library cannot land.

The floors sit a little under what MODEL_CARD.md measured on these examples (default sampler
settings, seed 0): far enough for float noise across machines, close enough to catch a real drop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app_parts.registry import ASSET_MODELS
from reptok.images import load_image
from reptok.manifold import lambda_label, load_manifold
from reptok.metrics import psnr, ssim
from reptok.pipeline import RepTok
from reptok.storage import backbone_state, state_sha256

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
MODELS = sorted(p for p in ASSET_MODELS.glob("*") if (p / "config.json").is_file())
MAX_ASSETS_BYTES = 200 * 10**6  # "200 MB", read the strict way (200 MiB would allow 209.7 MB)

# model folder name -> (mean PSNR dB, mean SSIM) floors on assets/examples: measured (CPU-scale
# models of train/reproduce.sh cpu, each model's default sampler settings, seed 0) minus 0.4 dB and 0.02.
FLOORS: dict[str, tuple[float, float]] = {
    # measured 18.91 dB / 0.694 (DAE-style, VAE latent with the whole-image decoder fine-tune,
    # 4,000 stage-A steps with a token map; 4 Euler steps, τ 0.6, shift 0.33; at τ 0.3 19.03 / 0.697)
    "reptok-emoji": (18.5, 0.67),
    # The ablation rows: 400 stage-A steps each in the same VAE latent, tokenizers only; the same sampler.
    "dae-lam0": (15.25, 0.52),  # measured 15.67 dB / 0.547
    "dae-lam0.1": (15.25, 0.51),  # measured 15.69 dB / 0.530 (the default's same-budget twin)
    "dae-lam1": (15.2, 0.51),  # measured 15.64 dB / 0.538
    "dae-laminf": (15.3, 0.51),  # measured 15.74 dB / 0.539
    "random-lam0.1": (12.7, 0.42),  # measured 13.14 dB / 0.446
    "clip-lam0.1": (12.4, 0.39),  # measured 12.83 dB / 0.413
    "mae-lam0.1": (12.1, 0.40),  # measured 12.52 dB / 0.420
    "dino-lam0.1": (12.55, 0.42),  # measured 12.96 dB / 0.440
}


def test_assets_ship_models_examples_and_a_manifold() -> None:
    assert MODELS, "no model in assets/models"
    assert len(EXAMPLES) >= 8
    assert (ROOT / "assets" / "manifold.npz").is_file()
    total = sum(f.stat().st_size for f in (ROOT / "assets").rglob("*") if f.is_file())
    assert total < MAX_ASSETS_BYTES, f"assets/ holds {total / 1e6:.1f} MB"


def test_every_backbone_file_is_stored_once() -> None:
    stored = [p for p in ASSET_MODELS.rglob("backbone.safetensors")]
    digests = [state_sha256(backbone_state(load_file(p))) for p in stored]
    assert len(set(digests)) == len(digests), "the same backbone is stored twice"
    # Every model's backbone reference resolves to one of them (a row may use a file another folder
    # holds: session 5's backbone files stay at the paths git first stored them under).
    for folder in MODELS:
        config = json.loads((folder / "config.json").read_text())
        assert (folder / config["backbone_file"]).resolve() in {p.resolve() for p in stored}, folder.name


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_shipped_model_reconstructs_the_examples_above_its_floor(folder: Path) -> None:
    assert folder.name in FLOORS, f"{folder.name} has no quality floor in tests/test_shipped.py"
    min_psnr, min_ssim = FLOORS[folder.name]
    model = RepTok.from_pretrained(folder)
    images = [load_image(p) for p in EXAMPLES]
    real = model.preprocess(images)  # (N, 3, S, S) in [-1, 1]
    recon = model.reconstruct(real, seed=0, output_type="pt")
    assert recon.shape == real.shape and torch.isfinite(recon).all()
    got_psnr, got_ssim = float(psnr(recon, real).mean()), float(ssim(recon, real).mean())
    assert got_psnr >= min_psnr and got_ssim >= min_ssim, (got_psnr, got_ssim)


@pytest.mark.parametrize(
    "folder", [m for m in MODELS if (m / "metrics.json").is_file()], ids=lambda p: p.name
)
def test_metrics_were_measured_with_the_shipped_sampler_settings(folder: Path) -> None:
    """Each metrics.json records the sampler settings train/evaluate.py used; they are the ones its
    config.json ships, so a changed default (a guidance interval, a temperature) cannot land without
    being measured again. Settings recorded before evaluate.py wrote them are not checked."""
    from reptok.model_config import SamplingConfig

    sampling = SamplingConfig.from_dict(json.loads((folder / "config.json").read_text())["sampling"])
    metrics = json.loads((folder / "metrics.json").read_text())
    shipped = {
        "decode_steps": sampling.decode_steps,
        "decode_temperature": sampling.decode_temperature,
        "decode_shift": sampling.decode_shift,
        "cfg_scale": sampling.cfg_scale,
        "generate_temperature": sampling.generate_temperature,
        "cfg_interval": list(sampling.guidance_interval("class")),
        "text_cfg_interval": list(sampling.guidance_interval("text")),
    }
    recorded = {key: metrics[key] for key in shipped if key in metrics}
    assert "decode_steps" in recorded and "cfg_scale" in recorded
    assert recorded == {key: shipped[key] for key in recorded}


def test_model_card_tables_are_the_shipped_metrics() -> None:
    """MODEL_CARD.md's two ablation tables are train/ablation_tables.py's output on assets/, so the card
    says what the shipped metrics.json files (train/evaluate.py on the shipped weights) say."""
    from train import ablation_tables

    tables = ablation_tables.main([str(ROOT / "assets")])
    assert "`reptok-emoji`" in tables  # this release: the retrained default; its ablation rows are to come
    assert tables in (ROOT / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_manifold_matches_the_shipped_models() -> None:
    m = load_manifold(ROOT / "assets" / "manifold.npz")
    # The λ sweep on the default model's backbone, each λ's tokens those of a shipped same-budget row
    # (at the default's λ its twin), which the app decodes a clicked point with.
    main = RepTok.from_pretrained(ASSET_MODELS / "reptok-emoji")
    assert list(m.settings) == ["0", "0.1", "1", "inf"]
    assert lambda_label(main.config.encoder.cosine_weight) == "0.1"
    assert m.setting_models == {lam: f"dae-lam{lam}" for lam in m.settings}
    for lam, owner in m.setting_models.items():
        config = RepTok.from_pretrained(ASSET_MODELS / owner).config
        assert config.backbone_sha256 == main.config.backbone_sha256
        assert lambda_label(config.encoder.cosine_weight) == lam
        assert np.array_equal(m.settings[lam]["tokens"], m.model_tokens[owner])
    for name, tokens in m.model_tokens.items():
        assert (ASSET_MODELS / name / "config.json").is_file(), name
        assert tokens.shape[0] == len(m.names)
