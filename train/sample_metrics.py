"""Metrics of generated samples, shared by train/evaluate.py and train/guidance_sweep.py: class
samples (Fréchet distance in a named feature space, not FID, and a k-NN class probe) and text
samples (their Fréchet distance and retrieval of the captioned emoji among the held-out images)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from reptok.metrics import FeatureSpace, frechet_distance
from reptok.pipeline import RepTok
from train.batches import index_chunks
from train.data import EmojiDataset, stack_images
from train.files import atomic_path
from train.knn import knn_classify


@dataclass(frozen=True)
class SampleRun:
    """How samples are drawn: decoder steps (None: the model's), the sampling seed (a batch's samples
    are seeded by the batch's offset), the batch size, and the guidance scale, its interval and the
    generator temperature (None: the model's own setting)."""

    steps: int | None = None
    seed: int = 0
    batch_size: int = 64
    cfg_scale: float | None = None
    temperature: float | None = None
    cfg_interval: tuple[float, float] | None = None


@torch.inference_mode()
def draw_samples(model: RepTok, kind: str, conditions: Sequence[Any], run: SampleRun) -> Tensor:
    """One sample per condition (`kind`: "labels" or "prompts"), in batches seeded by their offset, so
    the same condition list gives the same samples at any batch position."""
    return torch.cat([
        model.sample(**{kind: conditions[c.start : c.stop]}, seed=run.seed + c.start, decode_steps=run.steps, cfg_scale=run.cfg_scale, cfg_interval=run.cfg_interval, temperature=run.temperature, output_type="pt").cpu()
        for c in tqdm(index_chunks(len(conditions), run.batch_size), desc=f"{kind} samples")
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
    run: SampleRun,
    *,
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
    samples = draw_samples(model, "labels", labels, run)
    sample_feats = space.features(samples)  # (n, F)
    real_feats = space.features(real) if real_feats is None else real_feats  # (n, F)
    bank = probe_bank(space, stack_images(train, range(len(train))), bank_cache)  # (N, F), unit norm
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
    run: SampleRun,
) -> dict[str, float]:
    """text gFD and retrieval of text samples drawn from the held-out captions of `idx`."""
    prompts = [str(heldout[i]["caption"]) for i in idx]
    codes = [str(heldout[i]["code"]) for i in idx]
    samples = draw_samples(model, "prompts", prompts, run)
    sample_feats = space.features(samples)  # (n, F), unit norm
    hit = retrieval_hits(sample_feats, real_feats, codes)  # (n, 5)
    return {
        space.key("text_gFD"): frechet_distance(sample_feats, real_feats),
        space.key("text_retrieval_top1"): float(hit[:, 0].float().mean()),
        space.key("text_retrieval_top5"): float(hit.any(1).float().mean()),
    }
