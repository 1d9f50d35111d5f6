"""Evaluate a RepTok model on the held-out split and write metrics.json next to its weights.

    python train/evaluate.py --model runs/tok/model --data data/emoji64.npz --features runs/backbones/dino

Measured on the first --n held-out images (held-out emoji codes are unseen in every style):

    psnr, ssim                 reconstruction from one token (torchmetrics, [0, 1] images)
    identification             share of reconstructions whose nearest held-out original (pixel MSE)
                               is their own source; chance is 1 / n
    baseline_mean_image_*      the same for the mean training image: what a decoder that ignores z gets
    cos_to_frozen              mean cos(z, z_frozen): how far λ let the token move
    token_effective_rank       exp(entropy of the normalised squared singular values) of the centred
                               held-out tokens: how many directions the tokens really use (of D)
    ridge_probe_*              a ridge regression tokens -> pixels fit on the train split: PSNR, SSIM and
                               identification of its held-out predictions (what the token carries,
                               linearly, with no decoder)
    unseen_style_*             psnr, ssim, identification on the held-out split of --unseen-data: emoji
                               of a style no training saw (the shipped recipe: Fluent Emoji)
    rFD_<space>                Fréchet distance, reconstructions vs originals
    gFD_<space>                Fréchet distance, class samples (same label mix) vs the originals
    class_probe_acc_<space>    a k-NN probe on the train split names the class asked for; _real: the
                               same probe on the real held-out images (the probe's own ceiling);
                               _recon: on their one-token reconstructions (what a class generator
                               that drew each held-out image's own token would get, through this decoder)
    text_gFD_<space>, text_retrieval_top1/top5_<space>
                               text samples from held-out captions; retrieval: the sample's nearest
                               held-out image (in the same features) is the captioned emoji
    recon_top5_same_code_<space>
                               the same retrieval for the reconstructions: text retrieval's reference
    refined_*                  with --refine-steps N: psnr, ssim, identification of reconstructions
                               from tokens refined on each image (reptok.inversion), and their mean
                               cos to the encoder's tokens; not measured by default (about 1 s an image)

<space> names the fixed feature extractor: an in-house backbone's normalised [cls] output
("dino-3f2a9c1e" = method + content hash). These Fréchet distances are NOT FID: FID means
Inception-v3 features, which cannot be had offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from reptok.inversion import RefineConfig, refine
from reptok.metrics import (
    FeatureSpace,
    effective_rank,
    frechet_distance,
    identification,
    psnr,
    ridge_probe,
    ssim,
)
from reptok.pipeline import RepTok
from train.batches import index_chunks
from train.cli import add_guidance_interval_args, guidance_interval_overrides
from train.data import EmojiData, EmojiDataset, stack_images
from train.pretrain_backbone import load_encoder
from train.sample_metrics import SampleRun, class_sample_metrics, retrieval_hits, text_sample_metrics


def feature_space(backbone_dir: str | Path) -> FeatureSpace:
    """The normalised [cls] output of a frozen in-house backbone, named by method and content."""
    backbone_dir = Path(backbone_dir)
    encoder, config = load_encoder(backbone_dir)
    encoder.eval()
    digest = hashlib.sha256((backbone_dir / "backbone.safetensors").read_bytes()).hexdigest()[:8]
    name = f"{config.get('method', 'backbone')}-{digest}"
    return FeatureSpace(name, lambda images: F.normalize(encoder(images).z[:, 0].float(), dim=-1))


@torch.inference_mode()
def encode_all(model: RepTok, images: Tensor, batch_size: int = 128) -> Tensor:
    """(N, 3, S, S) -> the adapted tokens (N, D)."""
    return torch.cat(
        [model.encode(images[c.start : c.stop])[:, 0].cpu() for c in index_chunks(len(images), batch_size)]
    )


@torch.inference_mode()
def reconstruction_metrics(
    model: RepTok, real: Tensor, *, steps: int | None, seed: int, batch_size: int
) -> tuple[dict[str, float], Tensor]:
    """PSNR, SSIM and identification of one-token reconstructions of `real`, and the reconstructions."""
    recon = torch.cat([
        model.reconstruct(real[c.start : c.stop], steps=steps, seed=seed + c.start, output_type="pt").cpu()
        for c in tqdm(index_chunks(len(real), batch_size), desc="reconstruct")
    ])  # fmt: skip
    metrics = {
        "psnr": float(psnr(recon, real).mean()),
        "ssim": float(ssim(recon, real).mean()),
        "identification": float(identification(recon, real).float().mean()),
    }
    return metrics, recon


@torch.inference_mode()
def refine_all(
    model: RepTok, images: Tensor, tokens: Tensor, refine_steps: int, *, seed: int, batch_size: int
) -> Tensor:
    """`tokens` (N, 1, D) of `images` refined on them for `refine_steps` (reptok.inversion), in
    batches whose refinement is seeded by their offset, as their decoding is."""
    return torch.cat([
        refine(model, images[c.start : c.stop], tokens[c.start : c.stop], RefineConfig(steps=refine_steps, seed=seed + c.start))
        for c in tqdm(index_chunks(len(images), batch_size), desc="refine")
    ])  # fmt: skip  # (N, 1, D)


@torch.inference_mode()
def refined_metrics(
    model: RepTok, real: Tensor, refine_steps: int, *, steps: int | None, seed: int, batch_size: int
) -> dict[str, float]:
    """reconstruction_metrics from tokens refined on each image for `refine_steps` (reptok.inversion),
    decoded with the same seeds."""
    z_enc = encode_all(model, real, batch_size)[:, None]  # (n, 1, D)
    z = refine_all(model, real, z_enc, refine_steps, seed=seed, batch_size=batch_size)  # (n, 1, D)
    recon = torch.cat([
        model.decode(z[c.start : c.stop], steps=steps, seed=seed + c.start, output_type="pt").cpu()
        for c in index_chunks(len(real), batch_size)
    ])  # fmt: skip
    return {
        "refined_steps": refine_steps,
        "refined_psnr": float(psnr(recon, real).mean()),
        "refined_ssim": float(ssim(recon, real).mean()),
        "refined_identification": float(identification(recon, real).float().mean()),
        "refined_cos_to_encoder": float(F.cosine_similarity(z, z_enc, dim=-1).mean()),
    }


@torch.inference_mode()
def evaluate(
    model: RepTok,
    data: str | Path,
    space: FeatureSpace,
    *,
    n: int = 1000,
    label: str = "category",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    unseen_data: str | Path | None = None,
    cache_dir: Path | None = None,
    refine_steps: int = 0,
) -> dict[str, Any]:
    """Metrics of `model` on the held-out codes of `data`, and on the held-out codes of `unseen_data`
    apart: a file of emoji in a style no training saw. `cache_dir`: where the class probe's bank is
    kept for the next evaluation with the same feature network and data (`probe_bank`)."""
    heldout = EmojiDataset(data, split="heldout", label=label, image_size=model.image_size)
    train = EmojiDataset(data, split="train", label=label, image_size=model.image_size)
    idx = list(range(min(n, len(heldout))))
    real = stack_images(heldout, idx)  # (n, 3, S, S)
    real_feats = space.features(real)
    metrics: dict[str, Any] = {"n": len(idx), "feature_space": space.name}
    metrics["decode_steps"] = steps or model.config.sampling.decode_steps
    metrics["decode_temperature"] = model.config.sampling.decode_temperature
    metrics["decode_shift"] = model.config.sampling.decode_shift
    metrics["cfg_scale"] = model.config.sampling.cfg_scale
    metrics["cfg_interval"] = list(model.config.sampling.guidance_interval("class"))
    metrics["text_cfg_interval"] = list(model.config.sampling.guidance_interval("text"))
    metrics["generate_temperature"] = model.config.sampling.generate_temperature

    recon_metrics, recon_t = reconstruction_metrics(
        model, real, steps=steps, seed=seed, batch_size=batch_size
    )
    metrics |= recon_metrics
    metrics["identification_chance"] = 1.0 / len(idx)
    if refine_steps:
        metrics |= refined_metrics(model, real, refine_steps, steps=steps, seed=seed, batch_size=batch_size)
    cos = [model.cosine_to_frozen(real[c.start : c.stop]).cpu() for c in index_chunks(len(idx), batch_size)]
    metrics["cos_to_frozen"] = float(torch.cat(cos).mean())
    recon_feats = space.features(recon_t)  # (n, F)
    metrics[space.key("rFD")] = frechet_distance(recon_feats, real_feats)
    # Text retrieval's reference: the reconstructions' own retrieval, what a text generator that drew
    # each caption's exact token would reach.
    hit = retrieval_hits(recon_feats, real_feats, [str(heldout[i]["code"]) for i in idx])
    metrics[space.key("recon_top5_same_code")] = float(hit.any(1).float().mean())
    train_images = stack_images(train, range(len(train)))  # (N, 3, S, S): the mean image and the probe's bank
    heldout_tokens = encode_all(model, real)  # (n, D)
    metrics["token_effective_rank"] = effective_rank(heldout_tokens)
    metrics["token_dim"] = int(heldout_tokens.shape[1])
    probe = ridge_probe(encode_all(model, train_images), train_images, heldout_tokens, real)
    metrics |= {f"ridge_probe_{k}": v for k, v in probe.items()}
    # The floor any reconstruction should clear: the mean training image, which knows nothing of z.
    mean_image = train_images.mean(0, keepdim=True).expand_as(real)  # (n, 3, S, S)
    metrics["baseline_mean_image_psnr"] = float(psnr(mean_image, real).mean())
    metrics["baseline_mean_image_ssim"] = float(ssim(mean_image, real).mean())

    run = SampleRun(steps=steps, seed=seed, batch_size=batch_size)  # the model's own guidance and T
    if model.class_generator is not None and model.config.class_names == heldout.class_names:
        metrics |= class_sample_metrics(model, heldout, train, idx, real, space, run, real_feats=real_feats, recon_feats=recon_feats, bank_cache=cache_dir)  # fmt: skip
    elif model.class_generator is not None:
        metrics["class_generator"] = f"skipped: its classes are not the data set's {label} labels"
    if model.text_generator is not None:
        metrics |= text_sample_metrics(model, heldout, idx, real_feats, space, run)

    if unseen_data is not None:
        unseen = EmojiDataset(unseen_data, split="heldout", label=label, image_size=model.image_size)
        unseen_real = stack_images(unseen, range(min(n, len(unseen))))
        unseen_metrics, _ = reconstruction_metrics(
            model, unseen_real, steps=steps, seed=seed, batch_size=batch_size
        )
        metrics["unseen_style"] = sorted(set(EmojiData.load(unseen_data).style.tolist()))
        metrics["unseen_style_n"] = len(unseen_real)
        metrics |= {f"unseen_style_{k}": v for k, v in unseen_metrics.items()}
    return metrics


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a RepTok model folder (config.json + safetensors)")
    p.add_argument("--data", required=True, help="the .npz written by train/prepare_emoji.py")
    p.add_argument(
        "--features", required=True, help="in-house backbone folder whose [cls] features the FDs use"
    )
    p.add_argument(
        "--n", type=int, default=1000, help="held-out images to evaluate on, at most (default 1000)"
    )
    p.add_argument("--label", choices=["category", "subcategory"], default="category")
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument("--temperature", type=float, help="decoder noise scale τ (default: the model's)")
    p.add_argument("--shift", type=float, help="decoder time-grid shift (default: the model's)")
    p.add_argument("--cfg-scale", type=float, help="guidance scale of the samples (default: the model's)")
    p.add_argument(
        "--generate-temperature",
        type=float,
        help="generator noise scale T of the samples (default: the model's)",
    )
    add_guidance_interval_args(p, "of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--unseen-data", default=None,
        help="an emoji .npz of a style no training saw: its held-out split is scored apart",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir", type=Path, default=None,
        help="keep the class probe's bank of training-image features here, for the next evaluation "
        "with the same --features and --data (default: compute it each time)",
    )  # fmt: skip
    p.add_argument(
        "--refine-steps", type=int, default=0,
        help="also measure reconstructions from tokens refined on each image for N steps (reptok.inversion)",
    )  # fmt: skip
    p.add_argument("--out", help="where to write the JSON (default: <model>/metrics.json)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    model = RepTok.from_pretrained(args.model)
    if args.temperature is not None:  # recorded in the metrics (decode_temperature)
        model.config.sampling = model.config.sampling.replace(decode_temperature=args.temperature)
    if args.shift is not None:  # recorded in the metrics (decode_shift)
        model.config.sampling = model.config.sampling.replace(decode_shift=args.shift)
    if args.cfg_scale is not None:  # recorded in the metrics (cfg_scale)
        model.config.sampling = model.config.sampling.replace(cfg_scale=args.cfg_scale)
    if args.generate_temperature is not None:  # recorded in the metrics (generate_temperature)
        model.config.sampling = model.config.sampling.replace(generate_temperature=args.generate_temperature)
    # recorded in the metrics (cfg_interval, text_cfg_interval)
    model.config.sampling = model.config.sampling.replace(**guidance_interval_overrides(args))
    metrics = evaluate(
        model, args.data, feature_space(args.features),
        n=args.n, label=args.label, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        unseen_data=args.unseen_data, cache_dir=args.cache_dir, refine_steps=args.refine_steps,
    )  # fmt: skip
    metrics |= {"model": str(args.model), "data": str(args.data), "seed": args.seed}
    metrics["wall_time_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out) if args.out else Path(args.model) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
