"""Helpers shared by the tests: tiny configs from the "test" presets, weight perturbation, tiny data
sets of shapes (an .npz like prepare_emoji's, or an image folder), the training scripts' arguments."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from reptok.decoder import DECODER_PRESETS
from reptok.encoder import ENCODER_PRESETS
from reptok.generator import MIXER_PRESETS, TEXT_PRESETS
from reptok.pipeline import RepTokConfig, SamplingConfig
from reptok.text import TextEncoderConfig
from train.prepare_emoji import write_npz

# A diffusers AutoencoderKL small enough for CPU tests: 3 -> 4 channels, 2× downsampling.
TINY_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8,
}  # fmt: skip

CLASS_NAMES = ["Smileys & Emotion", "Food & Drink", "Travel & Places"]


def tiny_config(with_text: bool = True) -> RepTokConfig:
    return RepTokConfig(
        encoder=ENCODER_PRESETS["test"],
        decoder=DECODER_PRESETS["test"],
        class_generator=MIXER_PRESETS["test"],
        text_generator=TEXT_PRESETS["test"].replace(text_dim=384) if with_text else None,
        text_encoder=TextEncoderConfig() if with_text else None,
        class_names=CLASS_NAMES,
        sampling=SamplingConfig(decode_steps=3, generate_steps=4),
    )


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter with small noise, so zero-inits don't hide gradients and the
    outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ------------------------------------------------ tiny emoji-format data sets of coloured shapes

CATEGORIES = ["Animals & Nature", "Food & Drink", "Objects"]
COLOURS = [(220, 40, 40), (40, 160, 60), (50, 80, 220)]


def shape_image(kind: int, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A 64×64 white image with a coloured disc, square or triangle at a random place and size."""
    yy, xx = np.mgrid[0:64, 0:64]
    cy, cx, r = rng.integers(22, 42), rng.integers(22, 42), rng.integers(10, 20)
    if kind == 0:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    elif kind == 1:
        inside = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        inside = (yy > cy - r) & (yy < cy + r) & (abs(xx - cx) < (yy - cy + r) / 2)
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    image[inside] = colour
    return image


def write_shapes_npz(path: Path, images: list[np.ndarray], labels: list[int], splits: list[str]) -> Path:
    """An .npz in prepare_emoji.py's format; every emoji in two styles that share its caption."""
    n = len(images)
    codes = [f"E{i // 2:03d}" for i in range(n)]  # pairs of styles share a code (and split, caption)
    names = [f"{CATEGORIES[c].split()[0].lower()} thing {i // 2}" for i, c in enumerate(labels)]
    arrays = {
        "images": np.stack(images).astype(np.uint8),
        "style": np.array(["google", "twitter"] * (n // 2), dtype=str),
        "code": np.array(codes, dtype=str),
        "category": np.array([CATEGORIES[c] for c in labels], dtype=str),
        "subcategory": np.array([f"sub-{c}-{i % 4 // 2}" for i, c in enumerate(labels)], dtype=str),
        "name": np.array(names, dtype=str),
        "caption": np.array(names, dtype=str),
        "split": np.array(splits, dtype=str),
        "category_names": np.array(sorted(CATEGORIES), dtype=str),
        "subcategory_names": np.array(
            sorted({f"sub-{c}-{j}" for c in range(3) for j in range(2)}), dtype=str
        ),
        "meta": np.array(json.dumps({"source": "synthetic test data"})),
    }
    write_npz(arrays, path)
    return path


def write_shapes_folder(root: Path, per_class: int = 8, size: int = 32) -> Path:
    """root/<circle|square>/<i>.png: random-coloured shapes on white, a stand-in for emoji."""
    rng = random.Random(0)
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), "white")
            draw = ImageDraw.Draw(image)
            lo, hi = rng.randrange(2, 10), rng.randrange(20, size - 2)
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if shape == "circle" else draw.rectangle)([lo, lo, hi, hi], fill=colour)
            image.save(root / shape / f"{i}.png")
    return root


def stage_a_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "test", "--data", str(data), "--out", str(out), *extra]


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts (nested: a checkpoint's model, EMA, optimizer) hold bitwise-equal tensors."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
