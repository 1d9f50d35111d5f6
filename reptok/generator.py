"""Stage B: flow models over the one-token latents.

`MixerGenerator` is the paper's attention-free class-conditional model: an MLP-Mixer over
the three tokens [z_t, class, time]. Token mixing is a 1×1 convolution over the token
axis, channel mixing an MLP; no attention anywhere, which is what makes it cheap.

`TextGenerator` conditions on text: a few learnable tokens are concatenated to z_t, they
self-attend, and cross-attend to the hidden states of a frozen text encoder.

Both predict the velocity of `reptok.flow` and work in a standardised token space
(z − mean) / std, with the statistics stored as buffers next to the weights; the
pipeline maps samples back with `latent_mean` / `latent_std`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reptok.config import Config


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of t (B,) -> (B, dim), as in DiT (t in [0, 1], not ×1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, dim): sinusoidal features through a 2-layer SiLU MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(timestep_embedding(t, self.freq_dim))))


class LatentStats(nn.Module):
    """Per-dimension mean and std of the training tokens (identity until set)."""

    def __init__(self, token_dim: int) -> None:
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(1, 1, token_dim))
        self.register_buffer("latent_std", torch.ones(1, 1, token_dim))

    def set_stats(self, tokens: Tensor) -> None:
        """tokens (N, 1, D): store their mean and std (floored so no dimension blows up)."""
        self.latent_mean.copy_(tokens.mean(0, keepdim=True))
        self.latent_std.copy_(tokens.std(0, keepdim=True).clamp_min(1e-3))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.latent_std + self.latent_mean


# ---------------------------------------------------------------------------- class generator


@dataclass
class MixerGeneratorConfig(Config):
    token_dim: int = 384  # D of the tokens it generates
    num_classes: int = 9  # id num_classes is the null class (classifier-free guidance)
    width: int = 768  # mixer hidden width
    depth: int = 8
    token_mlp_ratio: float = 3.0  # token-mixing MLP over the 3 tokens: 3 -> 9 -> 3
    channel_mlp_ratio: float = 4.0
    class_dropout: float = 0.1  # fraction of training labels replaced by the null class
    freq_dim: int = 256


MIXER_PRESETS: dict[str, MixerGeneratorConfig] = {
    "test": MixerGeneratorConfig(token_dim=48, num_classes=3, width=64, depth=2),
    "mixer-s": MixerGeneratorConfig(token_dim=384, width=768, depth=8),
    "mixer-b": MixerGeneratorConfig(token_dim=384, width=1024, depth=12),
    # The official ImageNet-256 generator.
    "reptok-xl-imagenet256": MixerGeneratorConfig(
        token_dim=768, num_classes=1000, width=1536, depth=28, token_mlp_ratio=3.0, channel_mlp_ratio=4.0
    ),
}


class MixerMLP(nn.Module):
    """Pre-norm residual MLP; `over_tokens` mixes along the token axis instead of channels."""

    def __init__(self, width: int, n_tokens: int, ratio: float, over_tokens: bool) -> None:
        super().__init__()
        self.over_tokens = over_tokens
        d = n_tokens if over_tokens else width
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(d, int(d * ratio))
        self.fc2 = nn.Linear(int(d * ratio), d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)  # (B, N, W)
        if self.over_tokens:
            h = h.transpose(1, 2)  # (B, W, N): mix the N tokens, per channel
        h = self.fc2(F.gelu(self.fc1(h)))
        if self.over_tokens:
            h = h.transpose(1, 2)
        return x + h


class MixerBlock(nn.Module):
    def __init__(self, width: int, n_tokens: int, token_ratio: float, channel_ratio: float) -> None:
        super().__init__()
        self.token_mix = MixerMLP(width, n_tokens, token_ratio, over_tokens=True)
        self.channel_mix = MixerMLP(width, n_tokens, channel_ratio, over_tokens=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_mix(self.token_mix(x))


class MixerGenerator(nn.Module):
    """v_θ(z_t, t, y): attention-free MLP-Mixer over [z_t, class embedding, time embedding]."""

    n_tokens = 3

    def __init__(self, config: MixerGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.token_dim, config.width
        self.stats = LatentStats(d)
        self.pos_embed = nn.Parameter(torch.randn(1, 1, d))
        self.class_embed = nn.Embedding(config.num_classes + 1, d)  # last row: the null class
        self.time_embed = TimestepEmbedder(d, config.freq_dim)
        self.in_proj = nn.Linear(d, w)
        self.blocks = nn.ModuleList(
            [
                MixerBlock(w, self.n_tokens, config.token_mlp_ratio, config.channel_mlp_ratio)
                for _ in range(config.depth)
            ]
        )
        self.out_norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, d)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def initialize_weights(self) -> None:
        # Zero output: training starts from v = 0 (the official zero_init_last option).
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, z_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """z_t (B, 1, D) standardised, t (B,), labels (B,) in [0, num_classes] -> v (B, 1, D)."""
        x = z_t + self.pos_embed
        y = self.class_embed(labels)[:, None]  # (B, 1, D)
        tt = self.time_embed(t)[:, None].to(x.dtype)  # (B, 1, D)
        h = self.in_proj(torch.cat([x, y, tt], dim=1))  # (B, 3, W)
        for block in self.blocks:
            h = block(h)
        return self.out_proj(self.out_norm(h))[:, :1]  # (B, 1, D): the z_t slot


# ----------------------------------------------------------------------------- text generator


@dataclass
class TextGeneratorConfig(Config):
    token_dim: int = 384
    text_dim: int = 384  # hidden size of the frozen text encoder (MiniLM: 384)
    width: int = 512
    depth: int = 6
    num_heads: int = 8
    num_learnable_tokens: int = 4  # concatenated to z_t: room to gather the prompt
    mlp_ratio: float = 4.0
    text_dropout: float = 0.1  # fraction of training prompts replaced by the null text


TEXT_PRESETS: dict[str, TextGeneratorConfig] = {
    "test": TextGeneratorConfig(token_dim=48, text_dim=32, width=64, depth=2, num_heads=2),
    "text-s": TextGeneratorConfig(token_dim=384, text_dim=384, width=512, depth=6, num_heads=8),
}


class TextBlock(nn.Module):
    """adaLN-zero block: self-attention over the latent tokens, cross-attention to text, MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.self_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.cross_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(width, int(width * mlp_ratio)))
        self.mlp.add_module("act", nn.GELU(approximate="tanh"))
        self.mlp.add_module("fc2", nn.Linear(int(width * mlp_ratio), width))
        self.modulation = nn.Linear(width, 9 * width)  # shift, scale, gate for each of the 3 branches

    def forward(self, x: Tensor, cond: Tensor, text: Tensor, text_pad: Tensor) -> Tensor:
        """x (B, N, W), cond (B, W), text (B, L, W), text_pad (B, L) True where padding."""
        mods = self.modulation(F.silu(cond))[:, None].chunk(9, dim=-1)  # 9 × (B, 1, W)
        h = self.norm1(x) * (1 + mods[1]) + mods[0]
        x = x + mods[2] * self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + mods[4]) + mods[3]
        x = x + mods[5] * self.cross_attn(h, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        h = self.norm3(x) * (1 + mods[7]) + mods[6]
        return x + mods[8] * self.mlp(h)


class TextGenerator(nn.Module):
    """v_θ(z_t, t, text): [z_t, learnable tokens] attend to themselves and to the prompt."""

    def __init__(self, config: TextGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.token_dim, config.width
        self.stats = LatentStats(d)
        self.in_proj = nn.Linear(d, w)
        self.learnable_tokens = nn.Parameter(torch.randn(1, config.num_learnable_tokens, w) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + config.num_learnable_tokens, w) * 0.02)
        self.time_embed = TimestepEmbedder(w)
        self.text_proj = nn.Linear(config.text_dim, w)
        # The unconditional "prompt": one learned text state, used for dropped / null prompts.
        self.null_text = nn.Parameter(torch.zeros(1, 1, config.text_dim))
        self.blocks = nn.ModuleList(
            [TextBlock(w, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out_modulation = nn.Linear(w, 2 * w)
        self.out_proj = nn.Linear(w, d)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for block in self.blocks:
            nn.init.zeros_(block.modulation.weight)  # adaLN-zero: every branch starts closed
            nn.init.zeros_(block.modulation.bias)
        nn.init.zeros_(self.out_modulation.weight)
        nn.init.zeros_(self.out_modulation.bias)
        nn.init.zeros_(self.out_proj.weight)  # v = 0 at init
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, z_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, uncond: Tensor | None = None
    ) -> Tensor:
        """z_t (B, 1, D), t (B,), text (B, L, Dt) hidden states, text_mask (B, L) True for real
        tokens, uncond (B,) bool: use the null text for these rows -> v (B, 1, D)."""
        b = z_t.shape[0]
        if uncond is not None:
            # Null rows see only the null text state; the rest of their prompt is masked out.
            keep = ~uncond[:, None, None]  # (B, 1, 1)
            first = torch.where(keep, text[:, :1], self.null_text.to(text.dtype).expand(b, 1, -1))
            text = torch.cat([first, text[:, 1:] * keep], dim=1)
            text_mask = torch.cat([text_mask[:, :1] | ~keep[:, 0], text_mask[:, 1:] & keep[:, 0]], dim=1)
        ctx = self.text_proj(text)  # (B, L, W)
        x = torch.cat([self.in_proj(z_t), self.learnable_tokens.expand(b, -1, -1)], dim=1) + self.pos_embed
        cond = self.time_embed(t).to(x.dtype)  # (B, W)
        for block in self.blocks:
            x = block(x, cond, ctx, ~text_mask)
        shift, scale = self.out_modulation(F.silu(cond))[:, None].chunk(2, dim=-1)
        return self.out_proj(self.out_norm(x[:, :1]) * (1 + scale) + shift)  # (B, 1, D)
