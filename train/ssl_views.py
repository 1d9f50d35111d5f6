"""Augmented views and ViT helpers shared by the SSL pre-training methods (train/ssl_methods.py).

Every random choice draws on the torch.Generator it is handed, one per step (train/common.py), so
runs resume to the bit; crops are one affine grid per batch, not a Python loop per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from reptok.encoder import EncoderConfig, create_backbone

# ------------------------------------------------------------------------------ pixels and views


def pixel_stats(backbone: VisionTransformer, config: EncoderConfig | None) -> tuple[Tensor, Tensor]:
    """The normalisation `reptok.encoder.Encoder` uses: the config's, else the backbone's pretrained_cfg."""
    pretrained_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = (config and config.mean) or tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
    std = (config and config.std) or tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return torch.rand(n, generator=gen, device=gen.device).cpu() * (high - low) + low  # (n,)


def _chance(gen: torch.Generator, n: int, p: float) -> Tensor:
    return _uniform(gen, n, 0.0, 1.0) < p  # (n,) bool


def random_resized_crop(
    images: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator, flip_p: float = 0.5
) -> Tensor:
    """Per-sample crop of `scale` of the area (aspect 3/4..4/3), resized to size², optional h-flip.

    One affine grid for the whole batch: per-sample randomness without a Python loop.
    """
    b = images.shape[0]
    area = _uniform(gen, b, *scale)
    ratio = _uniform(gen, b, math.log(3 / 4), math.log(4 / 3)).exp()
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions of side
    cx = (_uniform(gen, b, 0.0, 1.0) * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (_uniform(gen, b, 0.0, 1.0) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(_chance(gen, b, flip_p), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_augment(x: Tensor, gen: torch.Generator, blur_p: float, solarize_p: float) -> Tensor:
    """DINO's photometric augmentations on [0, 1] images, batched with per-sample parameters:
    colour jitter (p=0.8; brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale (p=0.2),
    Gaussian blur (sigma scaled to 64 px), solarisation."""
    b, dev = x.shape[0], x.device

    def col(values: Tensor) -> Tensor:
        return values.to(dev, x.dtype).view(b, 1, 1, 1)

    jitter = col(_chance(gen, b, 0.8).float())
    bright, contrast = col(_uniform(gen, b, 0.6, 1.4)), col(_uniform(gen, b, 0.6, 1.4))
    sat, hue = col(_uniform(gen, b, 0.8, 1.2)), _uniform(gen, b, -0.1, 0.1) * 2 * math.pi
    y = (x * bright).clamp(0, 1)
    y = ((y - _gray(y).mean(dim=(2, 3), keepdim=True)) * contrast + _gray(y).mean((2, 3), True)).clamp(0, 1)
    y = (_gray(y) + (y - _gray(y)) * sat).clamp(0, 1)
    # Hue: rotate the chroma plane of YIQ, a 3×3 matrix per sample.
    cos, sin = hue.cos(), hue.sin()
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
    mat = (torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ).to(dev, x.dtype)  # (B, 3, 3)
    y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
    x = jitter * y + (1 - jitter) * x
    gray = col(_chance(gen, b, 0.2).float())
    x = gray * _gray(x).expand_as(x) + (1 - gray) * x
    if blur_p > 0:
        sigma = _uniform(gen, b, 0.1, 1.0)
        taps = torch.arange(-2, 3, dtype=torch.float32)  # 5 taps: enough at 64 px
        kernel = torch.exp(-(taps**2) / (2 * sigma[:, None] ** 2))
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 5)
        keep = ~_chance(gen, b, blur_p)
        kernel[keep] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])  # identity for the unblurred
        k = kernel.repeat_interleave(3, 0).to(dev, x.dtype)  # (3B, 5): one kernel per channel
        flat = F.pad(x.reshape(1, 3 * b, *x.shape[2:]), (2, 2, 2, 2), mode="replicate")
        flat = F.conv2d(flat, k.view(3 * b, 1, 1, 5), groups=3 * b)
        x = F.conv2d(flat, k.view(3 * b, 1, 5, 1), groups=3 * b).view_as(x)
    if solarize_p > 0:
        sol = col(_chance(gen, b, solarize_p).float())
        x = sol * torch.where(x >= 0.5, 1 - x, x) + (1 - sol) * x
    return x


# ----------------------------------------------------------------------------------- ViT parts


def cls_features(backbone: VisionTransformer, x: Tensor) -> Tensor:
    """(B, 3, H, W) normalised pixels -> (B, D) [cls] output after the final norm: RepTok's latent."""
    return backbone.forward_features(x)[:, 0]


def forward_visible(backbone: VisionTransformer, x: Tensor, keep: Tensor) -> Tensor:
    """Run the ViT on the patches `keep` (B, K) only, prefix tokens (cls, registers) in front.

    Mirrors `VisionTransformer._pos_embed` for both layouts: with `no_embed_class` the position
    table covers patches only and the prefix tokens get none; otherwise its first rows are theirs.
    Returns (B, P + K, D) after the final norm.
    """
    vit = backbone
    patches = vit.patch_embed(x)  # (B, N, D)
    n_prefix_pos = 0 if vit.no_embed_class else vit.num_prefix_tokens
    patches = patches + vit.pos_embed[:, n_prefix_pos:]
    visible = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (B, K, D)
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    prefix_tokens = torch.cat(prefix, dim=1)  # (B, P, D)
    if n_prefix_pos:
        prefix_tokens = prefix_tokens + vit.pos_embed[:, :n_prefix_pos]
    tokens = vit.norm_pre(vit.pos_drop(torch.cat([prefix_tokens, visible], dim=1)))  # (B, P + K, D)
    return vit.norm(vit.blocks(tokens))


def as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter into a buffer of the same name (same state_dict keys, never optimised)."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return module


def build_backbone(
    config: EncoderConfig, seed: int, layer_scale: float | None, dynamic: bool = False
) -> VisionTransformer:
    """The timm ViT, seeded (timm initialises from the global RNG). `dynamic` lets DINO feed 32 px
    local crops; it changes no parameter, so the weights load strictly into the plain config.

    timm's DINOv2 init (cls and register tokens ~1e-6, LayerScale 1e-5) is made for 100k-step runs:
    a 1e-6 token through LayerNorm gets gradients ~1e5 that swamp the clipped global norm, and
    1e-5 residual branches take thousands of steps to open. With `layer_scale` set, standard ViT
    values instead: tokens std 0.02, LayerScale `layer_scale` (CaiT's 0.1 for shallow nets); None
    keeps timm's init. The random baseline gets the same init: the trained ones' starting point.
    """
    torch.manual_seed(seed)
    if dynamic:
        config = config.replace(backbone_kwargs={**config.backbone_kwargs, "dynamic_img_size": True})
    backbone = create_backbone(config)
    if layer_scale is None:
        return backbone
    with torch.no_grad():
        for token in (backbone.cls_token, backbone.reg_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for module in backbone.modules():
            if isinstance(module, LayerScale):
                module.gamma.fill_(layer_scale)
    return backbone


def module_device(module: nn.Module) -> torch.device:
    return next(iter([*module.parameters(), *module.buffers()])).device


class Views(nn.Module):
    """[-1, 1] images -> augmented, normalised backbone inputs; shared by the methods."""

    def __init__(self, backbone: VisionTransformer, config: EncoderConfig) -> None:
        super().__init__()
        mean, std = pixel_stats(backbone, config)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalise(self, x01: Tensor) -> Tensor:
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def crop(
        self, images: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator, flip_p: float
    ) -> Tensor:
        return self.normalise((random_resized_crop(images, size, scale, gen, flip_p) + 1) / 2)

    def dino(
        self,
        images: Tensor,
        size: int,
        scale: tuple[float, float],
        gen: torch.Generator,
        blur_p: float,
        solarize_p: float,
    ) -> Tensor:
        x01 = (random_resized_crop(images, size, scale, gen) + 1) / 2
        return self.normalise(color_augment(x01, gen, blur_p, solarize_p))
