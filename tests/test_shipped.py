"""Smoke tests of the weights in assets/: each shipped model loads and reconstructs the example
images above a quality floor, so a regression in the weights or the library cannot land.

The floors sit a little under what MODEL_CARD.md measured on these examples (default sampler
settings, seed 0): far enough for float noise across machines, close enough to catch a real drop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app_parts.registry import ASSET_MODELS
from reptok.images import load_image
from reptok.manifold import load_manifold
from reptok.metrics import psnr, ssim
from reptok.pipeline import RepTok

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
MODELS = sorted(p for p in ASSET_MODELS.glob("*") if (p / "config.json").is_file())
MAX_ASSETS_BYTES = 200 * 2**20

# model folder name -> (mean PSNR dB, mean SSIM) floors on assets/examples
FLOORS: dict[str, tuple[float, float]] = {
    "reptok-emoji": (10.5, 0.25),  # measured 11.47 dB / 0.291 (interim CPU model, its default 8 Euler steps)
}


def test_assets_ship_models_examples_and_a_manifold() -> None:
    assert MODELS, "no model in assets/models"
    assert len(EXAMPLES) >= 8
    assert (ROOT / "assets" / "manifold.npz").is_file()
    total = sum(f.stat().st_size for f in (ROOT / "assets").rglob("*") if f.is_file())
    assert total < MAX_ASSETS_BYTES, f"assets/ holds {total / 2**20:.0f} MiB"


def test_every_backbone_file_is_stored_once() -> None:
    stored = [p for p in ASSET_MODELS.rglob("backbone.safetensors")]
    digests = [RepTok.from_pretrained(p.parent).backbone_sha256() for p in stored]
    assert len(set(digests)) == len(digests), "the same backbone is stored twice"


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


def test_manifold_matches_the_shipped_models() -> None:
    m = load_manifold(ROOT / "assets" / "manifold.npz")
    assert "inf" in m.settings and len(m.settings) >= 2
    for name, tokens in m.model_tokens.items():
        assert (ASSET_MODELS / name / "config.json").is_file(), name
        assert tokens.shape[0] == len(m.names)
