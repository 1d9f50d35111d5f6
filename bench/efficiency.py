"""Training efficiency, side by side: RepTok's one-token MLP-Mixer vs a DiT-style model on pixels.

    python bench/efficiency.py --features runs/backbones/dino               # the app's default model
    python bench/efficiency.py --model runs/dev/s64 --features runs/pretrain_probe/dino-t2 --budget-s 120

On the same data (the emoji train split, labelled by category), the same machine and the same
budget of training-step seconds each, train
  (a) the RepTok class generator (reptok.generator.MixerGenerator) on one-token latents of --model's
      encoder, standardised as stage B does (train/train_generator.py: same Trainer, same loss), and
  (b) a DiT-style flow transformer on the pixel grid (bench/baseline.py), sized to about the same
      number of parameters (--dit-depth, default: matched),
with the same labels, flow loss, time sampling, class dropout, optimiser, batch size and EMA.
At checkpoints along the way (geometric in time: budget/2^k ... budget, and before training) each
EMA model samples class-conditionally for the first --eval-n held-out labels, and gFD_<space> is
the Fréchet distance of those samples to the held-out images in train/evaluate.py's feature space
(--features; not FID: not Inception features). RepTok's tokens are decoded with --model's decoder:
that cost is reported as inference, apart from generator training. Encoding the training set once
(the token cache) is reported apart too. Training FLOPs = FLOPs of one step (FlopCounterMode,
forward + backward; optimiser and elementwise work not counted) × steps.

Writes OUT/efficiency.json and the "efficiency" section of OUT/RESULTS.md (OUT: --out, default bench/).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import Tensor, nn

from bench.baseline import ClassDiT, ClassDiTConfig, matched_depth, parameter_count, sample_images
from bench.common import (
    BENCH_DIR,
    DEFAULT_MODEL,
    count_flops,
    machine_info,
    matmul_gflops,
    synchronize,
    write_results,
)
from bench.efficiency_report import flops_to_reach, render
from reptok.decoder import DECODER_PRESETS
from reptok.generator import MixerGenerator
from reptok.metrics import FeatureSpace, frechet_distance
from reptok.pipeline import RepTok
from train.batches import index_chunks, seed_everything, step_generator
from train.cli import add_time_schedule_arg
from train.common import Trainer
from train.data import EmojiDataset
from train.evaluate import feature_space
from train.loop_config import TrainConfig, to_plain
from train.train_generator import PRESETS, class_loss, encode_dataset

SampleFn = Callable[[nn.Module, Tensor, int], tuple[Tensor, dict[str, float]]]
"""(EMA model, labels (n,), seed) -> (images (n, 3, S, S) in [-1, 1] on CPU, seconds by part)."""
FlopsFn = Callable[[nn.Module, Tensor], dict[str, float]]
"""(EMA model, labels (k,)) -> FLOPs per image by part."""


@dataclass
class Side:
    """One generator under test: what it trains on and how it samples an evaluation set."""

    key: str  # "reptok" / "dit"
    title: str
    latent: str  # what it generates, in words
    model: nn.Module
    columns: dict[str, Tensor]  # "z": what the flow generates (tokens, or pixels), "label"
    sample: SampleFn
    sample_flops: FlopsFn


class _BudgetTrainer(Trainer):
    """The stage-B trainer without checkpoint files: a benchmark run is never resumed."""

    def save_checkpoint(self) -> None:
        pass


# ----------------------------------------------------------------------------- the two sides


def reptok_side(
    tokenizer: RepTok, train: Any, args: argparse.Namespace, num_classes: int
) -> tuple[Side, dict[str, float]]:
    """(a): tokens of the training set cached once (timed and counted apart), a mixer over them."""
    device = tokenizer.device
    first = torch.stack([train[i]["image"] for i in range(min(args.batch_size, len(train)))]).to(device)
    with torch.inference_mode():
        encode_flops = count_flops(lambda: tokenizer.encoder(first)) / len(first)
    start = time.perf_counter()
    cache = encode_dataset(tokenizer, train, device, args.batch_size, None)
    synchronize(device)
    token_cache = {
        "images": len(cache["z"]),
        "s": time.perf_counter() - start,
        "flops": encode_flops * len(cache["z"]),
    }

    preset = PRESETS[args.mixer_preset].class_generator
    config = preset.replace(
        token_dim=tokenizer.token_dim, num_classes=num_classes, class_dropout=args.class_dropout,
        width=args.mixer_width or preset.width, depth=args.mixer_depth or preset.depth,
    )  # fmt: skip
    seed_everything(args.seed)
    mixer = MixerGenerator(config)
    mixer.stats.set_stats(cache["z"])
    columns = {"z": mixer.stats.normalize(cache["z"]), "label": cache["label"]}  # (N, 1, D), (N,)
    steps, decode_steps = args.eval_steps, args.eval_steps

    def sample(generator: nn.Module, labels: Tensor, seed: int) -> tuple[Tensor, dict[str, float]]:
        tokenizer.class_generator = generator  # the pipeline samples with the generator it holds
        images, seconds = [], {"generate": 0.0, "decode": 0.0}
        for r in index_chunks(len(labels), args.eval_batch):
            start = time.perf_counter()
            z = tokenizer.sample_tokens(
                labels=labels[r.start : r.stop].tolist(), steps=steps, seed=seed + r.start
            )
            synchronize(device)
            seconds["generate"] += time.perf_counter() - start
            start = time.perf_counter()
            images.append(
                tokenizer.decode(z, steps=decode_steps, seed=seed + r.start, output_type="pt").cpu()
            )
            seconds["decode"] += time.perf_counter() - start
        return torch.cat(images), seconds

    def sample_flops(generator: nn.Module, labels: Tensor) -> dict[str, float]:
        tokenizer.class_generator = generator
        z = tokenizer.sample_tokens(labels=labels.tolist(), steps=steps, seed=0)
        return {
            "generate": count_flops(
                lambda: tokenizer.sample_tokens(labels=labels.tolist(), steps=steps, seed=0)
            ),
            "decode": count_flops(lambda: tokenizer.decode(z, steps=decode_steps, seed=0, output_type="pt")),
        }

    latent = f"1 token × {tokenizer.token_dim}"
    side = Side("reptok", "RepTok MLP-Mixer (one token)", latent, mixer, columns, sample, sample_flops)
    return side, token_cache


def dit_side(
    tokenizer: RepTok, train: Any, args: argparse.Namespace, num_classes: int, target_params: int
) -> Side:
    """(b): the pixel-grid model, as deep as makes its parameter count closest to the mixer's."""
    size = tokenizer.image_size
    decoder = DECODER_PRESETS[args.dit_preset].replace(input_size=size, in_channels=3, time_reversed=False)
    config = ClassDiTConfig(decoder, num_classes=num_classes, class_dropout=args.class_dropout)
    depth = args.dit_depth or matched_depth(config, target_params)
    config = dataclasses.replace(config, decoder=decoder.replace(depth=depth))
    seed_everything(args.seed)
    model = ClassDiT(config)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # (N, 3, S, S) in [-1, 1]
    labels = torch.tensor([int(train[i]["label"]) for i in range(len(train))])
    s = tokenizer.config.sampling
    steps = args.eval_steps or s.decode_steps  # a pixel flow, like the decoder: the decoder's default
    knobs = {
        "steps": steps,
        "sampler": s.decode_sampler,
        "cfg_scale": s.cfg_scale,
        "cfg_interval": s.cfg_interval,
    }

    def sample(net: nn.Module, labels: Tensor, seed: int) -> tuple[Tensor, dict[str, float]]:
        images, start = [], time.perf_counter()
        for r in index_chunks(len(labels), args.eval_batch):
            y = labels[r.start : r.stop].to(tokenizer.device)
            images.append(sample_images(net, y, seed=seed + r.start, **knobs).cpu())
        return torch.cat(images), {"generate": time.perf_counter() - start}

    def sample_flops(net: nn.Module, labels: Tensor) -> dict[str, float]:
        y = labels.to(tokenizer.device)
        return {"generate": count_flops(lambda: sample_images(net, y, seed=0, **knobs))}

    grid = f"{decoder.grid_size}×{decoder.grid_size} patches of {decoder.patch_size}×{decoder.patch_size}×3 pixels"
    return Side(
        "dit",
        f"DiT-style on pixels (depth {depth})",
        grid,
        model,
        {"z": images, "label": labels},
        sample,
        sample_flops,
    )


# ----------------------------------------------------------------------------- train, measure


def run_side(
    side: Side, cfg: TrainConfig, args: argparse.Namespace, eval_labels: Tensor, real: np.ndarray,
    space: FeatureSpace, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Train `side` for the budget; evaluate the EMA before training and at each checkpoint."""
    run_config = {
        "bench": "efficiency",
        "side": side.key,
        "model": to_plain(getattr(side.model, "config", {})),
    }
    trainer = _BudgetTrainer(cfg, workdir / side.key, side.model, list(side.model.parameters()), run_config)
    loss_fn = class_loss(args.time_schedule)
    batch = {k: v.to(trainer.device) for k, v in next(trainer.batches(side.columns)).items()}
    flops_per_step = count_flops(
        lambda: loss_fn(trainer.model, batch, step_generator(cfg.seed, 0))[0].backward()
    )
    trainer.optimizer.zero_grad(set_to_none=True)  # that step was only counted, never taken
    batches = trainer.batches(side.columns)

    def checkpoint() -> dict[str, Any]:
        images, seconds = side.sample(trainer.ema, eval_labels, args.seed)
        gfd = frechet_distance(space.features(images), real)
        point = {"step": trainer.step, "train_flops": flops_per_step * trainer.step, "train_s": trainer.elapsed_s,
                 "gfd": gfd, "sample_s_per_image": {k: v / len(images) for k, v in seconds.items()}}  # fmt: skip
        print(f"[{side.key}] step {trainer.step}  {trainer.elapsed_s:.1f} s  "
              f"{point['train_flops'] / 1e12:.3f} TFLOP  {space.key('gFD')} {gfd:.4g}")  # fmt: skip
        return point

    points = [checkpoint()]
    for k in reversed(range(args.checkpoints)):
        target_s = args.budget_s / 2**k
        while trainer.elapsed_s < target_s:
            per_step = trainer.elapsed_s / trainer.step if trainer.step else math.inf
            trainer.cfg.steps = trainer.step + max(1, math.floor((target_s - trainer.elapsed_s) / per_step))
            trainer.fit(batches, loss_fn)
        points.append(checkpoint())
    k = min(len(eval_labels), args.eval_batch)
    with torch.inference_mode():
        flops = {part: f / k for part, f in side.sample_flops(trainer.ema, eval_labels[:k]).items()}
    return {
        "title": side.title,
        "latent": side.latent,
        "parameters": parameter_count(side.model),
        "flops_per_step": flops_per_step,
        "steps": trainer.step,
        "images_seen": trainer.step * cfg.batch_size,
        "train_s": trainer.elapsed_s,
        "curve": points,
        "sample_flops_per_image": flops,
        "sample_s_per_image": points[-1]["sample_s_per_image"],
    }


def compare(sides: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Training FLOPs each side needs to reach each side's final gFD (None: not within its budget)."""
    rows = []
    for key, side in sides.items():
        target = side["curve"][-1]["gfd"]
        need = {k: flops_to_reach(s["curve"], target) for k, s in sides.items()}
        ratio = need["dit"] / need["reptok"] if need["dit"] and need["reptok"] else None
        rows.append({"target": f"{key} final", "gfd": target, "flops": need, "dit_over_reptok": ratio})
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="tokenizer whose encoder and decoder (a) uses"
    )
    p.add_argument(
        "--features", type=Path, required=True, help="backbone folder for gFD (as train/evaluate.py)"
    )
    p.add_argument(
        "--data", type=Path, default=Path("data/emoji64.npz"), help="emoji .npz (train / held-out)"
    )
    p.add_argument("--budget-s", type=float, default=600.0, help="training-step seconds per generator (600)")
    p.add_argument(
        "--checkpoints", type=int, default=3, help="evaluations in the budget, geometric in time (3)"
    )
    p.add_argument("--eval-n", type=int, default=64, help="held-out labels sampled per evaluation (64)")
    p.add_argument("--eval-batch", type=int, default=32, help="samples per sampling batch (32)")
    p.add_argument("--eval-steps", type=int, help="sampling steps of every flow (default: the model's)")
    p.add_argument("--train-n", type=int, help="train on the first N of a seeded shuffle (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch, both sides (64)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate, both sides")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warmup, both sides (10)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="as the training scripts: auto is bf16 autocast on a GPU that has it, fp32 on CPU")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights (what is evaluated)")
    p.add_argument("--class-dropout", type=float, default=0.1, help="null-class fraction for CFG, both sides")
    add_time_schedule_arg(p, "logit_normal")
    p.add_argument("--mixer-preset", choices=sorted(PRESETS), default="cpu-s", help="train_generator preset")
    p.add_argument("--mixer-width", type=int, help="override the preset's mixer width")
    p.add_argument("--mixer-depth", type=int, help="override the preset's mixer depth")
    p.add_argument("--dit-preset", choices=sorted(DECODER_PRESETS), default="s4-64px", help="decoder preset")
    p.add_argument("--dit-depth", type=int, help="DiT depth (default: parameters matched to the mixer)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU (2)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-throughput matmul")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=BENCH_DIR, help="where efficiency.json and RESULTS.md go")
    args = p.parse_args(argv)
    if args.eval_steps is not None and args.eval_steps < 1:
        p.error("--eval-steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the Trainer's Accelerator would take a GPU otherwise
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device")
    device = torch.device(args.device)
    tokenizer = RepTok.from_pretrained(args.model, device=device)
    train = EmojiDataset(args.data, split="train", label="category", image_size=tokenizer.image_size)
    heldout = EmojiDataset(args.data, split="heldout", label="category", image_size=tokenizer.image_size)
    if args.train_n is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
        train = torch.utils.data.Subset(train, order[: args.train_n].tolist())
    num_classes = len(heldout.class_names)
    space = feature_space(args.features)
    n = min(args.eval_n, len(heldout))
    real = space.features(torch.stack([heldout[i]["image"] for i in range(n)]))  # the first n, as evaluate.py
    eval_labels = torch.tensor([int(heldout[i]["label"]) for i in range(n)])
    peak = matmul_gflops(args.matmul_size, device=device)
    print(f"dense fp32 matmul: {peak:.1f} GFLOP/s on {device}")

    cfg = TrainConfig(
        steps=0, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay, log_every=10**9, ckpt_every=10**9, seed=args.seed, precision=args.precision,
    )  # fmt: skip
    reptok, token_cache = reptok_side(tokenizer, train, args, num_classes)
    dit = dit_side(tokenizer, train, args, num_classes, parameter_count(reptok.model))
    results = {}
    with tempfile.TemporaryDirectory(prefix="reptok-efficiency-") as workdir:
        for side in (reptok, dit):
            results[side.key] = run_side(
                side, dataclasses.replace(cfg), args, eval_labels, real, space, Path(workdir)
            )
    payload = {
        "benchmark": "efficiency",
        "machine": machine_info(device),
        "peak_gflop_per_s": peak,
        "settings": to_plain(vars(args)),
        "data": {
            "train_images": len(train),
            "eval_n": n,
            "classes": num_classes,
            "feature_space": space.name,
        },
        "metric": space.key("gFD"),
        "token_cache": token_cache,
        "sides": results,
        "comparison": compare(results),
    }
    markdown = render(payload)
    path = write_results(args.out, "efficiency", payload, markdown)
    print(markdown)
    print(f"wrote {path} and {args.out / 'RESULTS.md'}")
    return payload


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
