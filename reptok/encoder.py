"""The RepTok encoder: a frozen SSL ViT whose input [cls] embedding alone is trained.

Any timm `VisionTransformer` with a `cls_token` works: real hub checkpoints
(`vit_base_patch14_reg4_dinov2`, `vit_base_patch16_224.mae`,
`vit_base_patch16_clip_224.openai`) and the same classes built small with
`img_size` / `patch_size` overrides, which is how the in-house backbones are made.

The latent is the backbone's normalised [cls] output, z of shape (B, 1, D). A frozen copy
of the original backbone gives z_frozen and the cosine anchor λ·(1 − cos(z, z_frozen)).
The copy is not a second backbone: all weights but the cls embedding are frozen and
shared, so the frozen path only needs the original cls embedding (a D-vector buffer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from reptok.config import Config


@dataclass
class EncoderConfig(Config):
    # timm model name; any VisionTransformer with a cls_token.
    backbone: str = "vit_small_patch14_reg4_dinov2"
    # Overrides for timm.create_model, e.g. img_size / patch_size / embed_dim / depth / num_heads
    # to build a real architecture small. Plain types only (they go to config.json).
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"img_size": 64, "patch_size": 8})
    # Load timm's pretrained weights (needs the hub). In-house backbones come from files instead.
    pretrained: bool = False
    # Side of the square the backbone sees; inputs are center-cropped and resized to it.
    image_size: int = 64
    # Normalisation of [0, 1] pixels; None takes the backbone's own pretrained_cfg (ImageNet, CLIP, ...).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # λ of the cosine anchor. inf = frozen token (no adaptation, the RCG-style pure semantic code);
    # 0 = free token. The paper's default is small but non-zero.
    cosine_weight: float = 1.0
    # "center": crop non-square inputs to their central square (the official preprocessing);
    # "none": resize the whole image (aspect ratio not kept).
    crop: Literal["center", "none"] = "center"
    # "antialias": one antialiased bilinear resize. "pool-bilinear": average-pool by the integer
    # factor side // image_size, then plain bilinear: the official RepTok encoder's resize, which
    # its checkpoints were trained with.
    resize: Literal["antialias", "pool-bilinear"] = "antialias"


ENCODER_PRESETS: dict[str, EncoderConfig] = {
    # Tiny, for tests: a real DINOv2-reg class at 32 px, 2 blocks.
    "test": EncoderConfig(
        backbone="vit_small_patch14_reg4_dinov2",
        backbone_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2},
        image_size=32,
    ),
    # The in-house 64 px emoji backbones (DINO-, MAE-, CLIP-style and random) share this shape.
    "vit-s8-64px": EncoderConfig(
        backbone="vit_small_patch14_reg4_dinov2",
        backbone_kwargs={"img_size": 64, "patch_size": 8},
        image_size=64,
    ),
    # Real hub checkpoints, as the paper uses them (need the hub once).
    "dinov2-b14-reg": EncoderConfig(
        backbone="vit_base_patch14_reg4_dinov2.lvd142m",
        backbone_kwargs={"img_size": 224},
        pretrained=True,
        image_size=224,
    ),
    "mae-b16": EncoderConfig(
        backbone="vit_base_patch16_224.mae", backbone_kwargs={}, pretrained=True, image_size=224
    ),
    "clip-b16": EncoderConfig(
        backbone="vit_base_patch16_clip_224.openai", backbone_kwargs={}, pretrained=True, image_size=224
    ),
}


# The in-house pre-training methods (train/pretrain_backbone.py --method) and what the app and the
# model card call them, in the paper's backbone-table order: no prior first.
BACKBONE_METHODS: dict[str, str] = {
    "random": "random init",
    "clip": "CLIP-style",
    "mae": "MAE-style",
    "dino": "DINO-style",
    "dae": "DAE-style",
}


class EncoderOutput(NamedTuple):
    z: Tensor  # (B, 1, D) adapted token
    z_frozen: Tensor | None  # (B, 1, D) token of the original backbone, when computed
    cosine_loss: Tensor | None  # scalar λ·mean(1 − cos(z, z_frozen)), in training with 0 < λ < ∞


def create_backbone(config: EncoderConfig) -> VisionTransformer:
    """Build the timm ViT named by the config, with a clear error for what cannot work."""
    try:
        model = timm.create_model(config.backbone, pretrained=config.pretrained, **config.backbone_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"timm does not know a backbone named {config.backbone!r} (see timm.list_models())"
            ) from err
        raise
    if not isinstance(model, VisionTransformer) or getattr(model, "cls_token", None) is None:
        raise ValueError(
            f"backbone {config.backbone!r} is not a timm VisionTransformer with a cls_token; "
            "RepTok adapts the [cls] input embedding, so the backbone needs one"
        )
    return model


class Encoder(nn.Module):
    """Frozen ViT + trainable input [cls] embedding -> one token z (B, 1, D)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config)
        self.dim: int = self.backbone.embed_dim
        pretrained_cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        mean = config.mean or tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        std = config.std or tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # The original [cls] embedding: the frozen target path uses it instead of the trained one.
        self.register_buffer("frozen_cls_token", self.backbone.cls_token.detach().clone())
        self.freeze()

    def freeze(self) -> None:
        """Everything frozen except the [cls] embedding (also frozen when λ = ∞)."""
        self.backbone.requires_grad_(False)
        self.backbone.cls_token.requires_grad_(math.isfinite(self.config.cosine_weight))

    def reset_frozen_token(self) -> None:
        """Call after loading new backbone weights: the current cls embedding becomes the target."""
        self.frozen_cls_token.copy_(self.backbone.cls_token.detach())

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        self.backbone.eval()  # frozen weights: no dropout / drop-path even while the token trains
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised for the backbone."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if self.config.crop == "center" and h != w:
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            images = images[..., top : top + side, left : left + side]
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            official = self.config.resize == "pool-bilinear"
            factor = min(images.shape[-2:]) // size
            if official and factor > 1:
                images = F.avg_pool2d(images, factor)
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=not official, align_corners=False
            )
        x = (images.float() + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        return (x - self.mean) / self.std  # (B, 3, S, S)

    def _run_blocks(self, tokens: Tensor) -> Tensor:
        vit = self.backbone
        tokens = vit.norm_pre(vit.patch_drop(tokens))
        return vit.norm(vit.blocks(tokens))[:, :1]  # (B, 1, D) normalised [cls] output

    def _cls_outputs(self, x: Tensor, with_frozen: bool) -> tuple[Tensor, Tensor | None]:
        """Normalised [cls] outputs for the trained (and optionally the frozen) cls embedding.

        In every timm ViT the cls embedding enters only as token 0 of `_pos_embed`'s output,
        plus a term that does not depend on it. So the frozen path is the same tokens with
        token 0 shifted by (frozen − trained): one shared patch embedding and no module state
        swapped at run time (safe under concurrent requests).
        """
        vit = self.backbone
        tokens = vit._pos_embed(vit.patch_embed(x))  # (B, 1 + R + N, D)
        if not with_frozen:
            return self._run_blocks(tokens), None
        delta = (self.frozen_cls_token - vit.cls_token).to(tokens.dtype)  # (1, 1, D)
        frozen = torch.cat([tokens[:, :1] + delta, tokens[:, 1:]], dim=1).detach()
        if torch.is_grad_enabled() and vit.cls_token.requires_grad:
            # Training: the target needs no graph, so it gets its own no-grad pass.
            with torch.no_grad():
                z_frozen = self._run_blocks(frozen)
            return self._run_blocks(tokens), z_frozen
        both = self._run_blocks(torch.cat([tokens, frozen], dim=0))  # (2B, 1, D), one batched pass
        z, z_frozen = both.chunk(2, dim=0)
        return z, z_frozen

    def forward(
        self, images: Tensor, *, return_frozen: bool = False, z_frozen: Tensor | None = None
    ) -> EncoderOutput:
        """images (B, 3, H, W) in [-1, 1] -> EncoderOutput(z (B, 1, D), z_frozen, cosine_loss).

        `z_frozen` (B, 1, D): the original backbone's tokens of these images, when the caller has
        them (stage A without augmentation computes them once per image): the frozen pass is skipped."""
        lam = self.config.cosine_weight
        needs_anchor = self.training and 0.0 < lam < math.inf
        with_frozen = (return_frozen or needs_anchor) and z_frozen is None
        z, computed = self._cls_outputs(self.preprocess(images), with_frozen=with_frozen)
        z_frozen = computed if z_frozen is None else z_frozen.to(z)
        loss = None
        if needs_anchor:
            cos = F.cosine_similarity(z.float(), z_frozen.float(), dim=-1)  # (B, 1)
            loss = lam * (1.0 - cos).mean()
        return EncoderOutput(z=z, z_frozen=z_frozen, cosine_loss=loss)
