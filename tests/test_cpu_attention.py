"""train/cpu_attention.py: the written-out attention is F.scaled_dot_product_attention, and the
Trainer runs every attention of a bf16 CPU forward through it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # train/ is a folder of scripts, not an installed package

from reptok.decoder import DECODER_PRESETS, Decoder  # noqa: E402
from train import cpu_attention  # noqa: E402
from train.common import Trainer  # noqa: E402
from train.cpu_attention import attention, explicit_attention  # noqa: E402
from train.loop_config import TrainConfig  # noqa: E402

PAD = torch.tensor([[True] * 7, [True, True] + [False] * 5, [True] * 4 + [False] * 3])  # (B, S)
CASES = {
    "plain": {},
    "bool mask": {"attn_mask": PAD[:, None, None, :]},
    "float mask": {"attn_mask": torch.randn(3, 1, 5, 7, generator=torch.Generator().manual_seed(1))},
    "scale": {"scale": 1.0},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_is_sdpa_in_fp32_values_and_gradients(case: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g, requires_grad=True) for n in (5, 7, 7))
    ref = F.scaled_dot_product_attention(q, k, v, **CASES[case])
    out = attention(q, k, v, **CASES[case])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attention_causal() -> None:
    q, k, v = (torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.testing.assert_close(
        attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )


def test_attention_in_bf16_is_as_close_to_float64_as_the_fused_kernel() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (2 * torch.randn(8, 6, 69, 64, generator=g) for _ in range(3))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    err_fused = (F.scaled_dot_product_attention(qb, kb, vb).double() - exact).abs().mean()
    err = (attention(qb, kb, vb).double() - exact).abs().mean()
    # bf16 logits (what timm's own unfused path gives under CPU autocast) would be about twice as far
    assert attention(qb, kb, vb).dtype == torch.bfloat16
    assert err <= 1.1 * err_fused


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that reach cpu_attention.attention."""
    seen: list[int] = []

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(1)
        return attention(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_attention, "attention", counting)
    return seen


def test_the_mode_reroutes_timm_multihead_and_decoder_attention(calls: list[int]) -> None:
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, pretrained=False)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    decoder = Decoder(DECODER_PRESETS["test"])
    images, x, text = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    cfg = decoder.config
    z_t, z = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size), torch.randn(2, 1, cfg.token_dim)
    t = torch.rand(2)

    def run() -> list[torch.Tensor]:
        return [
            vit(images),
            mha(x, text, text, key_padding_mask=~PAD[:2], need_weights=False)[0],
            decoder(z_t, t, z),
        ]

    with torch.no_grad():
        ref = run()
        assert calls == []
        with explicit_attention():
            out = run()
    assert len(calls) == 2 + 1 + decoder.config.depth  # every block of each
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("precision", "expected"), [("bf16", 2), ("fp32", 0)])
def test_trainer_uses_it_in_bf16_on_cpu(
    precision: str, expected: int, calls: list[int], tmp_path: Path
) -> None:
    model = nn.Linear(8, 8)
    cfg = TrainConfig(steps=2, batch_size=2, lr=1e-3, precision=precision, ema_decay=0.0)
    trainer = Trainer(cfg, tmp_path, model, list(model.parameters()), {})

    def loss_fn(m: nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        h = m(batch["x"])[:, None, None]  # (B, 1, 1, 8)
        return F.scaled_dot_product_attention(h, h, h).float().square().mean(), {}

    trainer.fit(iter([{"x": torch.randn(2, 8)}] * 2), loss_fn)
    assert len(calls) == expected
