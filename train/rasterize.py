"""Emoji images to the data set's pixels: a PNG (any mode) or an SVG (rasterised with resvg, a
maintained library), alpha-composited over white at the data set's size, (size, size, 3) uint8.
"""

from __future__ import annotations

import io

import numpy as np
import resvg_py
from PIL import Image

__all__ = ["composite_on_white", "render_svg_on_white"]

SUPERSAMPLE = 4  # SVGs are drawn at 4× the size, then LANCZOS: smoother edges than drawing at 64


def composite_on_white(png_bytes: bytes, size: int) -> np.ndarray:
    """Decode a PNG (any mode) and alpha-composite it over white: (size, size, 3) uint8."""
    with Image.open(io.BytesIO(png_bytes)) as image:
        image.load()  # decode now, so a truncated file fails here and is counted as unreadable
        rgba = image.convert("RGBA")  # palette + tRNS, LA, RGB all become straight RGBA
    return _rgba_on_white(rgba, size)


def _rgba_on_white(rgba: Image.Image, size: int) -> np.ndarray:
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)  # premultiplies alpha inside
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def render_svg_on_white(svg: str, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Rasterise an SVG at supersample × size, centred and uncropped, then as `composite_on_white`."""
    big = size * supersample
    # resvg fits the viewBox into big × big keeping its aspect; no fonts: the SVGs have no text.
    png = resvg_py.svg_to_bytes(svg_string=svg, width=big, height=big, skip_system_fonts=True)
    with Image.open(io.BytesIO(png)) as image:
        rgba = image.convert("RGBA")
    if rgba.size != (big, big):  # a viewBox that is not square: pad, never stretch
        square = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        square.paste(rgba, ((big - rgba.width) // 2, (big - rgba.height) // 2))
        rgba = square
    return _rgba_on_white(rgba, size)
