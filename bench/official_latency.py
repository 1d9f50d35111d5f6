"""The official RepTok-XL on a CPU: latency per component, and what makes it faster (issue 14).

    python bench/official_latency.py               # full measurement, 2 threads (see bench/README.md)
    python bench/official_latency.py --quick       # smoke check: real widths, 2 layers per stack
    python bench/official_latency.py --model DIR   # converted official weights instead of random ones

The model is the official one's configuration, built from the same presets that
`reptok.official.convert_official` fills from the checkpoint's shapes: DINOv2 ViT-B/14-reg at
224 px, the 28-layer, 1152-wide flow decoder on SD-VAE latents 4×32×32 (2×2 patches: 257
tokens), the SD-VAE (diffusers AutoencoderKL, SD's config), the 28-block MLP-Mixer class
generator, and the official sampling (50 decoder + 50 generator Euler steps, CFG 1.5 on
[0.3, 0.9]). Without --model every weight is random (there is no network here): the timings are
the real model's, image quality cannot be judged. The zero-initialised layers (output
projections, residual branches, adaptive norms) get small random values, so that every branch
computes and precision errors propagate as through trained weights.

Each component is timed alone (median of --repeats calls after --warmup), in every variant:
  encoder     preprocess + ViT, one 256×256 image -> token
  decoder     one flow step: one velocity evaluation, batch 1
  vae         SD-VAE decode, latent 4×32×32 -> 256×256 image
  generator   one class token: all generator steps, CFG (batch 2 inside the interval)
Variants: fp32; bf16 autocast (fp32 weights, cast at every op); bf16 weights under autocast;
1 vs 2 threads; torch.compile of the decoder (inductor with freezing; compile time apart).
Fidelity: each variant's output against fp32 eager on the same input. Totals for one
reconstruction and one class sample at each decoder step count are sums of the components;
end-to-end runs (fp32 at the official steps, fp32 and the fastest variant at --fast-steps) check
them. Only with --model: reconstruction PSNR at fewer steps and shifted time grids (random weights
say nothing about how many steps a trained decoder needs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn
from torch._inductor import config as inductor_config

from bench.common import (
    BENCH_DIR,
    ROOT,
    count_flops,
    finite,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    matmul_gflops,
    time_calls,
    write_results,
)
from reptok.decoder import DECODER_PRESETS, ImageSpace, ImageSpaceConfig
from reptok.encoder import ENCODER_PRESETS
from reptok.generator import MIXER_PRESETS
from reptok.images import load_image
from reptok.metrics import psnr
from reptok.official import OFFICIAL_SAMPLING, SD_VAE_CONFIG
from reptok.pipeline import RepTok, RepTokConfig
from reptok.sampling import seeded_noise

NAME = "official-latency"  # bench/official-latency.json and its section of RESULTS.md
COMPONENTS = ("encoder", "decoder", "vae", "generator")
QUICK_DEPTH = 2  # --quick: layers per stack (of 12 ViT, 28 decoder, 28 mixer blocks)
CLASS_ID = 207  # ImageNet "golden retriever": any class costs the same
Precision = Literal["fp32", "autocast", "bf16"]
PRECISION_LABEL = {"fp32": "fp32", "autocast": "bf16 autocast", "bf16": "bf16 weights"}


@dataclass(frozen=True)
class Variant:
    precision: Precision  # autocast: fp32 weights, bf16 matmuls; bf16: weights stored in bf16, autocast
    threads: int
    compiled: bool = False  # torch.compile of the decoder; the other components run eager

    @property
    def name(self) -> str:
        extra = " + compile" if self.compiled else ""
        return f"{PRECISION_LABEL[self.precision]}{extra}, {self.threads} thread{'s' * (self.threads > 1)}"


def variants(threads: int, compile_decoder: bool) -> list[Variant]:
    out = [Variant("fp32", threads), Variant("autocast", threads), Variant("bf16", threads)]
    if threads != 1:
        out += [Variant("fp32", 1), Variant("bf16", 1)]
    if compile_decoder:
        out += [Variant("fp32", threads, compiled=True), Variant("bf16", threads, compiled=True)]
    return out


# ------------------------------------------------------------------------------------ models


def official_config(quick: bool) -> RepTokConfig:
    """What `convert_official(..., vae="checkpoint")` builds for the released checkpoint (its
    `_encoder_config` for a 768-wide, 12-deep /14 ViT; the XL decoder and mixer presets);
    `quick` keeps every width and resolution but only QUICK_DEPTH layers per stack."""
    encoder = ENCODER_PRESETS["dinov2-b14-reg"].replace(
        pretrained=False, crop="center", resize="pool-bilinear",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip
    decoder, generator = DECODER_PRESETS["reptok-xl-imagenet256"], MIXER_PRESETS["reptok-xl-imagenet256"]
    if quick:
        encoder = encoder.replace(backbone_kwargs={**encoder.backbone_kwargs, "depth": QUICK_DEPTH})
        decoder, generator = decoder.replace(depth=QUICK_DEPTH), generator.replace(depth=QUICK_DEPTH)
    return RepTokConfig(
        encoder=encoder, decoder=decoder, class_generator=generator, sampling=OFFICIAL_SAMPLING,
        image_space=ImageSpaceConfig(kind="vae", vae_config=SD_VAE_CONFIG, scale=0.18215),
    )  # fmt: skip


@torch.no_grad()
def fill_zero_weights(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> int:
    """Give every all-zero parameter (zero-inits, biases) N(0, std²) values; returns how many."""
    n = 0
    for p in module.parameters():
        if p.numel() > 1 and not p.any():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
            n += 1
    return n


def bf16_copy(model: RepTok) -> RepTok:
    """The same weights stored in bf16 (run under autocast: its inputs stay fp32)."""
    to = lambda m: copy.deepcopy(m).to(torch.bfloat16)  # noqa: E731
    space = ImageSpace(model.config.image_space, to(model.image_space.vae))
    gen = to(model.class_generator) if model.class_generator is not None else None
    return RepTok(model.config, to(model.encoder), to(model.decoder), space, class_generator=gen)


def with_decoder(model: RepTok, decoder: nn.Module) -> RepTok:
    out = copy.copy(model)  # shares every other component
    out.decoder = decoder  # type: ignore[assignment]  (a compiled Decoder)
    return out


@contextlib.contextmanager
def running(variant: Variant) -> Iterator[None]:
    """inference_mode, the variant's threads and (for bf16) CPU autocast."""
    before = torch.get_num_threads()
    torch.set_num_threads(variant.threads)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.precision != "fp32")
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- measure


@dataclass
class Inputs:
    image: Tensor  # (1, 3, 256, 256) in [-1, 1]
    noise: Tensor  # (1, 4, 32, 32) decoder start
    t: Tensor  # (1,) a mid-trajectory time, expanded as `reptok.sampling` passes it
    z: Tensor  # (1, 1, 768) a token (fp32 encoder's)
    latent: Tensor  # (1, 4, 32, 32) what the VAE decodes


def component_fn(name: str, model: RepTok, inputs: Inputs, generate_steps: int) -> Callable[[], Tensor]:
    if name == "encoder":
        return lambda: model.encode(inputs.image)
    if name == "decoder":
        return lambda: model.decoder(inputs.noise, inputs.t, inputs.z)
    if name == "vae":
        return lambda: model.image_space.decode(inputs.latent)
    return lambda: model.sample_tokens(labels=[CLASS_ID], steps=generate_steps, seed=0)


def difference(out: Tensor, ref: Tensor, image: bool = False) -> dict[str, float | None]:
    """Max abs and relative RMS difference (and PSNR in dB for images in [-1, 1])."""
    out, ref = out.float(), ref.float()
    diff = out - ref
    rel = float(diff.square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-12))
    res: dict[str, float | None] = {"max_abs": float(diff.abs().max()), "rel_rms": rel}
    if image:
        res["psnr_db"] = finite(float(psnr(out, ref).mean()))
    return res


def measure_components(
    models: dict[str, RepTok], inputs: Inputs, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[Variant, nn.Module]]:
    """Every component in every variant: timings, fidelity against fp32 eager at args.threads."""
    rows, refs, compiled = [], {}, {}
    for variant in variants(args.threads, not args.no_compile):
        model = models["fp32" if variant.precision != "bf16" else "bf16"]
        for name in COMPONENTS if not variant.compiled else ("decoder",):
            row: dict[str, Any] = {"component": name, "variant": variant.name, **variant.__dict__}
            if variant.compiled:
                inductor_config.freezing = True  # weights as constants: oneDNN prepacking on CPU
                model = with_decoder(model, torch.compile(model.decoder))
                compiled[variant] = model.decoder
            fn, box = component_fn(name, model, inputs, args.generate_steps), {}

            def call(fn: Callable[[], Tensor] = fn, box: dict = box) -> None:
                box["out"] = fn()

            try:
                with running(variant):
                    timing = time_calls(call, repeats=args.repeats, warmup=args.warmup)
            except Exception as err:  # torch.compile on CPU needs a C++ toolchain and may fail
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                compiled.pop(variant, None)
                print(f"  {name:>9} | {variant.name}: FAILED {row['error']}")
                rows.append(row)
                continue
            row |= timing.to_dict()
            if variant.compiled:
                row["compile_s"] = timing.first_s - timing.median_s  # the first call compiles
            if variant == Variant("fp32", args.threads):
                refs[name] = box["out"]
            if name in refs:
                row["fidelity"] = difference(box["out"], refs[name], image=name == "vae")
            print(f"  {name:>9} | {variant.name}: {timing.median_s:.3f} s (first {timing.first_s:.2f} s)")
            rows.append(row)
    return rows, compiled


def median(rows: list[dict[str, Any]], component: str, variant: Variant) -> float | None:
    for r in rows:
        if r["component"] == component and r["variant"] == variant.name and "median_s" in r:
            return r["median_s"]
    return None


def totals(rows: list[dict[str, Any]], steps: Sequence[int]) -> list[dict[str, Any]]:
    """Sum of components: reconstruct = encoder + N·decoder + vae; class = generator + N·decoder + vae.
    A compiled variant takes its other components from the eager variant of the same precision."""
    out = []
    for v in {r["variant"]: Variant(r["precision"], r["threads"], r["compiled"]) for r in rows}.values():
        eager = Variant(v.precision, v.threads)
        parts = {c: median(rows, c, v if c == "decoder" else eager) for c in COMPONENTS}
        if any(p is None for p in parts.values()):
            continue
        enc, dec, vae, gen = (float(parts[c]) for c in COMPONENTS)  # type: ignore[arg-type]
        for n in steps:
            out.append({
                "variant": v.name, "steps": n, "reconstruct_s": enc + n * dec + vae,
                "class_sample_s": gen + n * dec + vae, "threads": v.threads,
            })  # fmt: skip
    return out


def end_to_end(model: RepTok, variant: Variant, image: Tensor, steps: int) -> dict[str, Any]:
    """One reconstruction and one class sample (components already warm): seconds and images.

    A compiled decoder recompiles for the strides of the token each path gives it (a slice of the
    ViT's output, a generated token): one untimed 1-step run of each first, its seconds reported."""
    warmup_s = None
    with running(variant):
        if variant.compiled:
            start = time.perf_counter()
            model.reconstruct(image, steps=1, seed=0, output_type="pt")
            model.sample(labels=[CLASS_ID], steps=1, seed=0, decode_steps=1, output_type="pt")
            warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        recon = model.reconstruct(image, steps=steps, seed=0, output_type="pt")
        mid = time.perf_counter()
        sample = model.sample(labels=[CLASS_ID], seed=0, decode_steps=steps, output_type="pt")
        end = time.perf_counter()
    assert isinstance(recon, Tensor) and isinstance(sample, Tensor)
    return {"variant": variant.name, "steps": steps, "reconstruct_s": mid - start,
            "class_sample_s": end - mid, "warmup_s": warmup_s, "recon": recon, "sample": sample}  # fmt: skip


def bf16_matmul_gflops(size: int, repeats: int = 5) -> float:
    a, b = (torch.randn(size, size, generator=torch.Generator().manual_seed(i)).bfloat16() for i in (0, 1))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


# ------------------------------------------------------------------------------------ report


def render(p: dict[str, Any]) -> str:
    m = p["model"]
    lines = ["## Official RepTok-XL on CPU (bench/official_latency.py)", "", machine_line(p["machine"]), ""]
    lines.append(
        f"Model: {m['weights']}; {m['depths']}. Parameters (M): "
        + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in m["parameters"].items())
        + f". Dense matmul {p['matmul_size']}²: fp32 **{p['peak_gflop_per_s']:.0f}** GFLOP/s, "
        f"bf16 **{p['bf16_gflop_per_s']:.0f}** GFLOP/s. Built in {p['build_s']:.0f} s; "
        f"peak resident memory {p['peak_rss_gb']:.1f} GB."
    )
    lines += ["", f"Per component ({p['repeats']} calls after {p['warmup']} warm-up; speed-up and "
              f"fidelity against {p['reference']} on the same input; GFLOP per call: "
              + ", ".join(f"{c} {v:.3g}" for c, v in p["gflop"].items())
              + f"; generator = {p['generate_steps']} steps with CFG):", ""]  # fmt: skip
    rows, base = (
        [],
        {r["component"]: r["median_s"] for r in p["components"] if r["variant"] == p["reference"]},
    )
    for r in p["components"]:
        f, gflop, s = r.get("fidelity") or {}, p["gflop"].get(r["component"]), r.get("median_s")
        rows.append([
            r["component"], r["variant"], r.get("error") or fmt(s), fmt(r.get("p90_s")),
            f"×{base[r['component']] / s:.2f}" if s else "—", fmt(r.get("compile_s")),
            fmt(gflop / s if gflop and s else None), fmt(f.get("max_abs"), 2), fmt(f.get("rel_rms"), 2),
            fmt(f.get("psnr_db"), 3),
        ])  # fmt: skip
    headers = ["component", "variant", "median s", "p90 s", "speed-up", "compile s", "GFLOP/s",
               "max abs diff", "rel. RMS diff", "PSNR dB"]  # fmt: skip
    lines += [markdown_table(headers, rows), ""]
    lines += ["Totals as sums of the components, seconds (one image; decoder Euler steps N; the "
              "generator at its official steps):", ""]  # fmt: skip
    steps = sorted({t["steps"] for t in p["totals"]}, reverse=True)
    by_variant: dict[str, dict[int, dict]] = {}
    for t in p["totals"]:
        by_variant.setdefault(t["variant"], {})[t["steps"]] = t
    rows = [[v, *(f"{fmt(d[n]['reconstruct_s'])} / {fmt(d[n]['class_sample_s'])}" for n in steps)]
            for v, d in by_variant.items()]  # fmt: skip
    lines += [markdown_table(["variant", *(f"N={n}: recon / class" for n in steps)], rows), ""]
    lines += ["Measured end to end (one call each, `RepTok.reconstruct` / `RepTok.sample`):", ""]
    rows = [[e["variant"], e["steps"], fmt(e["reconstruct_s"]), fmt(e["class_sample_s"]),
             fmt(e["warmup_s"]), fmt(e.get("fidelity", {}).get("max_abs"), 2),
             fmt(e.get("fidelity", {}).get("psnr_db"), 3)] for e in p["end_to_end"]]  # fmt: skip
    headers = ["variant", "steps", "reconstruct s", "class sample s", "recompile s",
               "recon max abs diff vs fp32", "recon PSNR vs fp32 dB"]  # fmt: skip
    lines += [markdown_table(headers, rows), ""]
    if p["steps_fidelity"]:
        lines += ["Reconstruction at fewer steps (fp32; PSNR against the input and the official steps):", ""]
        rows = [[s["steps"], s["shift"], fmt(s["psnr_input_db"], 3), fmt(s["psnr_official_db"], 3)]
                for s in p["steps_fidelity"]]  # fmt: skip
        lines += [markdown_table(["steps", "shift", "PSNR vs input dB", "PSNR vs official dB"], rows), ""]
    else:
        lines += ["Fewer steps / shifted grids: the time is the per-step time × N above; what they cost in "
                  "quality needs the trained weights (`--model DIR` measures it).", ""]  # fmt: skip
    if m["random"]:
        lines.append("Random weights: fidelity numbers show numerical error only (bf16 rounding, "
                     "compiled kernels); they say nothing about image quality.")  # fmt: skip
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke check: 2 layers per stack, 1 call, few steps")
    p.add_argument("--model", type=Path, help="a converted official model folder (default: random weights)")
    p.add_argument("--image", type=Path, help="image to reconstruct (default: the first in assets/examples)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the free Space)")
    p.add_argument("--repeats", type=int, help="timed calls per component (default 3; --quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--steps", type=int, nargs="+", help="decoder step counts in the totals (50 25 10 5)")
    p.add_argument("--fast-steps", type=int, help="decoder steps of the fast end-to-end run (default 10)")
    p.add_argument("--shifts", type=float, nargs="+", default=[1.0, 3.0], help="time-grid shifts (--model)")
    p.add_argument(
        "--generate-steps", type=int, help=f"generator steps (default {OFFICIAL_SAMPLING.generate_steps})"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-throughput matmul")
    p.add_argument("--out", type=Path, help="where official-latency.json and RESULTS.md go (default "
                   "bench/; --quick writes nothing unless given)")  # fmt: skip
    args = p.parse_args(argv)
    official = OFFICIAL_SAMPLING.decode_steps
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.steps = args.steps or ([3, 2] if args.quick else [official, 25, 10, 5])
    args.fast_steps = args.fast_steps or (2 if args.quick else 10)
    args.official_steps = 3 if args.quick else official
    args.generate_steps = args.generate_steps or (5 if args.quick else OFFICIAL_SAMPLING.generate_steps)
    args.out = args.out or (None if args.quick else BENCH_DIR)
    return args


def build(args: argparse.Namespace) -> dict[str, RepTok]:
    """{"fp32": the model, "bf16": a copy with bf16 weights}."""
    if args.model is not None:
        model = RepTok.from_pretrained(args.model)
    else:
        model = RepTok.from_config(official_config(args.quick))
        g = torch.Generator().manual_seed(0)
        for part in model.components().values():
            fill_zero_weights(part, g)
    return {"fp32": model, "bf16": bf16_copy(model)}


def fastest(rows: list[dict[str, Any]], threads: int) -> Variant:
    """The variant with the fastest decoder step at `threads` (the dominant cost)."""
    ok = [r for r in rows if r["component"] == "decoder" and r["threads"] == threads and "median_s" in r]
    r = min(ok, key=lambda r: r["median_s"])
    return Variant(r["precision"], r["threads"], r["compiled"])


def fewer_steps(model: RepTok, image: Tensor, official: Tensor, args: argparse.Namespace) -> list[dict]:
    """PSNR of fp32 reconstructions at fewer steps and shifted grids (meaningful for trained weights)."""
    out = []
    for n in [n for n in args.steps if n != args.official_steps]:
        for shift in args.shifts:
            with running(Variant("fp32", args.threads)):
                recon = model.reconstruct(image, steps=n, shift=shift, seed=0, output_type="pt")
            assert isinstance(recon, Tensor)
            out.append({
                "steps": n, "shift": shift, "psnr_input_db": finite(float(psnr(recon, image).mean())),
                "psnr_official_db": finite(float(psnr(recon, official).mean())),
            })  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = build(args)
    model, build_s = models["fp32"], time.perf_counter() - start
    print(f"built in {build_s:.0f} s: {model.num_parameters()}")

    source = args.image or sorted((ROOT / "assets" / "examples").glob("*.png"))[0]
    image = model.preprocess(load_image(source))  # (1, 3, 256, 256)
    c, n = model.config.decoder.in_channels, model.config.decoder.input_size
    with torch.inference_mode():
        inputs = Inputs(
            image=image, noise=seeded_noise((1, c, n, n), 0), latent=seeded_noise((1, c, n, n), 1),
            t=torch.tensor(0.5).expand(1), z=model.encode(image),  # t, z as the samplers pass them
        )  # fmt: skip
        gflop = {
            c: count_flops(component_fn(c, model, inputs, args.generate_steps)) / 1e9 for c in COMPONENTS
        }
    peak, peak_bf16 = matmul_gflops(args.matmul_size), bf16_matmul_gflops(args.matmul_size)
    print(f"matmul fp32 {peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s; GFLOP per call {gflop}")

    rows, compiled = measure_components(models, inputs, args)
    fp32, fast = Variant("fp32", args.threads), fastest(rows, args.threads)
    fast_model = models["bf16" if fast.precision == "bf16" else "fp32"]
    fast_model = with_decoder(fast_model, compiled[fast]) if fast.compiled else fast_model
    runs = [(model, fp32, args.official_steps)]
    runs += [(model, fp32, args.fast_steps)] if args.fast_steps != args.official_steps else []
    runs += [(fast_model, fast, args.fast_steps)] if fast != fp32 else []
    e2e = [end_to_end(m, variant, image, steps) for m, variant, steps in runs]
    ref = next(e for e in e2e if e["variant"] == fp32.name and e["steps"] == args.fast_steps)
    for e in e2e:
        print(f"  end to end | {e['variant']}, {e['steps']} steps: {e['reconstruct_s']:.2f} s recon, "
              f"{e['class_sample_s']:.2f} s class")  # fmt: skip
        if e["steps"] == args.fast_steps:  # precision error only: against fp32 at the same steps
            e["fidelity"] = difference(e["recon"], ref["recon"], image=True)
    steps_fidelity = fewer_steps(model, image, e2e[0]["recon"], args) if args.model is not None else []

    payload = {
        "benchmark": NAME,
        "machine": machine_info() | {"threads": args.threads},
        "model": {
            "weights": str(args.model) if args.model else "official configuration, random weights",
            "random": args.model is None,
            "depths": f"--quick: {QUICK_DEPTH} layers per stack, not the real cost" if args.quick else "full",
            "parameters": model.num_parameters(),
            "sampling": model.config.sampling.to_dict(),
        },
        "quick": args.quick, "threads": args.threads, "reference": fp32.name,
        "repeats": args.repeats, "warmup": args.warmup,
        "generate_steps": args.generate_steps, "matmul_size": args.matmul_size,
        "peak_gflop_per_s": peak, "bf16_gflop_per_s": peak_bf16, "build_s": build_s, "gflop": gflop,
        "components": rows, "totals": totals(rows, args.steps),
        "end_to_end": [{k: v for k, v in e.items() if k not in ("recon", "sample")} for e in e2e],
        "steps_fidelity": steps_fidelity,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # Linux: KiB
    }  # fmt: skip
    markdown = render(payload)
    print(markdown)
    if args.out is not None:
        path = write_results(args.out, NAME, payload, markdown)
        print(f"wrote {path} and {args.out / 'RESULTS.md'}")
    return payload


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
