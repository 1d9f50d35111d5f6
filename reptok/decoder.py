"""The RepTok decoder: a flow-matching transformer that turns noise into an image given z.

Architecture (the official RepTok decoder family, sized by a preset): the noisy input
(pixels, or SD-VAE latents) is cut into p×p patches and linearly embedded; the projected
token z is concatenated in front at position (0, 0) (MMDiT-style joint attention); every
layer is cosine-similarity attention with a learnable per-head scale and 2-D axial RoPE,
then a SwiGLU feed-forward, each behind an adaptive RMS norm driven by a mapping network
over Fourier features of t. The output projection is zero-initialised, so training starts
from v = 0.

The flow runs in an `ImageSpace`: pixels as they are, or the latent space of a diffusers
`AutoencoderKL` (the paper's SD-VAE path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from reptok.config import Config


@dataclass
class DecoderConfig(Config):
    token_dim: int = 384  # D of the encoder's token z
    in_channels: int = 3  # 3 in pixel space, 4 in SD-VAE latent space
    input_size: int = 64  # side of what the flow runs on (pixels, or latent cells)
    patch_size: int = 4  # p×p cells become one transformer token
    width: int = 384  # transformer width; must be ≥ token_dim (z is zero-padded into it)
    depth: int = 6
    head_dim: int = 64
    ff_mult: int = 3  # SwiGLU hidden = ff_mult · width
    mapping_width: int = 256  # width of the time-conditioning mapping network
    mapping_depth: int = 2
    mapping_ff_mult: int = 3
    # > 0: a linear map of z to a (token_map_channels, S, S) grid, patchified and added to each patch's
    # embedding, so every position reads its own linear view of z at the input (the concat token
    # alone reaches a patch only through attention, the same value for every position); 0 is the
    # paper's decoder. Zero-initialised on the embedding side: a decoder with it starts as one without.
    token_map_channels: int = 0
    # Official checkpoints run time the other way (t = 1 is noise, v = noise − x); True converts
    # at this model's boundary so the rest of the library keeps one convention.
    time_reversed: bool = False

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def validate(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.width % self.head_dim or self.head_dim % 8:
            raise ValueError(
                f"width {self.width} must split into heads of head_dim {self.head_dim} (a multiple of 8)"
            )
        if self.width < self.token_dim:
            raise ValueError(f"width {self.width} must be at least token_dim {self.token_dim}")


DECODER_PRESETS: dict[str, DecoderConfig] = {
    "test": DecoderConfig(
        token_dim=48, input_size=32, patch_size=8, width=64, depth=2, head_dim=32, mapping_width=32
    ),
    # 64 px pixel-space emoji decoders (CPU-friendly: 256 tokens of width 384).
    "s4-64px": DecoderConfig(token_dim=384, input_size=64, patch_size=4, width=384, depth=6, head_dim=64),
    "b4-64px": DecoderConfig(token_dim=384, input_size=64, patch_size=4, width=512, depth=8, head_dim=64),
    # 2 CPU cores, several runs in one session: 65 tokens of width 256 (5.4 M parameters, 0.6 s per
    # training step of 32 on one core), small enough to ship one per ablation row.
    "xs8-64px": DecoderConfig(token_dim=384, input_size=64, patch_size=8, width=256, depth=4, head_dim=64),
    # 2 CPU cores, in the latent space of the in-house 4-channel VAE (64 px -> 16×16×4): 2×2 latent
    # patches, so the same 65 tokens of width 256 as xs8-64px (5.4 M parameters); what every shipped
    # emoji tokenizer uses.
    "xs2-latent16": DecoderConfig(
        token_dim=192, in_channels=4, input_size=16, patch_size=2, width=256, depth=4, head_dim=64
    ),
    # The official ImageNet-256 decoder: SD-VAE latents 4×32×32, 2×2 patches, DINOv2-B token.
    "reptok-xl-imagenet256": DecoderConfig(
        token_dim=768,
        in_channels=4,
        input_size=32,
        patch_size=2,
        width=1152,
        depth=28,
        head_dim=72,
        mapping_width=1024,
        mapping_depth=2,
        mapping_ff_mult=3,
        time_reversed=True,
    ),
}
# xs2-latent16 with a 16-channel token map (0.8 M parameters more, hardly any compute): the default
# emoji tokenizer's decoder since session 16.
DECODER_PRESETS["xs2-latent16-map"] = DECODER_PRESETS["xs2-latent16"].replace(token_map_channels=16)


def rms_norm(x: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """RMS norm computed in float32 at least, returned in x's dtype."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), torch.float32)
    mean_sq = x.to(dtype).square().mean(dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_sq + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMS norm whose scale is 1 + Linear(cond): identity scale at init (zero Linear)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(cond_dim, dim, bias=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return rms_norm(x, self.linear(cond)[:, None, :] + 1.0, self.eps)  # cond (B, C) -> (B, 1, dim)


class SwiGLU(nn.Module):
    """x -> W_down(a · silu(g)), [a, g] = W_up x. Used by the layers and the mapping network."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.up(x).chunk(2, dim=-1)
        return self.down(a * F.silu(gate))


class TimeEmbedding(nn.Module):
    """t (B,) -> conditioning vector (B, W): Fourier features -> linear -> mapping network."""

    def __init__(self, width: int, depth: int, ff_mult: int) -> None:
        super().__init__()
        # Random Fourier frequencies (std 1), saved with the weights: they are part of the model.
        self.register_buffer("freqs", torch.randn(width // 2, 1))
        self.in_proj = nn.Linear(width, width, bias=False)
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({"norm": RMSNorm(width), "ff": SwiGLU(width, ff_mult * width)}))
        self.out_norm = RMSNorm(width)

    def forward(self, t: Tensor) -> Tensor:
        f = 2 * math.pi * t[:, None].float() @ self.freqs.float().T  # (B, W/2)
        x = self.in_norm(self.in_proj(torch.cat([f.cos(), f.sin()], dim=-1)))  # (B, W)
        for block in self.blocks:
            x = x + block["ff"](block["norm"](x))
        return self.out_norm(x)


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, S, S) -> (B, (S/p)², p²C): each p×p cell one row, row-major, channels last."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(x: Tensor, p: int, g: int) -> Tensor:
    """(B, g², p²C) -> (B, C, gp, gp): the inverse of `patchify`."""
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=g, p=p, q=p)


def axial_positions(h: int, w: int) -> Tensor:
    """Centres of an h×w grid on the canvas [-1, 1]² (the longer side spans it), (h·w, 2)."""
    ar = w / h
    y_lim, x_lim = (1.0 / ar, 1.0) if ar > 1 else (1.0, ar)

    def centres(lim: float, n: int) -> Tensor:
        edges = torch.linspace(-lim, lim, n + 1)
        return (edges[:-1] + edges[1:]) / 2

    grid = torch.stack(torch.meshgrid(centres(y_lim, h), centres(x_lim, w), indexing="ij"), dim=-1)
    return grid.view(h * w, 2)


class AxialRoPE(nn.Module):
    """2-D rotary embedding on the first half of each head's dims: a quarter follows y, a
    quarter follows x, the second half carries no position (as in the official decoder).

    Log-spaced frequencies from π to 10π over a canvas of side 2, interleaved across heads
    (each head gets a different subset), fixed (not learned).
    """

    def __init__(self, head_dim: int, n_heads: int) -> None:
        super().__init__()
        d = head_dim // 8  # frequencies per axis per head
        freqs = torch.linspace(math.log(math.pi), math.log(10 * math.pi), n_heads * d + 1)[:-1].exp()
        self.register_buffer("freqs", freqs.view(d, n_heads).T.contiguous(), persistent=False)  # (H, d)

    def angles(self, pos: Tensor) -> Tensor:
        """pos (L, 2) -> theta (H, L, head_dim / 4)."""
        th_y = pos[None, :, 0:1] * self.freqs[:, None, :]  # (H, L, d)
        th_x = pos[None, :, 1:2] * self.freqs[:, None, :]  # (H, L, d)
        return torch.cat([th_y, th_x], dim=-1)

    @staticmethod
    def rotate(x: Tensor, theta: Tensor) -> Tensor:
        """x (B, H, L, E), theta (H, L, R): rotate pairs (i, i + R) for i < R, keep dims ≥ 2R."""
        r = theta.shape[-1]
        x1, x2 = x[..., :r].float(), x[..., r : 2 * r].float()
        cos, sin = theta.cos(), theta.sin()
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
        return torch.cat([rotated, x[..., 2 * r :]], dim=-1)


class Attention(nn.Module):
    """Cosine-similarity attention with a learnable per-head temperature and axial RoPE."""

    def __init__(self, width: int, head_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.n_heads = width // head_dim
        self.norm = AdaRMSNorm(width, cond_dim)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.scale = nn.Parameter(torch.full((self.n_heads,), 10.0))
        self.rope = AxialRoPE(head_dim, self.n_heads)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor, cond: Tensor, theta: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x, cond)), "b l (t h e) -> t b h l e", t=3, e=self.head_dim)
        # Unit-norm q and k scaled by sqrt(scale) each: logits = scale · cos(q, k), bounded.
        s = self.scale.float().sqrt()[None, :, None, None]  # (1, H, 1, 1)
        q = (q.float() * s * torch.rsqrt(q.float().square().sum(-1, keepdim=True) + 1e-6)).to(v.dtype)
        k = (k.float() * s * torch.rsqrt(k.float().square().sum(-1, keepdim=True) + 1e-6)).to(v.dtype)
        q, k = AxialRoPE.rotate(q, theta), AxialRoPE.rotate(k, theta)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, H, L, E)
        return x + self.out(rearrange(y, "b h l e -> b l (h e)"))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = AdaRMSNorm(width, cond_dim)
        self.ff = SwiGLU(width, hidden)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x + self.ff(self.norm(x, cond))


class Layer(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attn = Attention(config.width, config.head_dim, config.mapping_width)
        self.ff = FeedForward(config.width, config.ff_mult * config.width, config.mapping_width)

    def forward(self, x: Tensor, cond: Tensor, theta: Tensor) -> Tensor:
        return self.ff(self.attn(x, cond, theta), cond)


class TokenProjection(nn.Module):
    """z (B, 1, D) -> (B, 1, W): LayerNorm(Linear(z)) + zero-padded z.

    A residual projection: with the Linear zero-initialised the decoder first sees z itself
    (padded to the width), and learns a change of basis from there.
    """

    def __init__(self, token_dim: int, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(token_dim, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, z: Tensor) -> Tensor:
        return self.norm(self.fc(z)) + F.pad(z, (0, self.fc.out_features - z.shape[-1]))


class Decoder(nn.Module):
    """v_θ(x_t, t, z): velocity of the flow from noise to the image that z encodes."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c, p, w = config.in_channels, config.patch_size, config.width
        self.token_proj = TokenProjection(config.token_dim, w)
        self.patch_embed = nn.Linear(c * p * p, w, bias=False)
        m = config.token_map_channels
        if m:
            self.token_map = nn.Linear(config.token_dim, m * config.input_size**2)
            self.token_map_embed = nn.Linear(m * p * p, w, bias=False)
        self.joint_proj = nn.Linear(w, w, bias=False)  # over [token, patches], after the concat
        self.time_embed = TimeEmbedding(config.mapping_width, config.mapping_depth, config.mapping_ff_mult)
        self.layers = nn.ModuleList([Layer(config) for _ in range(config.depth)])
        self.out_norm = RMSNorm(w)
        self.out_proj = nn.Linear(w, c * p * p, bias=False)
        g = config.grid_size
        # The token sits at the canvas centre (0, 0), as in the official decoder.
        pos = torch.cat([torch.zeros(1, 2), axial_positions(g, g)], dim=0)  # (1 + g², 2)
        self.register_buffer("theta", self.layers[0].attn.rope.angles(pos), persistent=False)  # (H, L, E/2)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PyTorch default init for the rest; these zero-inits make every residual branch start
        closed and the model start at v = 0."""
        for layer in self.layers:
            nn.init.zeros_(layer.attn.out.weight)  # attention branch off
            nn.init.zeros_(layer.ff.ff.down.weight)  # feed-forward branch off
            nn.init.zeros_(layer.attn.norm.linear.weight)  # adaptive scale starts at 1
            nn.init.zeros_(layer.ff.norm.linear.weight)
        for block in self.time_embed.blocks:
            nn.init.zeros_(block["ff"].down.weight)  # mapping network starts as identity
        nn.init.zeros_(self.token_proj.fc.weight)  # token enters as z itself (padded)
        nn.init.zeros_(self.token_proj.fc.bias)
        nn.init.zeros_(self.out_proj.weight)  # output v = 0
        if self.config.token_map_channels:
            nn.init.zeros_(self.token_map_embed.weight)  # token map off: the decoder without it

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """x_t (B, C, S, S), t (B,), z (B, 1, D) -> v (B, C, S, S)."""
        cfg = self.config
        p, g = cfg.patch_size, cfg.grid_size
        if cfg.time_reversed:
            t = 1.0 - t  # official convention: t = 1 is noise
        patches = patchify(x_t, p)  # (B, g², p²C)
        x_patches = self.patch_embed(patches)  # (B, g², W)
        if cfg.token_map_channels:
            m, s = cfg.token_map_channels, cfg.input_size
            grid = self.token_map(z[:, 0]).view(-1, m, s, s)  # (B, M, S, S)
            grid = patchify(grid, p)  # (B, g², p²M)
            x_patches = x_patches + self.token_map_embed(grid.to(x_patches.dtype))
        x = torch.cat([self.token_proj(z), x_patches], dim=1)  # (B, 1 + g², W)
        x = self.joint_proj(x)
        cond = self.time_embed(t).to(x.dtype)  # (B, mapping_width)
        for layer in self.layers:
            x = layer(x, cond, self.theta)
        out = self.out_proj(self.out_norm(x[:, 1:]))  # drop the token: (B, g², p²C)
        v = unpatchify(out, p, g)  # (B, C, S, S)
        return -v if cfg.time_reversed else v


@dataclass
class ImageSpaceConfig(Config):
    kind: Literal["pixel", "vae"] = "pixel"
    # diffusers AutoencoderKL: a hub name ("stabilityai/sd-vae-ft-mse") or a folder; for a model
    # saved with save_pretrained it is the "vae" subfolder, stored once with the model.
    vae: str | None = None
    vae_config: dict | None = None  # build a randomly initialised AutoencoderKL from this (tests)
    scale: float = 0.18215  # SD-VAE latent scaling
    shift: float = 0.0


class ImageSpace(nn.Module):
    """Where the flow runs: pixels in [-1, 1], or scaled VAE latents."""

    def __init__(self, config: ImageSpaceConfig, vae: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.vae = vae
        if config.kind == "vae" and vae is None:
            raise ValueError("a VAE image space needs an AutoencoderKL")
        if vae is not None:
            vae.requires_grad_(False).eval()

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the flow generates (pixels, or posterior-mode latents)."""
        if self.vae is None:
            return images
        latent = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((latent - self.config.shift) * self.config.scale).to(images.dtype)

    def decode(self, x: Tensor) -> Tensor:
        """Inverse of encode, clamped to [-1, 1]."""
        if self.vae is not None:
            x = self.vae.decode((x / self.config.scale + self.config.shift).to(self.vae.dtype)).sample.float()
        return x.clamp(-1.0, 1.0)
