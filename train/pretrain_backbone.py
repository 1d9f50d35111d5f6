"""Pre-train the in-house SSL backbones on emoji: DINO, MAE, CLIP-style, or none (random).

    python train/pretrain_backbone.py --method dino|mae|clip|random --data data/emoji64.npz \
        --out runs/backbones/dino [--preset test|cpu-s|gpu-s] [--encoder NAME] [--steps N] [--resume] ...

No pre-trained SSL ViT can be downloaded here, so RepTok's backbones are made here. The backbone
is always a timm ViT built by `reptok.encoder.create_backbone`, so in-house and hub checkpoints
take the same path. Writes to <out>:

    backbone.safetensors   the timm ViT state_dict only (fp32); heads, decoders, projections stay behind.
                           Loads strictly into create_backbone(EncoderConfig.from_dict(config["encoder"])).
    config.json            {"encoder", "method", "steps", "wall_time_s", "knn", "train_config",
                            "method_config", "preset", "layer_scale_init", "data", "seed", "device"}
    log.jsonl              train/common.py's log lines plus {"event": "knn", ...} records
    checkpoint.pt, run_config.json   the Trainer's (resume with --resume); caption_vectors.npz for clip

The quality signal is `knn_accuracy` (k = 20, cosine, DINO's weighted vote) on the [cls] output:
train split = memory bank, held-out split (emoji unseen in every style) = queries.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers import LayerScale
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reptok.encoder import ENCODER_PRESETS, Encoder, EncoderConfig, create_backbone
from train.common import (
    TrainConfig,
    Trainer,
    add_train_args,
    select_preset,
    to_plain,
    train_config_from_args,
)
from train.data import build_dataset

METHODS = ("dino", "mae", "clip", "random")
# What a backbone can be pre-trained as: the in-house encoder presets, plus a narrow, shallow one
# on the same 64 px / patch-8 grid and timm class (~8x cheaper than vit-s8-64px) for CPU runs.
ENCODERS: dict[str, EncoderConfig] = {
    **{name: enc for name, enc in ENCODER_PRESETS.items() if not enc.pretrained},
    "vit-t8-d6-64px": ENCODER_PRESETS["vit-s8-64px"].replace(
        backbone_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
    ),
    # ViT-Ti/8 (5.4 M parameters, 10.8 MB in fp16): the GPU backbones. Five of them (four compared
    # and the feature network) ship next to seven decoders within the 200 MB of assets/.
    "vit-t8-64px": ENCODER_PRESETS["vit-s8-64px"].replace(
        backbone_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 12, "num_heads": 3}
    ),
}


# ------------------------------------------------------------------------------------ configs


@dataclass
class DinoConfig:
    out_dim: int = 1024  # prototypes; DINO's 65k is for ImageNet, a few thousand images need far fewer
    hidden_dim: int = 1024
    bottleneck_dim: int = 128
    head_batch_norm: bool = True  # see DinoHead: what lets a short run learn at all
    local_crops: int = 4  # at half the image side
    global_scale: tuple[float, float] = (0.35, 1.0)
    local_scale: tuple[float, float] = (0.08, 0.35)
    student_temp: float = 0.1
    # The teacher temperature warms up from start to end: a cold (sharp) start avoids early collapse.
    teacher_temp_start: float = 0.04
    teacher_temp_end: float = 0.06
    teacher_temp_warmup: float = 0.3  # fraction of the run
    # Teacher = EMA of the student, momentum cosine-scheduled up to 1. Short runs need a lower
    # start than DINO's 0.996 or the teacher hardly moves.
    momentum_start: float = 0.99
    # "center": DINO's centering (EMA of the teacher's mean output) + sharpening. "sinkhorn": DINOv2's
    # Sinkhorn-Knopp, balanced assignments per batch: no slow centre to wait for, so short runs learn.
    teacher_norm: Literal["center", "sinkhorn"] = "center"
    center_momentum: float = 0.9
    koleo_weight: float = 0.0  # DINOv2's KoLeo term on the student's global [cls]: spreads a batch out


@dataclass
class MaeConfig:
    mask_ratio: float = 0.75
    decoder_dim: int = 192
    decoder_depth: int = 2
    decoder_heads: int = 3
    crop_scale: tuple[float, float] = (0.5, 1.0)


@dataclass
class ClipConfig:
    init_temperature: float = 0.07
    crop_scale: tuple[float, float] = (0.6, 1.0)  # mild, no flips, no colour jitter: captions name both


@dataclass
class PretrainConfig:
    encoder: EncoderConfig
    # One loop config per method: a step costs very differently (MAE encodes a quarter of the
    # patches, DINO runs 2 + n crops through the student and 2 through the teacher).
    train: dict[str, TrainConfig]
    knn_every: int = 0  # steps between k-NN evaluations; 0: only at the end (a full data pass)
    knn_k: int = 20
    layer_scale_init: float | None = 0.1  # None: timm's own (1e-5 for DINOv2 classes); see build_backbone
    dino: DinoConfig = field(default_factory=DinoConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)


def _loops(**per_method: TrainConfig) -> dict[str, TrainConfig]:
    return {**per_method, "random": TrainConfig(steps=0, batch_size=1, lr=1.0)}  # random trains nothing


_TEST = TrainConfig(steps=3, batch_size=8, lr=5e-4, warmup_steps=1, ema_decay=0.9, grad_clip=3.0, log_every=1)
_CPU: dict[str, Any] = {"weight_decay": 0.05, "ema_decay": 0.99, "grad_clip": 1.0, "log_every": 10}
_GPU: dict[str, Any] = {"weight_decay": 0.05, "ema_decay": 0.999, "log_every": 50, "num_workers": 4}
PRESETS: dict[str, PretrainConfig] = {
    # Seconds, for tests: the tiny encoder at 32 px.
    "test": PretrainConfig(
        encoder=ENCODER_PRESETS["test"],
        train=_loops(dino=_TEST, mae=_TEST, clip=_TEST),
        dino=DinoConfig(out_dim=64, hidden_dim=64, bottleneck_dim=32, local_crops=2),
        mae=MaeConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2),
    ),
    # ~15 minutes each on 2 free CPU cores (measured: DINO 2.6 s/step, MAE 0.54, CLIP 0.82 at batch 64),
    # on the narrow vit-t8-d6-64px. Probes, held-out k-NN category accuracy (random init 0.48):
    # CLIP 300 steps 0.61; MAE 400 steps 0.47 (its loss falls, its [cls] barely moves); DINO 150
    # steps 0.48 (still near-uniform targets: DINO needs the GPU). `--encoder vit-s8-64px` trains
    # the shipped shape, ~4x slower per image.
    "cpu-s": PretrainConfig(
        encoder=ENCODERS["vit-t8-d6-64px"],
        train=_loops(
            dino=TrainConfig(steps=300, batch_size=64, lr=5e-4, warmup_steps=20, ckpt_every=100, **_CPU),
            mae=TrainConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=50, ckpt_every=250, **_CPU),
            clip=TrainConfig(steps=1000, batch_size=64, lr=3e-4, warmup_steps=30, ckpt_every=250, **_CPU),
        ),
        # Fewer prototypes and no temperature ramp: the only DINO setting that left uniform
        # targets within a few hundred steps in the CPU probes.
        dino=DinoConfig(out_dim=256, local_crops=2, teacher_temp_end=0.04, momentum_start=0.95),
    ),
    # One H100 in bf16, the three methods side by side (estimated ~6-8 minutes; not yet run).
    "gpu-s": PretrainConfig(
        encoder=ENCODERS["vit-t8-64px"],
        train=_loops(
            dino=TrainConfig(steps=3000, batch_size=256, lr=5e-4, warmup_steps=300, ckpt_every=500, **_GPU),
            mae=TrainConfig(steps=6000, batch_size=512, lr=1.5e-3, warmup_steps=400, ckpt_every=1000, **_GPU),
            clip=TrainConfig(steps=2500, batch_size=512, lr=5e-4, warmup_steps=300, ckpt_every=500, **_GPU),
        ),
        knn_every=1000,
        dino=DinoConfig(
            out_dim=4096, hidden_dim=2048, bottleneck_dim=256, local_crops=6, momentum_start=0.996
        ),
    ),
}


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


# ------------------------------------------------------------------------------------- methods


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine against L2-normalised prototypes (DINO's
    weight-normed last layer with g = 1).

    With `batch_norm` (DINO's `use_bn_in_head`), the hidden layers are batch-normalised. A fresh ViT
    gives nearly the same [cls] for every image (cosine ~0.94 here), so the teacher's logits differ
    by ~0.02 between images and its targets are near uniform: DINO then needs thousands of steps to
    break the symmetry. BN removes that common part, so short runs get informative targets at once.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, batch_norm: bool
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.bn2 = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.fc3 = nn.Linear(hidden_dim, bottleneck_dim)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.bn2(self.fc2(F.gelu(self.bn1(self.fc1(x))))))  # (B, hidden)
        h = F.normalize(self.fc3(h), dim=-1)  # (B, bottleneck)
        return h @ F.normalize(self.prototypes, dim=-1).T  # (B, K) in [-1, 1]


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """(B, K) teacher logits -> (B, K) targets whose rows sum to 1 and whose columns are balanced."""
    q = torch.exp((logits - logits.max()) / temperature).T  # (K, B)
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype gets 1/K of the batch
        q = q / q.sum(dim=0, keepdim=True) / b  # each image's assignment sums to 1/B
    return (q * b).T


def koleo_loss(features: Tensor) -> Tensor:
    """Kozachenko-Leonenko entropy estimate (DINOv2): -mean log distance to the nearest neighbour."""
    x = F.normalize(features, dim=-1)  # (B, D)
    with torch.no_grad():
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)  # (B,)
    return -torch.log((x - x[nearest]).norm(dim=-1) + 1e-8).mean()


class DinoMethod(nn.Module):
    """Student + EMA teacher self-distillation over multi-crop views (Caron et al. 2021)."""

    def __init__(self, cfg: PretrainConfig, seed: int) -> None:
        super().__init__()
        d = cfg.dino
        self.cfg, self.image_size = d, cfg.encoder.image_size
        self.total_steps = cfg.train["dino"].steps
        self.backbone = build_backbone(cfg.encoder, seed, cfg.layer_scale_init, dynamic=True)  # the student
        self.head = DinoHead(
            self.backbone.embed_dim, d.hidden_dim, d.bottleneck_dim, d.out_dim, d.head_batch_norm
        )
        # The teacher's weights are buffers: the Trainer checkpoints trained parameters and all
        # buffers, and treats other parameters as fixed (fingerprinted, not saved), which the
        # teacher is not. The names stay those of the parameters, so its state_dict is a ViT's.
        self.teacher = as_buffers(copy.deepcopy(self.backbone))
        self.teacher_head = as_buffers(copy.deepcopy(self.head))
        self.views = Views(self.backbone, cfg.encoder)
        self.register_buffer("center", torch.zeros(1, d.out_dim))
        # Steps taken, in the state_dict so the schedules resume. The teacher is updated at the
        # start of each call, i.e. right after the optimiser step the previous call led to.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def trainable(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.head.parameters()]

    def exported(self) -> VisionTransformer:
        return self.teacher  # DINO evaluates (and RepTok uses) the teacher: the smoother EMA weights

    def schedules(self, step: int) -> tuple[float, float]:
        d, progress = self.cfg, step / max(1, self.total_steps - 1)
        warm = min(1.0, progress / d.teacher_temp_warmup) if d.teacher_temp_warmup > 0 else 1.0
        temp = d.teacher_temp_start + (d.teacher_temp_end - d.teacher_temp_start) * warm
        momentum = 1 - (1 - d.momentum_start) * (math.cos(math.pi * min(progress, 1.0)) + 1) / 2
        return temp, momentum

    @torch.no_grad()
    def _update_teacher(self, momentum: float) -> None:
        for mod_t, mod_s in ((self.teacher, self.backbone), (self.teacher_head, self.head)):
            teacher = dict(mod_t.named_buffers())
            for name, p_s in mod_s.named_parameters():
                teacher[name].lerp_(p_s.detach().to(teacher[name].dtype), 1 - momentum)

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        d, step = self.cfg, int(self.step)
        teacher_temp, momentum = self.schedules(step)
        if step > 0:
            self._update_teacher(momentum)
        self.step += 1
        images = batch["image"].to(self.center.device)  # (B, 3, H, W) in [-1, 1]
        size, local = self.image_size, self.image_size // 2
        globals_ = [
            self.views.dino(images, size, d.global_scale, gen, blur_p=1.0, solarize_p=0.0),
            self.views.dino(images, size, d.global_scale, gen, blur_p=0.1, solarize_p=0.2),
        ]
        locals_ = [self.views.dino(images, local, d.local_scale, gen, 0.5, 0.0) for _ in range(d.local_crops)]
        with torch.no_grad():
            t_logits = self.teacher_head(cls_features(self.teacher, torch.cat(globals_))).float()  # (2B, K)
            if d.teacher_norm == "sinkhorn":
                t_prob = torch.cat([sinkhorn_knopp(t, teacher_temp) for t in t_logits.chunk(2)])
            else:
                t_prob = F.softmax((t_logits - self.center) / teacher_temp, dim=-1)
        s_cls = cls_features(self.backbone, torch.cat(globals_))  # (2B, D)
        s_logits = [self.head(s_cls)]  # (2B, K)
        if locals_:
            s_logits.append(self.head(cls_features(self.backbone, torch.cat(locals_))))  # (nB, K)
        s_logp = F.log_softmax(torch.cat(s_logits).float() / d.student_temp, dim=-1).chunk(2 + len(locals_))
        loss, pairs = images.new_zeros((), dtype=torch.float32), 0
        for i, target in enumerate(t_prob.chunk(2)):
            for v, logp in enumerate(s_logp):
                if v != i:  # every view predicts the teacher of each *other* global view
                    loss, pairs = loss + (-target * logp).sum(-1).mean(), pairs + 1
        loss = loss / pairs
        if d.koleo_weight > 0:
            koleo = sum(koleo_loss(c.float()) for c in s_cls.chunk(2)) / 2
            loss = loss + d.koleo_weight * koleo
        with torch.no_grad():
            self.center.lerp_(t_logits.mean(0, keepdim=True), 1 - d.center_momentum)
            entropy = -(t_prob * t_prob.clamp_min(1e-12).log()).sum(-1).mean()
            mean_prob = t_prob.mean(0)
            batch_entropy = -(mean_prob * mean_prob.clamp_min(1e-12).log()).sum()
        # Collapse shows as entropy -> log K (uniform) or batch_entropy -> 0 (one prototype for all).
        logs = {"teacher_temp": teacher_temp, "momentum": momentum, "t_entropy": entropy}
        return loss, logs | {"t_batch_entropy": batch_entropy}


class MaeMethod(nn.Module):
    """Masked autoencoder (He et al. 2022): the ViT sees 25 % of the patches (+ cls, registers),
    a small decoder predicts the per-patch normalised pixels of the rest."""

    def __init__(self, cfg: PretrainConfig, seed: int) -> None:
        super().__init__()
        m = cfg.mae
        self.cfg, self.image_size = m, cfg.encoder.image_size
        self.backbone = build_backbone(cfg.encoder, seed, cfg.layer_scale_init)
        self.views = Views(self.backbone, cfg.encoder)
        self.num_patches = self.backbone.patch_embed.num_patches
        self.patch = self.backbone.patch_embed.patch_size[0]
        dim = m.decoder_dim
        self.decoder_embed = nn.Linear(self.backbone.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.decoder_blocks = nn.ModuleList(
            Block(dim, m.decoder_heads, qkv_bias=True) for _ in range(m.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * 3)
        for p in (self.mask_token, self.decoder_pos):
            nn.init.trunc_normal_(p, std=0.02)

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def exported(self) -> VisionTransformer:
        return self.backbone

    def patchify(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, p·p·3), patches row-major like timm's patch_embed."""
        b, c, h, w, p = *x.shape, self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, 3)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"].to(self.mask_token.device)  # (B, 3, H, W) in [-1, 1]
        crops = random_resized_crop(images, self.image_size, self.cfg.crop_scale, gen)  # (B, 3, S, S)
        b, n = crops.shape[0], self.num_patches
        n_keep = max(1, round(n * (1 - self.cfg.mask_ratio)))
        noise = torch.rand(b, n, generator=gen, device=gen.device).to(crops.device)
        keep = noise.argsort(dim=1)[:, :n_keep]  # (B, K) a random subset per image
        encoded = forward_visible(self.backbone, self.views.normalise((crops + 1) / 2), keep)  # (B, P + K, D)
        n_prefix = encoded.shape[1] - n_keep
        tokens = self.decoder_embed(encoded)  # (B, P + K, Dd)
        dim = tokens.shape[-1]
        grid = self.mask_token.to(tokens.dtype).expand(b, n, dim)
        grid = grid.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), tokens[:, n_prefix:])  # (B, N, Dd)
        tokens = torch.cat([tokens[:, :n_prefix], grid + self.decoder_pos], dim=1)  # (B, P + N, Dd)
        for block in self.decoder_blocks:
            tokens = block(tokens)
        pred = self.decoder_pred(self.decoder_norm(tokens))[:, n_prefix:].float()  # (B, N, p·p·3)
        target = self.patchify(crops.float())
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(b, n, device=crops.device).scatter(1, keep, 0.0)  # 1 where hidden
        loss = (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()
        return loss, {}


class ClipMethod(nn.Module):
    """Image tower [cls] -> linear -> cosine against the frozen MiniLM caption embedding,
    learnable temperature, symmetric InfoNCE with duplicate captions merged per batch."""

    def __init__(self, cfg: PretrainConfig, seed: int, caption_ids: Tensor, caption_vectors: Tensor) -> None:
        super().__init__()
        self.cfg, self.image_size = cfg.clip, cfg.encoder.image_size
        self.backbone = build_backbone(cfg.encoder, seed, cfg.layer_scale_init)
        self.views = Views(self.backbone, cfg.encoder)
        self.proj = nn.Linear(self.backbone.embed_dim, caption_vectors.shape[1], bias=False)
        nn.init.trunc_normal_(self.proj.weight, std=self.backbone.embed_dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.clip.init_temperature)))
        # Derived from the data set and the cache, not state: kept out of checkpoints.
        self.register_buffer("caption_ids", caption_ids, persistent=False)  # (N_data,) long
        self.register_buffer("caption_vectors", caption_vectors, persistent=False)  # (U, Dt), unit norm

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def exported(self) -> VisionTransformer:
        return self.backbone

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = self.logit_scale.device
        images = batch["image"].to(device)  # (B, 3, H, W)
        ids = self.caption_ids[torch.as_tensor(batch["index"], device=device)]  # (B,)
        # The two styles of an emoji share a caption: one text column per distinct caption, so a
        # duplicate is never a negative. Image->text is plain CE over the distinct captions;
        # text->image treats every image of a caption as a positive.
        unique, which = torch.unique(ids, return_inverse=True)  # (U,), (B,)
        text = self.caption_vectors[unique]  # (U, Dt)
        x = self.views.crop(images, self.image_size, self.cfg.crop_scale, gen, flip_p=0.0)
        img = F.normalize(self.proj(cls_features(self.backbone, x)).float(), dim=-1)  # (B, Dt)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * img @ text.T  # (B, U)
        i2t = F.cross_entropy(logits, which)
        positive = which.unsqueeze(0) == torch.arange(len(unique), device=device).unsqueeze(1)  # (U, B)
        t2i = (logits.T.logsumexp(1) - logits.T.masked_fill(~positive, -math.inf).logsumexp(1)).mean()
        accuracy = (logits.argmax(1) == which).float().mean()
        return (i2t + t2i) / 2, {"temperature": 1 / scale.detach(), "batch_acc": accuracy}


@torch.no_grad()
def caption_vectors(captions: Sequence[str], cache: Path, batch_size: int = 256) -> tuple[list[str], Tensor]:
    """Mean-pooled (attention-masked), L2-normalised MiniLM embeddings of the distinct captions,
    computed once and cached in a plain .npz (loads without pickle)."""
    unique = sorted(set(captions))
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if npz["captions"].tolist() == unique:
                return unique, torch.from_numpy(npz["vectors"])
    from reptok.text import FrozenTextEncoder, TextEncoderConfig

    encoder = FrozenTextEncoder(TextEncoderConfig())
    chunks = []
    for start in range(0, len(unique), batch_size):
        hidden, mask = encoder(unique[start : start + batch_size])  # (b, L, Dt), (b, L)
        weights = mask.unsqueeze(-1).float()
        chunks.append(F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1))  # (b, Dt)
    vectors = torch.cat(chunks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, captions=np.array(unique, dtype=str), vectors=vectors.numpy())
    tmp.replace(cache)
    return unique, vectors


# ------------------------------------------------------------------------------------- k-NN


def dataset_labels(dataset: Dataset, key: str) -> list[str]:
    """Class names per item without loading images: 'category' / 'subcategory' of an EmojiDataset,
    or 'label' (the class the dataset was built with, e.g. an image folder's sub-folder)."""
    data, rows = getattr(dataset, "data", None), getattr(dataset, "rows", None)
    if key in ("category", "subcategory") and data is not None and rows is not None:
        return getattr(data, key)[rows].tolist()
    if key == "label":
        return [dataset.class_names[i] for i in dataset.labels]
    raise ValueError(f"{type(dataset).__name__} has no {key!r} labels; use 'label'")


@torch.no_grad()
def extract_features(
    backbone: VisionTransformer, dataset: Dataset, config: EncoderConfig | None = None, batch_size: int = 128
) -> Tensor:
    """(N, D) L2-normalised [cls] outputs of the whole data set, in order, in eval mode."""
    device = module_device(backbone)
    size = backbone.patch_embed.img_size
    mean, std = pixel_stats(backbone, config)
    was_training = backbone.training
    backbone.eval()
    features = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = (batch["image"].to(device).float() + 1) / 2  # (B, 3, H, W) in [0, 1]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean.to(device)) / std.to(device)
        features.append(F.normalize(cls_features(backbone, x).float(), dim=-1).cpu())
    backbone.train(was_training)
    return torch.cat(features)


def knn_classify(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """DINO's weighted k-NN: each of the k most cosine-similar bank items votes exp(sim / T)."""
    k = min(k, len(bank))
    preds = []
    for chunk in queries.split(1024):
        sims, idx = (chunk @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(
            1, bank_labels[idx], (sims / temperature).exp()
        )
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    backbone: VisionTransformer,
    train_ds: Dataset,
    heldout_ds: Dataset,
    label_keys: Sequence[str] = ("category", "subcategory"),
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 128,
    config: EncoderConfig | None = None,
) -> dict[str, Any]:
    """k-NN accuracy of the held-out split against the train split as the memory bank, per label key.

    Held-out emoji are unseen in every style, so this measures how well the [cls] output groups
    new emoji with their category, which is what the generator has to model.
    """
    bank = extract_features(backbone, train_ds, config, batch_size)  # (N, D)
    queries = extract_features(backbone, heldout_ds, config, batch_size)  # (Q, D)
    result: dict[str, Any] = {"k": min(k, len(bank)), "temperature": temperature}
    result.update(n_bank=len(bank), n_query=len(queries))
    for key in label_keys:
        bank_names, query_names = dataset_labels(train_ds, key), dataset_labels(heldout_ds, key)
        names = {name: i for i, name in enumerate(sorted(set(bank_names) | set(query_names)))}
        bank_ids = torch.tensor([names[n] for n in bank_names])
        query_ids = torch.tensor([names[n] for n in query_names])
        preds = knn_classify(bank, bank_ids, queries, k, temperature, len(names))
        result[key] = float((preds == query_ids).float().mean())
    return result


# ------------------------------------------------------------------------------ files and the CLI


def save_backbone(backbone: VisionTransformer, path: Path) -> None:
    """The timm ViT's state_dict in fp32 safetensors, written atomically."""
    state = {k: v.detach().float().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.chmod(0o644)  # safetensors writes 0600
    tmp.replace(path)


def load_encoder(run_dir: str | Path, cosine_weight: float = math.inf) -> tuple[Encoder, dict[str, Any]]:
    """A pre-training run folder as a RepTok encoder: (Encoder with the run's weights, its config.json).

    The one reader of this folder format (stage A, evaluation and the checks here use it): strict keys,
    and errors that name the file at fault. The loaded cls embedding becomes the frozen target.
    """
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "backbone.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone folder {run_dir} has no {path.name} (train/pretrain_backbone.py)"
            )
    config = json.loads(config_path.read_text())
    if "encoder" not in config:
        raise ValueError(f"{config_path} has no 'encoder' entry; is it a pretrain_backbone.py folder?")
    encoder_config = EncoderConfig.from_dict(config["encoder"]).replace(
        cosine_weight=cosine_weight, pretrained=False
    )
    encoder = Encoder(encoder_config)
    try:
        encoder.backbone.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as err:  # missing / unexpected keys or shapes: say which files disagree
        raise ValueError(f"{weights_path} does not fit the backbone in {config_path}: {err}") from err
    encoder.reset_frozen_token()
    return encoder, config


def load_backbone(run_dir: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """A pre-trained backbone from a run folder: (ViT in eval mode, its config.json), strict keys."""
    encoder, config = load_encoder(run_dir)
    return encoder.backbone.eval(), config


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def make_method(method: str, cfg: PretrainConfig, train_ds: Dataset, out: Path, seed: int) -> nn.Module:
    if method == "dino":
        return DinoMethod(cfg, seed)
    if method == "mae":
        return MaeMethod(cfg, seed)
    if method == "clip":
        captions: list[str] = list(train_ds.captions)
        unique, vectors = caption_vectors(captions, out / "caption_vectors.npz")
        position = {caption: i for i, caption in enumerate(unique)}
        ids = torch.tensor([position[c] for c in captions], dtype=torch.long)  # (N_train,)
        return ClipMethod(cfg, seed, ids, vectors)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def build_parser(preset: str, method: str) -> argparse.ArgumentParser:
    cfg = PRESETS[preset]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=METHODS, required=True, help="'random' trains nothing (no prior)")
    parser.add_argument("--data", type=Path, default=Path("data/emoji64.npz"), help=".npz or image folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset, help="read first: sets defaults")
    parser.add_argument(
        "--encoder", choices=sorted(ENCODERS), default=None, help="backbone shape (default: preset's)"
    )
    parser.add_argument("--knn-every", type=int, default=cfg.knn_every, help="0: k-NN only at the end")
    parser.add_argument("--knn-k", type=int, default=cfg.knn_k)
    add_train_args(parser, cfg.train[method])
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = select_preset(argv, PRESETS, "cpu-s")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=METHODS, default="dino")  # the loop defaults depend on it
    args = build_parser(preset, pre.parse_known_args(argv)[0].method).parse_args(argv)
    method, out = args.method, Path(args.out)
    base = PRESETS[args.preset]
    train_cfg = train_config_from_args(args)
    cfg = PretrainConfig(
        encoder=ENCODERS[args.encoder] if args.encoder else base.encoder,
        train={**base.train, method: train_cfg},
        knn_every=args.knn_every,
        knn_k=args.knn_k,
        layer_scale_init=base.layer_scale_init,
        dino=base.dino,
        mae=base.mae,
        clip=base.clip,
    )
    size = cfg.encoder.image_size
    train_ds = build_dataset(args.data, "train", "category", image_size=size)
    heldout_ds = build_dataset(args.data, "heldout", "category", image_size=size)
    label_keys = ("category", "subcategory") if hasattr(train_ds, "rows") else ("label",)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    def evaluate(backbone: VisionTransformer, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        result = knn_accuracy(backbone, train_ds, heldout_ds, label_keys, k=cfg.knn_k, config=cfg.encoder)
        result["time_s"] = round(time.perf_counter() - start, 2)
        _append_log(log_path, {"event": "knn", "step": step, **result})
        print(f"k-NN @ step {step}: " + ", ".join(f"{k} {result[k]:.3f}" for k in label_keys))
        return result

    if method == "random":
        backbone, steps, train_time = build_backbone(cfg.encoder, args.seed, cfg.layer_scale_init), 0, 0.0
        log_path.write_text(json.dumps({"event": "random_init", "step": 0, "seed": args.seed}) + "\n")
    else:
        model = make_method(method, cfg, train_ds, out, args.seed)
        method_cfg = getattr(cfg, method)
        run_config = {
            "method": method,
            "preset": args.preset,
            "data": str(args.data),
            "encoder": cfg.encoder.to_dict(),
            "layer_scale_init": cfg.layer_scale_init,
            method: to_plain(method_cfg),
        }
        trainer = Trainer(train_cfg, out, model, model.trainable(), run_config, resume=args.resume)
        batches = trainer.batches(train_ds)
        every = cfg.knn_every or train_cfg.steps
        stops = [s for s in range(every, train_cfg.steps, every) if s > trainer.step] + [train_cfg.steps]
        for stop in stops:
            # The Trainer trains up to cfg.steps; moving it in stages leaves room for k-NN in between
            # (LR is constant after warmup and the data order a function of the step: no side effects).
            trainer.cfg.steps = stop
            trainer.fit(batches, lambda m, batch, gen: m(batch, gen))
            if stop < train_cfg.steps:
                evaluate(trainer.ema.exported(), stop)
        backbone, steps, train_time = trainer.ema.exported(), trainer.step, trainer.elapsed_s

    knn = evaluate(backbone, steps)
    save_backbone(backbone, out / "backbone.safetensors")
    config = {
        "encoder": cfg.encoder.to_dict(),
        "method": method,
        "steps": steps,
        "wall_time_s": round(train_time, 1),  # the training loop, summed over resumes (k-NN not included)
        "knn": knn,
        "train_config": None if method == "random" else to_plain(train_cfg),
        "method_config": to_plain(getattr(cfg, method)) if method != "random" else None,
        "preset": args.preset,
        "layer_scale_init": cfg.layer_scale_init,
        "data": str(args.data),
        "seed": args.seed,
        "device": str(module_device(backbone)),
    }
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(out / "config.json")
    load_backbone(out)  # the contract: strict load into the plain encoder config
    print(f"wrote {out / 'backbone.safetensors'} and config.json")
    return config


if __name__ == "__main__":
    main()
