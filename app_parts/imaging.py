"""Image helpers for the app: error heat map, PSNR/SSIM, input validation, and the text that
sums up a model's held-out metrics. No Gradio here (output files: app_parts/outputs.py)."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from reptok import metrics

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


# What the held-out line's less familiar numbers mean; shown once in the Reconstruct tab.
HELD_OUT_HELP = (
    "In the held-out line, *identification* is the share of held-out emoji whose one-token "
    "reconstruction is closer (pixel MSE) to its own original than to any other held-out one; "
    "chance is 1/n. The *ridge probe* is a linear map tokens → pixels fit on the training emoji and "
    "scored on the held-out ones: what the token itself carries, without the decoder. *Token refined*: "
    "identification and PSNR from tokens refined on each image (the slider above), where measured."
)


def _finite(metrics: Mapping[str, object], key: str) -> float | None:
    """metrics[key] as a float if it is a finite number; None if missing, NaN, or not a number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _percent(share: float) -> str:
    """0.62 -> "62 %", 1/579 -> "0.2 %": whole percent, one significant digit below 1 %."""
    pct = 100 * share
    return f"{pct:.0f} %" if pct >= 1 or pct == 0 else f"{pct:.1g} %"


def held_out_text(metrics: Mapping[str, object]) -> str:
    """One line about a model measured on held-out emoji, from its metrics.json (train/evaluate.py);
    keys that are missing or not finite are left out, and "" when nothing is measured. E.g.
    "Held-out emoji (n = 579, 8 steps): identification 62 % (chance 0.2 %) · 16.1 dB · SSIM 0.52 ·
    ridge probe 15.9 dB / 51 % · token effective rank 12 of 192 · unseen style (fluent, n = 177):
    58 % · 15.2 dB"."""
    get = functools.partial(_finite, metrics)
    n = get("n")
    parts: list[str] = []
    if (ident := get("identification")) is not None:
        chance = get("identification_chance")
        chance = chance if chance is not None else (1 / n if n else None)  # 1/n by definition
        parts.append(
            f"identification {_percent(ident)}" + (f" (chance {_percent(chance)})" if chance else "")
        )
    if (psnr := get("psnr")) is not None:
        parts.append(f"{psnr:.1f} dB")
    if (ssim := get("ssim")) is not None:
        parts.append(f"SSIM {ssim:.2f}")
    refined = [_percent(x)] if (x := get("refined_identification")) is not None else []
    refined += [f"{x:.1f} dB"] if (x := get("refined_psnr")) is not None else []
    if refined and (refine_steps := get("refined_steps")):
        parts.append(f"token refined {refine_steps:.0f} steps: " + " / ".join(refined))
    probe_psnr, probe_ident = get("ridge_probe_psnr"), get("ridge_probe_identification")
    probe = [f"{probe_psnr:.1f} dB"] if probe_psnr is not None else []
    probe += [_percent(probe_ident)] if probe_ident is not None else []
    if probe:
        parts.append("ridge probe " + " / ".join(probe))
    if (rank := get("token_effective_rank")) is not None:
        dim = get("token_dim")
        parts.append(f"token effective rank {rank:.0f}" + (f" of {dim:.0f}" if dim else ""))
    unseen_ident, unseen_psnr = get("unseen_style_identification"), get("unseen_style_psnr")
    unseen = [_percent(unseen_ident)] if unseen_ident is not None else []
    unseen += [f"{unseen_psnr:.1f} dB"] if unseen_psnr is not None else []
    if unseen:
        style = metrics.get("unseen_style")  # a list of style names (or one name)
        styles = [style] if isinstance(style, str) else style if isinstance(style, list) else []
        about = [", ".join(map(str, styles))] if styles else []
        about += [f"n = {unseen_n:.0f}"] if (unseen_n := get("unseen_style_n")) is not None else []
        parts.append("unseen style" + (f" ({', '.join(about)})" if about else "") + ": " + " · ".join(unseen))
    if not parts:
        return ""
    steps = get("decode_steps")
    about = [f"n = {n:.0f}"] if n is not None else []
    about += [f"{steps:.0f} steps"] if steps is not None else []
    tau = get("decode_temperature")
    about += [f"τ {tau:g}"] if tau is not None and tau != 1 else []
    return "Held-out emoji" + (f" ({', '.join(about)})" if about else "") + ": " + " · ".join(parts)


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
