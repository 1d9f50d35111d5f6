"""Inference latency of the explorer on this machine, through the app's own code.

    python bench/latency.py                                    # the app's default model, 2 threads
    python bench/latency.py --model runs/dev/s64 --steps 25 10 --sampler euler heun

Every action is the Gradio handler the app runs (app_parts/handlers.py, over a ModelRegistry),
called in-process under torch.inference_mode: median and p90 over --repeats calls after
--warmup, its FLOPs (torch.utils.flop_counter; a lower bound: elementwise work is not counted)
and the achieved rate against the dense fp32 matmul throughput measured in the same run.
Each sampler setting (--steps × --sampler, decoder) is measured in full, with the reconstruction
PSNR/SSIM of held-out images at that setting, so a faster setting shows what it costs in quality.
Then `python app.py` is started as a process: seconds to its first /reconstruct answer, and its
peak resident memory after every endpoint has answered once (bench/app_process.py).

Writes OUT/latency.json and the "latency" section of OUT/RESULTS.md (OUT: --out, default bench/).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor

from app import EXAMPLES_DIR, MANIFOLD_ENV, MANIFOLD_PATH, PROMPT_EXAMPLES, _class_names
from app_parts.handlers import Explorer
from app_parts.registry import ModelRegistry
from app_parts.tab_manifold import ManifoldView
from bench.app_process import AppProbe, measure_app
from bench.common import (
    BENCH_DIR,
    DEFAULT_MODEL,
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
from reptok.images import load_image
from reptok.metrics import psnr, ssim
from reptok.pipeline import RepTok
from reptok.sampling import SAMPLERS, Sampler
from train.data import IMAGE_EXTENSIONS, EmojiDataset

REFINE_STEPS = 25  # the refined reconstruction's steps (timed, no target: an option)
# Targets for the embedded default (64×64, default sampler settings) on 2 CPU cores.
TARGETS_S = {"reconstruct": 0.5, "class_16": 3.0, "text_16": 3.5, "interpolate_8": 2.0, "manifold": 1.0}
N_SAMPLES, N_FRAMES = 16, 8


@dataclass(frozen=True)
class Setting:
    steps: int  # the app's "Decoder steps" slider (the generator keeps the model's own steps)
    sampler: Sampler  # the decoder's integrator (the app has no control for it: the model's default)

    @property
    def name(self) -> str:
        return f"{self.sampler} × {self.steps}"


@dataclass
class Workload:
    """What the actions are called with: uploads, a class, a prompt, a manifold setting."""

    uploads: list[str]  # two image files (A, B)
    class_name: str | None  # None: the model has no class generator
    prompt: str | None  # None: the model has no text generator
    manifold: bool  # False: no manifold cache, the action is skipped


# ---------------------------------------------------------------------------------- images


def _files(folder: Path) -> list[Path]:
    return (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    )


def quality_images(
    model: RepTok, images_dir: Path | None, data: Path, n: int, scratch: Path
) -> tuple[Tensor, list[str], str]:
    """Held-out images (n, 3, S, S) in [-1, 1], two of them as files to upload, and where they came from.

    --images DIR if given, else assets/examples/, else the held-out split of the emoji .npz."""
    files = _files(images_dir) if images_dir is not None else _files(EXAMPLES_DIR)
    if images_dir is not None and not files:
        raise FileNotFoundError(f"no images in {images_dir}")
    if files:
        files = files[:n]
        images = model.preprocess([load_image(p) for p in files]).cpu()
        return images, [str(p) for p in (files * 2)[:2]], str(files[0].parent)
    if not data.is_file():
        raise FileNotFoundError(f"no example images ({EXAMPLES_DIR}) and no data ({data}): pass --images DIR")
    heldout = EmojiDataset(data, split="heldout", image_size=model.image_size)
    images = torch.stack([heldout[i]["image"] for i in range(min(n, len(heldout)))])
    uploads = []
    for i, picture in enumerate(RepTok.to_pil(images[:2])):
        uploads.append(str(scratch / f"heldout-{i}.png"))
        picture.save(uploads[-1])
    return images, (uploads * 2)[:2], f"{data} (held-out split)"


@torch.inference_mode()
def reconstruction_quality(model: RepTok, images: Tensor, setting: Setting, batch: int) -> dict[str, float]:
    """PSNR / SSIM of one-token reconstructions at this setting (seed i for image i)."""
    recon = torch.cat([
        model.reconstruct(images[i : i + batch], steps=setting.steps, sampler=setting.sampler, seed=i,
                          output_type="pt").cpu()
        for i in range(0, len(images), batch)
    ])  # fmt: skip
    return {"psnr": float(psnr(recon, images).mean()), "ssim": float(ssim(recon, images).mean())}


# --------------------------------------------------------------------------------- actions


def actions(
    explorer: Explorer, label: str, setting: Setting, work: Workload
) -> dict[str, Callable[[], Any] | str]:
    """Each action as the app calls it (a handler with the app's default controls), or why it is skipped."""
    sampling = explorer.models.entry(label).config.sampling
    cfg = sampling.cfg_scale
    (lo, hi), (text_lo, text_hi) = sampling.guidance_interval("class"), sampling.guidance_interval("text")
    a, b = work.uploads
    steps, seed = setting.steps, 0
    seeds = itertools.count(1)
    out: dict[str, Callable[[], Any] | str] = {
        "reconstruct": lambda: explorer.reconstruct(a, label, steps, seed),
        # Chained after every reconstruct in the app (.success): 4 more decodes the person waits for.
        "variations": lambda: explorer.variations(a, label, steps, seed),
        # The Reconstruct tab's refinement slider at 25 steps (reptok.inversion; off by default). A new
        # seed each call: the handler keeps refined tokens per seed, and each call should refine afresh.
        f"reconstruct_refine_{REFINE_STEPS}": lambda: explorer.reconstruct(
            a, label, steps, next(seeds), None, REFINE_STEPS
        ),
        "class_16": "skipped: no class generator (or no class to choose)",
        "text_16": "skipped: no text generator",
        "interpolate_8": lambda: explorer.interpolate(a, b, label, N_FRAMES, "slerp", steps, seed, 0.5),
        # The Interpolation tab's refinement slider: both end tokens refined (a new seed, as above).
        f"interpolate_8_refine_{REFINE_STEPS}": lambda: explorer.interpolate(
            a, b, label, N_FRAMES, "slerp", steps, next(seeds), 0.5, REFINE_STEPS
        ),
        "manifold": "skipped: no manifold cache",
    }
    if work.class_name is not None:
        name = work.class_name
        out["class_16"] = lambda: explorer.sample_class(name, label, cfg, lo, hi, steps, seed, N_SAMPLES)
    if work.prompt is not None:
        prompt = work.prompt
        out["text_16"] = lambda: explorer.sample_text(
            prompt, label, cfg, text_lo, text_hi, steps, seed, N_SAMPLES
        )
    if work.manifold:
        view = ManifoldView(explorer)  # every λ panel, with an upload placed in each
        out["manifold"] = lambda: view.plot(a)
    return out


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


def measure_setting(
    explorer: Explorer, label: str, setting: Setting, work: Workload, args: argparse.Namespace, peak: float
) -> list[dict[str, Any]]:
    model = explorer.models.get(label)
    default = model.config.sampling
    model.config.sampling = default.replace(decode_sampler=setting.sampler)
    rows = []
    try:
        for action, fn in actions(explorer, label, setting, work).items():
            row: dict[str, Any] = {
                "setting": setting.name,
                "action": action,
                "target_s": TARGETS_S.get(action),
            }
            if isinstance(fn, str):
                rows.append(row | {"skipped": fn})
                continue
            timing = time_calls(_inference(fn), repeats=args.repeats, warmup=args.warmup)
            flops = count_flops(_inference(fn))
            rate = flops / timing.median_s / 1e9
            row |= timing.to_dict() | {
                "gflop": flops / 1e9,
                "gflop_per_s": rate,
                "fraction_of_peak": rate / peak,
            }
            print(f"  {setting.name:>12} {action:<14} median {timing.median_s:.3f} s  p90 {timing.p90_s:.3f} s  "
                  f"{flops / 1e9:.2f} GFLOP  {rate:.1f} GFLOP/s")  # fmt: skip
            rows.append(row)
    finally:
        model.config.sampling = default
    return rows


# ---------------------------------------------------------------------------------- report


def render(payload: dict[str, Any]) -> str:
    m = payload["model"]
    lines = [
        "## Latency (bench/latency.py)",
        "",
        machine_line(payload["machine"]),
        f"Model `{m['path']}` ({m['name']}): {m['image_size']}×{m['image_size']} images, "
        f"token of {m['token_dim']}. Dense fp32 matmul: **{payload['peak_gflop_per_s']:.1f} GFLOP/s** "
        f"({payload['matmul_size']}², best of 5), the peak below. Each action is its app handler under "
        f"torch.inference_mode, {payload['repeats']} calls after {payload['warmup']} warm-up; "
        "FLOPs by FlopCounterMode (matmuls and attention only: a lower bound).",
        "",
    ]
    rows = []
    for r in payload["actions"]:
        target = r["target_s"]
        limit = f"≤ {target}" if target else "—"
        if "skipped" in r:
            rows.append([r["setting"], r["action"], r["skipped"], "", limit, *[""] * 5])
            continue
        meets = "" if target is None else ("yes" if r["median_s"] <= target else "**no**")
        rows.append([
            r["setting"], r["action"], fmt(r["median_s"]), fmt(r["p90_s"]), limit, meets, fmt(r["first_s"]),
            fmt(r["gflop"]), fmt(r["gflop_per_s"]), f"{100 * r['fraction_of_peak']:.0f} %",
        ])  # fmt: skip
    headers = ["setting", "action", "median s", "p90 s", "target s", "meets", "first call s", "GFLOP",
               "GFLOP/s", "of peak"]  # fmt: skip
    lines += [markdown_table(headers, rows), ""]
    q = payload["quality"]
    lines += [f"Reconstruction quality at each setting ({q['n']} images from {q['source']}):", ""]
    lines += [
        markdown_table(
            ["setting", "PSNR dB", "SSIM"],
            [[s, fmt(v["psnr"], 4), fmt(v["ssim"], 3)] for s, v in q["settings"].items()],
        ),
        "",
    ]
    app = payload["app"]
    if "skipped" in app:
        lines.append(f"The app as a process: {app['skipped']}.")
    else:
        lines += [
            "The app as a process (`python app.py`, driven with gradio_client at the model's default "
            "controls; after the first answer each endpoint is called once, so lazy loads such as the "
            "text encoder's fall in its call):",
            "",
        ]
        rss_gb = app["peak_rss_bytes"] / 1e9
        rows = [
            ["start to first /reconstruct answer", f"{app['first_answer_s']:.1f} s", "≤ 20 s",
             "yes" if app["first_answer_s"] <= 20 else "**no**"],
            [f"peak resident memory ({app['rss_source']})", f"{rss_gb:.2f} GB", "≤ 3 GB",
             "yes" if rss_gb <= 3 else "**no**"],
            ["server answering (Client connects)", f"{app['server_up_s']:.1f} s", "", ""],
        ]  # fmt: skip
        rows += [
            [f"{name} over HTTP, one call", f"{s:.2f} s", "", ""] for name, s in app["endpoints_s"].items()
        ]
        rows += [[name, note, "", ""] for name, note in app.get("skipped_endpoints", {}).items()]
        lines.append(markdown_table(["measure", "value", "target", "meets"], rows))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help=f"a model folder (default {DEFAULT_MODEL})"
    )
    p.add_argument("--steps", type=int, nargs="+", help="decoder steps to measure (default: the model's)")
    p.add_argument("--sampler", choices=SAMPLERS, nargs="+", help="decoder samplers (default: the model's)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per action (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2, at least 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the free Space)")
    p.add_argument(
        "--images", type=Path, help="held-out images for PSNR (default assets/examples/, else --data)"
    )
    p.add_argument("--data", type=Path, default=Path("data/emoji64.npz"), help="emoji .npz (held-out split)")
    p.add_argument("--quality-n", type=int, default=32, help="images for the PSNR at each setting (32)")
    p.add_argument(
        "--manifold", type=Path, default=Path(os.environ.get(MANIFOLD_ENV) or MANIFOLD_PATH),
        help=f"manifold cache (default: the app's, ${MANIFOLD_ENV} or {MANIFOLD_PATH})",
    )  # fmt: skip
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-throughput matmul")
    p.add_argument("--skip-app", action="store_true", help="do not start `python app.py`")
    p.add_argument("--app-timeout", type=float, default=300.0, help="seconds to wait for the app's answer")
    p.add_argument("--out", type=Path, default=BENCH_DIR, help="where latency.json and RESULTS.md go")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").is_file():
        sys.exit(f"error: no model at {args.model} (pass --model, e.g. runs/dev/s64)")
    models = ModelRegistry([args.model])
    label = models.default
    assert label is not None
    explorer = Explorer(models, args.manifold)
    model = models.get(label)  # loaded before any timing: the app loads it on the first request
    sampling = model.config.sampling
    settings = [
        Setting(steps, sampler)
        for steps, sampler in itertools.product(args.steps or [sampling.decode_steps], args.sampler or [sampling.decode_sampler])
    ]  # fmt: skip
    peak = matmul_gflops(args.matmul_size)
    print(f"dense fp32 matmul: {peak:.1f} GFLOP/s with {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="reptok-bench-") as scratch:
        images, uploads, source = quality_images(model, args.images, args.data, args.quality_n, Path(scratch))
        names = _class_names(models, label)  # what the app's Class dropdown offers; it starts at the first
        work = Workload(
            uploads=uploads,
            class_name=names[0] if names and model.class_generator is not None else None,
            prompt=PROMPT_EXAMPLES[0] if model.text_generator is not None else None,
            manifold=bool(explorer.manifold() and explorer.manifold_settings()),
        )
        rows, quality = [], {}
        for setting in settings:
            rows += measure_setting(explorer, label, setting, work, args, peak)
            quality[setting.name] = reconstruction_quality(model, images, setting, batch=16)
            print(f"  {setting.name:>12} PSNR {quality[setting.name]['psnr']:.2f} dB on {len(images)} images")
        app: dict[str, Any] = {"skipped": "not run (--skip-app)"}
        if not args.skip_app:
            probe = AppProbe(
                uploads=uploads, class_name=work.class_name, prompt=work.prompt, steps=sampling.decode_steps,
                cfg_scale=sampling.cfg_scale, cfg_interval=sampling.guidance_interval("class"),
                text_cfg_interval=sampling.guidance_interval("text"),
            )  # fmt: skip
            app = measure_app(args.model, probe, manifold=args.manifold, timeout_s=args.app_timeout)

    payload = {
        "benchmark": "latency",
        "machine": machine_info(),
        "model": {
            "path": str(args.model),
            "name": label,
            "image_size": model.image_size,
            "token_dim": model.token_dim,
            "sampling_defaults": sampling.to_dict(),
        },
        "peak_gflop_per_s": peak,
        "matmul_size": args.matmul_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "actions": rows,
        "quality": {
            "n": len(images),
            "source": source,
            "settings": {k: {m: finite(v) for m, v in q.items()} for k, q in quality.items()},
        },
        "app": app,
    }
    markdown = render(payload)
    path = write_results(args.out, "latency", payload, markdown)
    print(markdown)
    print(f"wrote {path} and {args.out / 'RESULTS.md'}")
    return payload


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
