"""Image helpers for the app: error heat map, PSNR/SSIM, GIF, input validation. No Gradio here."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reptok import metrics

# The app's own scratch space (GIFs): under the system temp dir, which Gradio may serve outputs from.
CACHE_DIR = Path(tempfile.gettempdir()) / "reptok-explorer"
_MAX_AGE_S = 3600.0

# A few anchors of matplotlib's "inferno" (dark = no error, bright = large error), interpolated.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def to_array(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> (H, W, 3) float32 in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def error_heatmap(original: Image.Image, reconstruction: Image.Image, scale: int = 4) -> Image.Image:
    """|original − reconstruction| averaged over channels, mapped to inferno, 0..1 full scale.
    Upscaled with nearest neighbour so each pixel's error stays a visible square."""
    err = np.abs(to_array(original) - to_array(reconstruction)).mean(-1)  # (H, W) in [0, 1]
    pos = np.clip(err, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (pos - low)[..., None]
    rgb = _INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac  # (H, W, 3)
    heat = Image.fromarray(rgb.round().astype(np.uint8))
    return heat.resize((heat.width * scale, heat.height * scale), Image.Resampling.NEAREST)


def psnr_ssim(original: Image.Image, reconstruction: Image.Image) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two same-size RGB images: the library's metrics, as train/evaluate.py reports them."""
    a, b = (
        torch.from_numpy(to_array(im)).permute(2, 0, 1)[None] * 2 - 1 for im in (original, reconstruction)
    )
    return float(metrics.psnr(b, a)[0]), float(metrics.ssim(b, a)[0])


def token_size_text(token_dim: int, image_size: int) -> str:
    pixels = image_size * image_size * 3
    return (
        f"1 token × {token_dim} floats = {4 * token_dim:,} bytes (fp32), "
        f"vs {image_size}×{image_size}×3 = {pixels:,} bytes of pixels ({pixels / (4 * token_dim):.1f}× smaller)"
    )


def request_dir() -> Path:
    """A fresh folder for one request's files; folders older than an hour are removed first."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in CACHE_DIR.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > _MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another request removed it first
    path = CACHE_DIR / uuid.uuid4().hex
    path.mkdir()
    return path


def write_gif(frames: list[Image.Image], path: Path, fps: float = 8.0, scale: int = 4) -> Path:
    """A looping GIF that goes there and back (a → b → a), upscaled so small images are visible."""
    big = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST) for f in frames]
    loop = big + big[-2:0:-1]
    loop[0].save(path, save_all=True, append_images=loop[1:], duration=int(1000 / fps), loop=0)
    return path


# ------------------------------------------------------------------------- input validation


def number(value: object, name: str) -> float:
    """A finite float, or a ValueError whose text names the input."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r:.40}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r:.40}")
    return x


def clamp_int(value: object, name: str, low: int, high: int) -> int:
    return int(min(max(round(number(value, name)), low), high))


def clamp_float(value: object, name: str, low: float, high: float) -> float:
    return min(max(number(value, name), low), high)


def seed_value(value: object) -> int:
    """Seeds are ≥ 0 and fit a torch.Generator (which takes up to 2**64 − 1); keep them in int32 range."""
    return clamp_int(value, "seed", 0, 2**31 - 1)


def interval(lo: object, hi: object) -> tuple[float, float]:
    a, b = (
        clamp_float(lo, "guidance interval start", 0.0, 1.0),
        clamp_float(hi, "guidance interval end", 0, 1),
    )
    return (a, b) if a <= b else (b, a)
