"""bf16 training steps on CPU with PyTorch's fused attention kernel and with train/cpu_attention.py.

    python bench/cpu_attention.py                 # the recipe's shapes, one thread (one recipe lane)
    python bench/cpu_attention.py --scale test    # tiny shapes (tests/test_bench.py)

Two parts, both forward + backward under bf16 autocast, the two variants called alternately:
  attention    F.scaled_dot_product_attention alone at each attention shape the recipe trains, with
               the fused kernel, the math backend and the written-out form; and each one's mean
               absolute error against float64 on the same inputs (inputs of std 2: large logits);
  steps        one training step of each model the recipe trains, built from its preset (random
               weights: the speed does not depend on them) at its batch size: fused vs written out.

Writes OUT/cpu_attention.json and the "cpu_attention" section of OUT/RESULTS.md (OUT: --out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import fmt, machine_info, machine_line, markdown_table, time_calls, write_results
from reptok.decoder import DECODER_PRESETS, Decoder
from reptok.encoder import ENCODER_PRESETS, Encoder
from reptok.flow import flow_loss
from reptok.generator import MIXER_PRESETS, TEXT_PRESETS, MixerGenerator, TextGenerator
from train.cpu_attention import attention, explicit_attention
from train.pretrain_backbone import ENCODERS
from train.train_generator import PRESETS as GENERATOR_PRESETS
from train.train_vae import PRESETS as VAE_PRESETS

Step = Callable[[], None]


def _attention_shapes(scale: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """name -> (q shape, k shape), (B, heads, tokens, head dim)."""
    if scale == "test":
        return {"tiny": ((2, 2, 5, 8), (2, 2, 7, 8))}
    return {
        "ViT-Ti/8 64 px, batch 32 (stage A)": ((32, 3, 69, 64), (32, 3, 69, 64)),
        "decoder xs2-latent16, batch 32 (stage A)": ((32, 4, 65, 64), (32, 4, 65, 64)),
        "text generator self, batch 128": ((128, 6, 5, 64), (128, 6, 5, 64)),
        "text generator cross, batch 128": ((128, 6, 5, 64), (128, 6, 18, 64)),
    }


def _sdpa_variants() -> dict[str, Callable[..., torch.Tensor]]:
    def backend(which: SDPBackend) -> Callable[..., torch.Tensor]:
        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(which):
                return F.scaled_dot_product_attention(q, k, v)

        return call

    return {
        "fused": backend(SDPBackend.FLASH_ATTENTION),
        "math": backend(SDPBackend.MATH),
        "written out": attention,
    }


def attention_rows(scale: str, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, (q_shape, k_shape) in _attention_shapes(scale).items():
        g = torch.Generator().manual_seed(0)
        q, k, v = (2 * torch.randn(*s, generator=g) for s in (q_shape, k_shape, k_shape))
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        row: dict[str, Any] = {"shape": name, "q": list(q_shape), "k": list(k_shape)}
        for variant, fn in _sdpa_variants().items():
            qkv = [x.bfloat16().requires_grad_() for x in (q, k, v)]

            def step(fn: Callable[..., torch.Tensor] = fn, qkv: list[torch.Tensor] = qkv) -> None:
                fn(*qkv).float().square().sum().backward()

            row[f"{variant} ms"] = 1000 * time_calls(step, repeats=repeats, warmup=2).median_s
            with torch.no_grad():
                row[f"{variant} error"] = float((fn(*qkv).double() - exact).abs().mean())
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ training steps


def _backward(loss_fn: Callable[[], torch.Tensor]) -> Step:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.float().backward()

    return step


def _stage_a(decoder_preset: str, batch: int, scale: str) -> Step:
    if scale == "test":
        encoder = Encoder(ENCODER_PRESETS["test"].replace(cosine_weight=0.1))
        dec = DECODER_PRESETS["test"]
    else:
        encoder = Encoder(ENCODERS["vit-t8-d6-64px"].replace(cosine_weight=0.1))  # the CPU backbones
        dec = DECODER_PRESETS[decoder_preset]
    decoder = Decoder(dec.replace(token_dim=encoder.dim))
    size = encoder.config.image_size
    images = torch.rand(batch, 3, size, size) * 2 - 1
    target = torch.randn(batch, dec.in_channels, dec.input_size, dec.input_size)
    anchors = F.normalize(torch.randn(batch, 1, encoder.dim), dim=-1)
    g = torch.Generator().manual_seed(0)

    def loss() -> torch.Tensor:
        out = encoder(images, z_frozen=anchors)
        return flow_loss(lambda x, t: decoder(x, t, out.z), target, generator=g) + out.cosine_loss

    return _backward(loss)


def _text_generator(batch: int, scale: str) -> Step:
    cfg = TEXT_PRESETS["test"] if scale == "test" else GENERATOR_PRESETS["cpu-xs"].text_generator
    gen = TextGenerator(cfg)
    g = torch.Generator().manual_seed(0)
    # caption lengths as in the emoji captions (MiniLM tokens: mean 6.5, a batch's longest about 18)
    lengths = torch.randint(2, 11, (batch,), generator=g)
    lengths[0] = 18
    mask = torch.arange(18)[None] < lengths[:, None]  # (B, L)
    z, text = (
        torch.randn(batch, 1, cfg.token_dim, generator=g),
        torch.randn(batch, 18, cfg.text_dim, generator=g),
    )
    return _backward(lambda: flow_loss(lambda x, t: gen(x, t, text, mask), z, generator=g))


def _class_generator(batch: int, scale: str) -> Step:
    cfg = MIXER_PRESETS["test"] if scale == "test" else GENERATOR_PRESETS["cpu-xs"].class_generator
    gen = MixerGenerator(cfg.replace(num_classes=100 if scale != "test" else cfg.num_classes))
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(batch, 1, cfg.token_dim, generator=g), torch.zeros(batch, dtype=torch.long)
    return _backward(lambda: flow_loss(lambda x, t: gen(x, t, labels), z, generator=g))


def _vae(scale: str) -> Step:
    preset = VAE_PRESETS["test" if scale == "test" else "cpu"]
    vae = AutoencoderKL.from_config(preset.vae)
    crop = preset.crop_size or preset.image_size
    x = torch.rand(preset.train.batch_size, 3, crop, crop) * 2 - 1
    return _backward(lambda: (vae(x).sample.float() - x).abs().mean())


def _backbone(batch: int, scale: str) -> Step:
    """A pre-training step's ViT (all weights train): the bulk of the DAE, MAE and CLIP-style steps."""
    config = ENCODER_PRESETS["test"] if scale == "test" else ENCODERS["vit-t8-d6-64px"]
    vit = Encoder(config).backbone.requires_grad_(True)
    x = torch.rand(batch, 3, config.image_size, config.image_size) * 2 - 1
    return _backward(lambda: vit.forward_features(x).float().square().mean())


BATCH = {  # the presets' batch sizes; tiny ones for the tests
    "recipe": {"stage A": 32, "generator": 128, "backbone": 64},
    "test": {"stage A": 2, "generator": 4, "backbone": 2},
}


def step_builders(scale: str) -> dict[str, Callable[[], Step]]:
    batch = BATCH[scale]
    return {
        "stage A, a row (cpu-xs)": lambda: _stage_a("xs2-latent16", batch["stage A"], scale),
        "stage A, the default (cpu-main)": lambda: _stage_a("xs2-latent16-map", batch["stage A"], scale),
        "text generator (cpu-xs)": lambda: _text_generator(batch["generator"], scale),
        "class generator (cpu-xs; no attention)": lambda: _class_generator(batch["generator"], scale),
        "VAE (cpu, 32 px crops)": lambda: _vae(scale),
        "backbone ViT-Ti/8 depth 6, all weights": lambda: _backbone(batch["backbone"], scale),
    }


def step_rows(scale: str, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, build in step_builders(scale).items():
        torch.manual_seed(0)
        step = build()
        fused = time_calls(step, repeats=repeats, warmup=1).median_s
        with explicit_attention():
            written = time_calls(step, repeats=repeats, warmup=1).median_s
        fused_again = time_calls(step, repeats=repeats, warmup=0).median_s  # drift check, same process
        rows.append({
            "step": name, "fused s": fused, "fused again s": fused_again, "written out s": written,
            "speed-up": min(fused, fused_again) / written,
        })  # fmt: skip
    return rows


def report(info: dict[str, Any], attention_: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    table_a = markdown_table(
        ["shape (B, heads, tokens)", "fused ms", "math ms", "written out ms", "error fused / math / written"],
        [
            [r["shape"], fmt(r["fused ms"]), fmt(r["math ms"]), fmt(r["written out ms"]),
             " / ".join(fmt(r[f"{v} error"]) for v in ("fused", "math", "written out"))]
            for r in attention_
        ],
    )  # fmt: skip
    table_s = markdown_table(
        ["training step", "fused s", "again s", "written out s", "speed-up"],
        [[r["step"], fmt(r["fused s"]), fmt(r["fused again s"]), fmt(r["written out s"]), f"{r['speed-up']:.2f}x"] for r in steps],
    )  # fmt: skip
    return (
        "## bf16 attention on CPU (bench/cpu_attention.py)\n\n"
        f"{machine_line(info)}\n"
        "Forward + backward under bf16 autocast. F.scaled_dot_product_attention alone (median ms; "
        "mean absolute error against float64, inputs of std 2):\n\n"
        f"{table_a}\n\n"
        "One training step of each model the recipe trains, random weights at its preset's size and "
        f"batch ({BATCH['recipe']}; median s; the fused kernel measured before and after, in the same "
        "process):\n\n"
        f"{table_s}\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["recipe", "test"], default="recipe")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: one lane of the recipe)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    attention_ = attention_rows(args.scale, args.repeats)
    steps = step_rows(args.scale, args.repeats)
    payload = {"machine": info, "scale": args.scale, "attention": attention_, "steps": steps}
    write_results(args.out, "cpu_attention", payload, report(info, attention_, steps))
    print(report(info, attention_, steps))
    return payload


if __name__ == "__main__":
    main()
