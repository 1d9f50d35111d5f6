"""train/reproduce.sh, the recipe behind the shipped models, end to end at its `test` scale.

Tiny synthetic emoji; every step runs as its own process, as on a real machine: VAE and backbones ->
stage A in the VAE's latent space (a two-λ sweep, the other backbones, a second seed) -> stage B ->
export -> evaluate -> tables.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import COLOURS, shape_image, write_shapes_npz

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(3)
    labels = [(i // 2) % 3 for i in range(36)]
    splits = ["heldout" if i // 2 in (0, 4, 8, 12) else "train" for i in range(36)]
    data = write_shapes_npz(
        root / "shapes.npz", [shape_image(c, COLOURS[c], rng) for c in labels], labels, splits
    )
    env = {
        **os.environ,
        "DATA": str(data),
        "RUNS": str(root / "runs"),
        "JOBS": "2",
        "LAMBDAS": "1 inf",
        "DEFAULT_LAM": "1",
    }
    done = subprocess.run(
        ["bash", "train/reproduce.sh", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "runs", done


def test_recipe_exports_every_ablation_row_evaluated(
    recipe: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    runs, _ = recipe
    models = runs / "export" / "models"
    # main (dae, λ = 1, its own longer run) + the λ sweep (1, inf) + the four other backbones at λ = 1
    assert sorted(p.name for p in models.iterdir()) == [
        "clip-lam1", "dae-lam1", "dae-laminf", "dino-lam1", "mae-lam1", "random-lam1", "reptok-emoji"
    ]  # fmt: skip
    for folder in models.iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n"] == 8 and np.isfinite(metrics["psnr"])
        assert metrics["feature_space"].startswith("mae-")  # the separate feature network, shipped
    main = json.loads((models / "reptok-emoji" / "config.json").read_text())
    assert main["text_generator"] is not None and main["class_generator"] is not None
    twin = json.loads((models / "dae-lam1" / "config.json").read_text())
    # MAIN_TOK (6 steps, the last 2 decaying, with a token map), vs TOK (4)
    assert main["info"]["steps"] == 6 and main["info"]["decay_steps"] == 2 and "init" not in main["info"]
    assert main["decoder"]["token_map_channels"] == 2 and twin["decoder"]["token_map_channels"] == 0
    assert main["sampling"]["decode_shift"] == 0.5  # SHIP_SHIFT, and evaluated with it:
    assert json.loads((models / "reptok-emoji" / "metrics.json").read_text())["decode_shift"] == 0.5
    assert main["sampling"]["generate_temperature"] == 0.7  # SHIP_GEN_T, and evaluated with it:
    assert json.loads((models / "reptok-emoji" / "metrics.json").read_text())["generate_temperature"] == 0.7
    # SHIP_CFG_INTERVAL / SHIP_TEXT_CFG_INTERVAL, each generator's own, and evaluated with them:
    assert (main["sampling"]["cfg_interval"], main["sampling"]["text_cfg_interval"]) == ([0.1, 1], [0.2, 0.9])
    measured = json.loads((models / "reptok-emoji" / "metrics.json").read_text())
    assert (measured["cfg_interval"], measured["text_cfg_interval"]) == ([0.1, 1], [0.2, 0.9])
    assert twin["info"]["steps"] == 4
    assert twin["backbone_sha256"] == main["backbone_sha256"] and twin["text_generator"] is None
    assert main["info"]["backbone"].startswith("DAE-style") and main["info"]["backbone_method"] == "dae"
    assert main["image_space"]["kind"] == "vae" and main["decoder"]["in_channels"] == 4
    # Each distinct backbone is stored once (the λ = inf row shares the main model's; at this scale a
    # 2-step DINO teacher may even round to the random init in fp16), and every reference resolves.
    configs = {p.name: json.loads((p / "config.json").read_text()) for p in models.iterdir()}
    assert len(list(models.glob("*/backbone.safetensors"))) == len(
        {c["backbone_sha256"] for c in configs.values()}
    )
    assert configs["dae-laminf"]["backbone_file"] == "../reptok-emoji/backbone.safetensors"
    assert all((models / name / c["backbone_file"]).is_file() for name, c in configs.items())
    # One VAE for all: the main model stores it, every other model references it.
    assert [p.parent.name for p in models.glob("*/vae")] == ["reptok-emoji"]
    assert all(
        c["image_space"]["vae"] == "../reptok-emoji/vae" for n, c in configs.items() if n != "reptok-emoji"
    )
    # The second seed of the main backbone's default-λ row is evaluated (the noise band), not shipped.
    seed_twin = json.loads((runs / "tok-dae-lam1-seed1" / "model" / "metrics.json").read_text())
    assert np.isfinite(seed_twin["identification"]) and np.isfinite(seed_twin["ridge_probe_psnr"])
    assert (runs / "export" / "features" / "backbone.safetensors").is_file()


def test_recipe_ships_the_rows_as_tokenizers_with_their_metrics(
    recipe: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    runs, _ = recipe
    ship = runs / "ship"
    models = sorted(p.name for p in (ship / "models").iterdir())
    assert models == sorted(p.name for p in (runs / "export" / "models").iterdir())
    for name in models:
        folder = ship / "models" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        evaluated = json.loads((runs / "export" / "models" / name / "metrics.json").read_text())
        assert metrics["psnr"] == evaluated["psnr"]  # measured on the same fp16 tokenizer:
        assert (folder / "tokenizer.safetensors").read_bytes() == (
            runs / "export" / "models" / name / "tokenizer.safetensors"
        ).read_bytes()
        if name == "reptok-emoji":
            assert (
                folder / "class_generator.safetensors"
            ).is_file() and "generators_not_shipped" not in metrics
        else:  # a row: its tokenizer alone; its gFD was measured with the class generator left behind
            assert not (folder / "class_generator.safetensors").exists()
            assert metrics["generators_not_shipped"] == ["class_generator"] and "gFD" in " ".join(metrics)
    assert (ship / "features" / "backbone.safetensors").is_file() and (ship / "manifold.npz").is_file()


def test_recipe_prints_both_tables_and_skips_finished_steps(
    recipe: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    runs, done = recipe
    # Equal budgets in the tables: the main model's same-budget twin fills its rows, the main gets a line.
    assert "| random init | `random-lam1` |" in done.stdout and "| DINO-style | `dino-lam1` |" in done.stdout
    assert "| 1 | `dae-lam1` |" in done.stdout and "`reptok-emoji` |" not in done.stdout
    assert (
        "The default model `reptok-emoji` (same backbone and λ, stage A 6 steps instead of the rows' budget, "
        "a decoder with a 2-channel token map)" in done.stdout
    )
    assert "| ∞ (frozen) | `dae-laminf` |" in done.stdout and "| DAE-style | `dae-lam1` |" in done.stdout
    assert "Seed noise: `dae-lam1` trained again with seed 1 differs by PSNR" in done.stdout
    # A second call finds every output and redoes nothing.
    env = {**os.environ, "DATA": str(runs.parent / "shapes.npz"), "RUNS": str(runs), "LAMBDAS": "1 inf"}
    env["DEFAULT_LAM"] = "1"
    again = subprocess.run(
        ["bash", "train/reproduce.sh", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "start " not in again.stdout, again.stdout[-2000:]


def test_recipe_stops_at_the_stage_where_a_step_failed(tmp_path: Path) -> None:
    env = {**os.environ, "DATA": str(tmp_path / "missing.npz"), "RUNS": str(tmp_path / "runs"), "JOBS": "2"}
    done = subprocess.run(
        ["bash", "train/reproduce.sh", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and "stopping: a step failed" in done.stderr
    # Stage 1 (the latent space and the backbones) fails: nothing of a later stage starts.
    assert "FAIL  latent-space" in done.stdout and "FAIL  backbone-dae" in done.stdout
    assert "start tok-" not in done.stdout and "start row-" not in done.stdout
