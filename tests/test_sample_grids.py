"""train/sample_grids.py: the model card's pictures, on a tiny model and tiny emoji files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import COLOURS, shape_image, write_shapes_npz
from train import sample_grids


def test_grids_have_one_tile_per_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [(i // 2) % 3 for i in range(40)]
    splits = ["heldout" if i < 32 else "train" for i in range(40)]
    data = write_shapes_npz(
        tmp_path / "shapes.npz", [shape_image(c, COLOURS[c], rng) for c in labels], labels, splits
    )
    out = tmp_path / "card"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--n", "16"]
    sample_grids.main([*argv, "--classes", "Food & Drink", "Travel & Places", "--prompts", "red apple"])
    tile = 32 + 2  # the tiny model's side, plus the padding between tiles
    recon = Image.open(out / "reconstructions.png")
    assert recon.size == (16 * tile + 2, 2 * tile + 2)  # 16 originals over their reconstructions
    assert Image.open(out / "class_samples.png").size == (8 * tile + 2, 2 * tile + 2)  # 2 classes
    assert Image.open(out / "text_samples.png").size == (8 * tile + 2, 1 * tile + 2)  # 1 prompt
    assert np.asarray(recon).std() > 0  # not a blank page
