"""The in-house SSL pre-training methods: DINO self-distillation, MAE, CLIP-style contrast against
frozen MiniLM caption embeddings, and a masked denoising autoencoder through the [cls] (DAE); with
their configs and PretrainConfig, which presets fill (train/pretrain_backbone.py). Each method is an nn.Module whose forward(batch, generator) returns
(loss, logs), with `trainable()` and `exported()` (the timm ViT that is saved).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from reptok.encoder import EncoderConfig
from train.loop_config import TrainConfig
from train.ssl_views import (
    Views,
    as_buffers,
    build_backbone,
    cls_features,
    forward_visible,
    module_device,
    random_resized_crop,
)

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
class DaeConfig:
    # The corruption: MAE's masking noise. The ViT sees this share of its patches dropped, so its [cls]
    # must carry what the whole image looks like, not copy what it was shown (and a step costs half).
    mask_ratio: float = 0.5
    target_size: int = 32  # the head predicts the clean crop at this side (average-pooled)
    hidden_dim: int = 1024  # one hidden layer: a weak head leaves the describing to the [cls]
    crop_scale: tuple[float, float] = (0.85, 1.0)  # mild: the token should keep layout and colour


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
    dae: DaeConfig = field(default_factory=DaeConfig)


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


class DaeMethod(nn.Module):
    """Denoising autoencoder (Vincent et al. 2008) with MAE's masking as the noise and the [cls] as the
    code: the ViT sees a random (1 − mask_ratio) of the patches, and an MLP head must redraw the whole
    clean image, at target_size², from its normalised [cls] output alone.

    The other methods shape the [cls] for invariances (DINO, CLIP-style) or leave it untrained (MAE);
    this one asks it to describe the image, which is what a one-token latent is for. Measured on the
    emoji (2 CPU cores, 8 minutes): ridge probe 15.9 dB / 51 % identification against 14 dB / 12-16 %
    for the CLIP-style, DINO-style, MAE-style and random backbones, and category k-NN 0.57.
    """

    def __init__(self, cfg: PretrainConfig, seed: int) -> None:
        super().__init__()
        d = cfg.dae
        self.cfg, self.image_size = d, cfg.encoder.image_size
        self.backbone = build_backbone(cfg.encoder, seed, cfg.layer_scale_init)
        self.views = Views(self.backbone, cfg.encoder)
        self.num_patches = self.backbone.patch_embed.num_patches
        out = 3 * d.target_size * d.target_size
        self.head = nn.Sequential(
            nn.Linear(self.backbone.embed_dim, d.hidden_dim), nn.GELU(), nn.Linear(d.hidden_dim, out)
        )

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def exported(self) -> VisionTransformer:
        return self.backbone

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        d = self.cfg
        images = batch["image"].to(module_device(self.head))  # (B, 3, H, W) in [-1, 1]
        crops = random_resized_crop(images, self.image_size, d.crop_scale, gen, flip_p=0.0)  # (B, 3, S, S)
        b, n = crops.shape[0], self.num_patches
        n_keep = max(1, round(n * (1 - d.mask_ratio)))
        noise = torch.rand(b, n, generator=gen, device=gen.device).to(crops.device)
        keep = noise.argsort(dim=1)[:, :n_keep]  # (B, K) a random subset per image
        cls = forward_visible(self.backbone, self.views.normalise((crops + 1) / 2), keep)[:, 0]  # (B, D)
        pred = self.head(cls).float().view(b, 3, d.target_size, d.target_size)
        target = F.adaptive_avg_pool2d(crops.float(), d.target_size)  # (B, 3, t, t) the clean crop
        mse = F.mse_loss(pred, target)
        return mse, {"psnr": 10 * torch.log10(4.0 / mse.detach())}


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
