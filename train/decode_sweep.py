"""Reconstruction quality of one model across decoder sampler settings, on the held-out split.

    python train/decode_sweep.py --model assets/models/reptok-emoji --data data/emoji64.npz \
        --features assets/features --steps 1 2 4 8 --sampler euler heun --temperature 1 0.7

Every setting decodes the same tokens of the same first --n held-out images from the same seeds:
PSNR, SSIM and identification (train/evaluate.py's definitions; chance is 1 / n), rFD in the
--features space (a Fréchet distance in in-house features, not FID), and the seconds the decoding
took on this machine. `--temperature` scales the decoder's starting noise (τ < 1 starts nearer the
data mean: higher PSNR, less sampled detail); `--shift` is the SD3 time-grid shift
(reptok.sampling.time_grid). This is how the shipped default sampler settings are chosen: see
MODEL_CARD.md. The table goes to stdout and, with --out, the JSON beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from reptok.metrics import identification, psnr, ssim
from reptok.pipeline import RepTok
from reptok.sampling import seeded_noise
from train.batches import index_chunks
from train.data import EmojiDataset, stack_images
from train.evaluate import encode_all, feature_space, refine_all


@torch.inference_mode()
def sweep(
    model: RepTok,
    real: torch.Tensor,
    settings: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
    batch_size: int = 64,
    rfd: Any = None,
    refine_steps: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """One row of metrics per setting ({steps, sampler, shift, temperature}) for `real` (N, 3, S, S),
    for each number of token refinement steps (reptok.inversion; 0: the encoder's tokens)."""
    encoded = encode_all(model, real)[:, None]  # (N, 1, D)
    c, n = model.config.decoder.in_channels, model.config.decoder.input_size
    rows = []
    tokens: dict[int, tuple[torch.Tensor, float]] = {}  # refinement steps -> tokens, seconds
    for refine_n, s in itertools.product(refine_steps, settings):
        if refine_n not in tokens:
            start = time.perf_counter()
            z = (
                encoded
                if refine_n == 0
                else refine_all(model, real, encoded, refine_n, seed=seed, batch_size=batch_size)
            )
            tokens[refine_n] = (z, time.perf_counter() - start)
        z, refine_s = tokens[refine_n]
        start = time.perf_counter()
        recon = torch.cat([
            model.decode(
                z[b.start : b.stop], steps=s["steps"], sampler=s["sampler"], shift=s["shift"],
                noise=seeded_noise((len(b), c, n, n), seed + b.start), temperature=s["temperature"], output_type="pt",
            ).cpu()
            for b in index_chunks(len(z), batch_size)
        ])  # fmt: skip  # (N, 3, S, S)
        row = {"refine_steps": refine_n, **s}
        row["decode_s"] = round(time.perf_counter() - start, 2)
        if refine_n:
            row["refine_s"] = round(refine_s, 2)
            row["cos_to_encoder"] = float(torch.nn.functional.cosine_similarity(z, encoded, dim=-1).mean())
        row["psnr"] = float(psnr(recon, real).mean())
        row["ssim"] = float(ssim(recon, real).mean())
        row["identification"] = float(identification(recon, real).float().mean())
        if rfd is not None:
            row[rfd.key("rFD")] = rfd.distance(recon, real)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]], n: int) -> str:
    keys = [k for k in rows[0] if k not in ("steps", "sampler", "shift", "temperature")]
    head = "| steps | sampler | shift | τ | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (4 + len(keys))]
    for r in rows:
        vals = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append(
            f"| {r['steps']} | {r['sampler']} | {r['shift']} | {r['temperature']} | "
            + " | ".join(vals)
            + " |"
        )
    return f"{n} held-out images; identification chance {1 / n:.4f}.\n\n" + "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a RepTok model folder")
    p.add_argument("--data", required=True, help="the .npz written by train/prepare_emoji.py")
    p.add_argument("--features", default=None, help="in-house backbone folder for rFD (omit to skip it)")
    p.add_argument("--n", type=int, default=1000, help="held-out images, at most (default 1000)")
    p.add_argument("--steps", type=int, nargs="+", default=[8])
    p.add_argument("--sampler", nargs="+", default=["euler"], choices=["euler", "heun"])
    p.add_argument("--shift", type=float, nargs="+", default=[1.0])
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument(
        "--refine-steps", type=int, nargs="+", default=[0],
        help="token refinement steps on each image (reptok.inversion; 0: the encoder's token)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    model = RepTok.from_pretrained(args.model)
    heldout = EmojiDataset(args.data, split="heldout", image_size=model.image_size)
    real = stack_images(heldout, range(min(args.n, len(heldout))))  # (n, 3, S, S)
    settings = [
        {"steps": st, "sampler": sa, "shift": sh, "temperature": te}
        for st, sa, sh, te in itertools.product(args.steps, args.sampler, args.shift, args.temperature)
    ]
    rfd = feature_space(args.features) if args.features else None
    rows = sweep(
        model,
        real,
        settings,
        seed=args.seed,
        batch_size=args.batch_size,
        rfd=rfd,
        refine_steps=args.refine_steps,
    )
    print(markdown(rows, len(real)))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": args.model, "n": len(real), "rows": rows}, indent=2) + "\n"
        )
    return rows


if __name__ == "__main__":
    main()
