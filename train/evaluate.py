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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

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
from train.cli import add_guidance_interval_args, guidance_interval_overrides
from train.data import EmojiData, EmojiDataset
from train.files import atomic_path
from train.knn import knn_classify
from train.pretrain_backbone import load_encoder


def feature_space(backbone_dir: str | Path) -> FeatureSpace:
    """The normalised [cls] output of a frozen in-house backbone, named by method and content."""
    backbone_dir = Path(backbone_dir)
    encoder, config = load_encoder(backbone_dir)
    encoder.eval()
    digest = hashlib.sha256((backbone_dir / "backbone.safetensors").read_bytes()).hexdigest()[:8]
    name = f"{config.get('method', 'backbone')}-{digest}"
    return FeatureSpace(name, lambda images: F.normalize(encoder(images).z[:, 0].float(), dim=-1))


def _images(dataset: EmojiDataset, indices: Sequence[int]) -> Tensor:
    return torch.stack([dataset[i]["image"] for i in indices])  # (N, 3, H, W) in [-1, 1]


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.inference_mode()
def encode_all(model: RepTok, images: Tensor, batch_size: int = 128) -> Tensor:
    """(N, 3, S, S) -> the adapted tokens (N, D)."""
    return torch.cat(
        [model.encode(images[c.start : c.stop])[:, 0].cpu() for c in _chunks(len(images), batch_size)]
    )


@torch.inference_mode()
def reconstruction_metrics(
    model: RepTok, real: Tensor, *, steps: int | None, seed: int, batch_size: int
) -> tuple[dict[str, float], Tensor]:
    """PSNR, SSIM and identification of one-token reconstructions of `real`, and the reconstructions."""
    recon = torch.cat([
        model.reconstruct(real[c.start : c.stop], steps=steps, seed=seed + c.start, output_type="pt").cpu()
        for c in tqdm(_chunks(len(real), batch_size), desc="reconstruct")
    ])  # fmt: skip
    metrics = {
        "psnr": float(psnr(recon, real).mean()),
        "ssim": float(ssim(recon, real).mean()),
        "identification": float(identification(recon, real).float().mean()),
    }
    return metrics, recon


@torch.inference_mode()
def draw_samples(
    model: RepTok,
    kind: str,
    conditions: Sequence[Any],
    *,
    steps: int | None,
    seed: int,
    batch_size: int,
    cfg_scale: float | None,
    temperature: float | None = None,
    cfg_interval: tuple[float, float] | None = None,
) -> Tensor:
    """One sample per condition (`kind`: "labels" or "prompts"), in batches seeded by their offset, so
    the same condition list gives the same samples at any batch position. `cfg_scale`, its
    `cfg_interval` and the generator `temperature`: None is the model's own setting."""
    return torch.cat([
        model.sample(**{kind: conditions[c.start : c.stop]}, seed=seed + c.start, decode_steps=steps, cfg_scale=cfg_scale, cfg_interval=cfg_interval, temperature=temperature, output_type="pt").cpu()
        for c in tqdm(_chunks(len(conditions), batch_size), desc=f"{kind} samples")
    ])  # fmt: skip  # (n, 3, S, S)


def probe_bank(space: FeatureSpace, train_images: Tensor, cache_dir: Path | None = None) -> Tensor:
    """The class probe's k-NN bank: unit-norm features (N, F) of the (N, 3, S, S) training images.

    It depends only on the feature network and the images, not on the model evaluated, so with
    `cache_dir` it is computed once for all the models a recipe evaluates (else about 29 s on one
    core each time): stored under the feature space's name (its weights' digest) and a digest of
    the images' bytes, so a changed network or data set never reads a stale bank.
    """
    if cache_dir is None:
        return torch.from_numpy(space.features(train_images))
    digest = hashlib.sha256(train_images.numpy().tobytes()).hexdigest()[:16]
    path = Path(cache_dir) / f"probe-bank-{space.name}-{digest}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # two evaluations may write it at once
            np.save(tmp, space.features(train_images))
    return torch.from_numpy(np.load(path))


@torch.inference_mode()
def class_sample_metrics(
    model: RepTok,
    heldout: EmojiDataset,
    train: EmojiDataset,
    idx: Sequence[int],
    real: Tensor,
    space: FeatureSpace,
    *,
    steps: int | None,
    seed: int,
    batch_size: int,
    cfg_scale: float | None = None,
    temperature: float | None = None,
    cfg_interval: tuple[float, float] | None = None,
    real_feats: np.ndarray | None = None,
    recon_feats: np.ndarray | None = None,
    bank_cache: Path | None = None,
) -> dict[str, float]:
    """gFD and the k-NN class probe of class samples drawn for the held-out label mix of `idx`; the
    probe's two references: the real images and, where given, their reconstructions' features
    `recon_feats`. `real_feats`: the real images' features where the caller has them (each image set
    goes through the feature network once). `bank_cache`: a folder where the probe's bank is kept
    between calls (`probe_bank`)."""
    labels = [int(heldout[i]["label"]) for i in idx]
    samples = draw_samples(model, "labels", labels, steps=steps, seed=seed, batch_size=batch_size, cfg_scale=cfg_scale, temperature=temperature, cfg_interval=cfg_interval)  # fmt: skip
    sample_feats = space.features(samples)  # (n, F)
    real_feats = space.features(real) if real_feats is None else real_feats  # (n, F)
    bank = probe_bank(space, _images(train, range(len(train))), bank_cache)  # (N, F), unit norm
    bank_labels = torch.tensor([int(train[i]["label"]) for i in range(len(train))])
    target = torch.tensor(labels)

    def probe(feats: np.ndarray) -> float:
        named = knn_classify(bank, bank_labels, torch.from_numpy(feats), 20, 0.07, len(train.class_names))
        return float((named == target).float().mean())

    return {
        space.key("gFD"): frechet_distance(sample_feats, real_feats),
        space.key("class_probe_acc"): probe(sample_feats),
        # the same probe on the real held-out images: what a sampler that drew the data itself would get
        space.key("class_probe_acc_real"): probe(real_feats),
        **({space.key("class_probe_acc_recon"): probe(recon_feats)} if recon_feats is not None else {}),
    }


def retrieval_hits(query_feats: np.ndarray, real_feats: np.ndarray, codes: Sequence[str]) -> Tensor:
    """(n, 5) bool: whether each of query i's 5 nearest held-out images (cosine, unit-norm features)
    shows the emoji code of held-out image i, in any style."""
    sims = torch.from_numpy(query_feats) @ torch.from_numpy(real_feats).T  # (n, n)
    top5 = sims.topk(min(5, len(codes)), dim=1).indices  # (n, 5) nearest held-out images
    return torch.tensor([[codes[j] == codes[i] for j in row] for i, row in enumerate(top5.tolist())])


@torch.inference_mode()
def text_sample_metrics(
    model: RepTok,
    heldout: EmojiDataset,
    idx: Sequence[int],
    real_feats: np.ndarray,
    space: FeatureSpace,
    *,
    steps: int | None,
    seed: int,
    batch_size: int,
    cfg_scale: float | None = None,
    temperature: float | None = None,
    cfg_interval: tuple[float, float] | None = None,
) -> dict[str, float]:
    """text gFD and retrieval of text samples drawn from the held-out captions of `idx`."""
    prompts = [str(heldout[i]["caption"]) for i in idx]
    codes = [str(heldout[i]["code"]) for i in idx]
    samples = draw_samples(model, "prompts", prompts, steps=steps, seed=seed, batch_size=batch_size, cfg_scale=cfg_scale, temperature=temperature, cfg_interval=cfg_interval)  # fmt: skip
    sample_feats = space.features(samples)  # (n, F), unit norm
    hit = retrieval_hits(sample_feats, real_feats, codes)  # (n, 5)
    return {
        space.key("text_gFD"): frechet_distance(sample_feats, real_feats),
        space.key("text_retrieval_top1"): float(hit[:, 0].float().mean()),
        space.key("text_retrieval_top5"): float(hit.any(1).float().mean()),
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
) -> dict[str, Any]:
    """Metrics of `model` on the held-out codes of `data`, and on the held-out codes of `unseen_data`
    apart: a file of emoji in a style no training saw. `cache_dir`: where the class probe's bank is
    kept for the next evaluation with the same feature network and data (`probe_bank`)."""
    heldout = EmojiDataset(data, split="heldout", label=label, image_size=model.image_size)
    train = EmojiDataset(data, split="train", label=label, image_size=model.image_size)
    idx = list(range(min(n, len(heldout))))
    real = _images(heldout, idx)  # (n, 3, S, S)
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
    cos = [model.cosine_to_frozen(real[c.start : c.stop]).cpu() for c in _chunks(len(idx), batch_size)]
    metrics["cos_to_frozen"] = float(torch.cat(cos).mean())
    recon_feats = space.features(recon_t)  # (n, F)
    metrics[space.key("rFD")] = frechet_distance(recon_feats, real_feats)
    # Text retrieval's reference: the reconstructions' own retrieval, what a text generator that drew
    # each caption's exact token would reach.
    hit = retrieval_hits(recon_feats, real_feats, [str(heldout[i]["code"]) for i in idx])
    metrics[space.key("recon_top5_same_code")] = float(hit.any(1).float().mean())
    train_images = _images(train, range(len(train)))  # (N, 3, S, S): the mean image and the probe's bank
    heldout_tokens = encode_all(model, real)  # (n, D)
    metrics["token_effective_rank"] = effective_rank(heldout_tokens)
    metrics["token_dim"] = int(heldout_tokens.shape[1])
    probe = ridge_probe(encode_all(model, train_images), train_images, heldout_tokens, real)
    metrics |= {f"ridge_probe_{k}": v for k, v in probe.items()}
    # The floor any reconstruction should clear: the mean training image, which knows nothing of z.
    mean_image = train_images.mean(0, keepdim=True).expand_as(real)  # (n, 3, S, S)
    metrics["baseline_mean_image_psnr"] = float(psnr(mean_image, real).mean())
    metrics["baseline_mean_image_ssim"] = float(ssim(mean_image, real).mean())

    if model.class_generator is not None and model.config.class_names == heldout.class_names:
        metrics |= class_sample_metrics(model, heldout, train, idx, real, space, steps=steps, seed=seed, batch_size=batch_size, real_feats=real_feats, recon_feats=recon_feats, bank_cache=cache_dir)  # fmt: skip
    elif model.class_generator is not None:
        metrics["class_generator"] = f"skipped: its classes are not the data set's {label} labels"
    if model.text_generator is not None:
        metrics |= text_sample_metrics(model, heldout, idx, real_feats, space, steps=steps, seed=seed, batch_size=batch_size)  # fmt: skip

    if unseen_data is not None:
        unseen = EmojiDataset(unseen_data, split="heldout", label=label, image_size=model.image_size)
        unseen_real = _images(unseen, range(min(n, len(unseen))))
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
        unseen_data=args.unseen_data, cache_dir=args.cache_dir,
    )  # fmt: skip
    metrics |= {"model": str(args.model), "data": str(args.data), "seed": args.seed}
    metrics["wall_time_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out) if args.out else Path(args.model) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
