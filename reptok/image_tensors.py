"""Images <-> the model's tensors: a central square at the decoder's size, pixels in [-1, 1].

PIL images (already opened safely, `reptok.images`) and tensors take the same crop, so a photo
and its pixels as a tensor encode alike; the resize is Lanczos in PIL and antialiased bicubic
in torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from reptok.images import to_rgb

ImageInput = Image.Image | Sequence[Image.Image] | Tensor


def to_model_input(images: ImageInput, size: int) -> Tensor:
    """PIL image(s) or a (B, 3, H, W) / (3, H, W) tensor in [-1, 1] -> (B, 3, size, size) float32
    (center crop, antialiased resize)."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, Tensor):
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
        x = torch.stack([square_tensor(t, size) for t in x]) if x.shape[-2:] != (size, size) else x
    else:
        arrays = [np.asarray(square_pil(to_rgb(im), size), dtype=np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0  # (B, 3, S, S)
    return x.float()


def to_pil(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    arr = (
        ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(a) for a in arr]


def square_pil(image: Image.Image, size: int) -> Image.Image:
    """Central square, resized with Lanczos (in PIL: cheap even for a large photo)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def square_tensor(image: Tensor, size: int) -> Tensor:
    """(3, H, W) -> (3, size, size): central square, antialiased resize."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top : top + side, left : left + side]
    if side != size:
        image = torch.nn.functional.interpolate(
            image[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )[0].clamp(-1, 1)
    return image
