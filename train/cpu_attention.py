"""Attention written out for bf16 training on CPU, in place of PyTorch's fused CPU kernel.

The fused kernel behind `F.scaled_dot_product_attention` is slow in bf16 on a CPU at the sizes this
project trains. Forward + backward, one core of the AMD EPYC here, torch 2.14 (bench/cpu_attention.py,
bench/RESULTS.md): stage A's decoder attention (32 latents × 4 heads × 65 tokens) fused 66.5 ms, the
math backend 20.2 ms, the form below 10.8 ms; its ViT's (3 heads × 69 tokens) 26.9 / 14.9 / 9.6 ms;
the text generator's cross-attention (128 × 6 heads × 5 queries × 18 keys) 49.2 / 10.8 / 8.1 ms. Its
mean error against float64 is within 5 % of the fused kernel's (bf16 inputs and outputs dominate it).
Per training step: stage A 1.3× faster, the text generator 1.6×, a backbone's ViT 1.3×.

`explicit_attention()` reroutes every `F.scaled_dot_product_attention` call made inside it, so
timm's ViT, the flow decoder, `nn.MultiheadAttention` and diffusers' VAE run it unchanged. It swaps
the function in `torch.nn.functional` for the duration: PyTorch's hook for rerouting calls (a
TorchFunctionMode) sees `nn.MultiheadAttention`'s outer `multi_head_attention_forward` and not the
attention call inside it. The Trainer enters it around the forward pass on a CPU with bf16
autocast; inference and fp32 training keep the fused kernel (in fp32 it is as fast as this form).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_FUSED = F.scaled_dot_product_attention  # PyTorch's, kept while explicit_attention() swaps it


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """`F.scaled_dot_product_attention`, written out: q (..., L, E), k (..., S, E), v (..., S, Ev)
    -> (..., L, Ev). The logits and the softmax in fp32 (a bf16 logit is off by up to 1/128 of
    itself), the two products in the inputs' dtype. Dropout and grouped-query attention go to
    the fused kernel (nothing trained here uses them)."""
    if dropout_p > 0.0 or enable_gqa:
        return _FUSED(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    with torch.autocast(q.device.type, enabled=False):
        logits = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # (..., L, S)
        if is_causal:
            keep = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device).tril()  # (L, S)
            logits = logits.masked_fill(~keep, -math.inf)
        if attn_mask is not None:  # bool: True takes part; float: added to the logits
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, -math.inf)
            else:
                logits = logits + attn_mask
        weights = logits.softmax(dim=-1).to(v.dtype)  # (..., L, S)
        return torch.matmul(weights, v)  # (..., L, Ev)


def _rerouted(*args: object, **kwargs: object) -> Tensor:
    return attention(*args, **kwargs)  # type: ignore[arg-type]  # looked up per call (tests count calls)


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Inside it, `F.scaled_dot_product_attention(...)` is `attention(...)`, for every caller."""
    swapped = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _rerouted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = swapped
