"""Image quality metrics: PSNR, SSIM, identification, token effective rank, the ridge probe, and
Fréchet distance in a *named* feature space.

PSNR and SSIM are torchmetrics' (on [0, 1] images, data range 1). The Fréchet distance is
the formula of FID, but FID means Inception-v3 pool features; here the features are whatever
extractor is named (the in-house DINO backbone's [cls] output for the emoji models), and every
number carries that name ("FD_dino-emoji"), so it is never mistaken for FID.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import linalg
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], float32."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [-1, 1] -> (B,)."""
    return peak_signal_noise_ratio(
        _unit(images), _unit(targets), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )  # fmt: skip


def ssim(images: Tensor, targets: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, σ 1.5) of images in [-1, 1] -> (B,).

    Images smaller than the window (a 1×1 upload, a 4000×10 strip) get the largest odd window
    that fits (σ scaled with it), instead of an error.
    """
    kernel = min(11, images.shape[-1], images.shape[-2])
    kernel -= 1 - kernel % 2  # odd
    return structural_similarity_index_measure(
        _unit(images), _unit(targets), data_range=1.0, kernel_size=kernel, sigma=1.5 * kernel / 11,
        reduction="none",
    )  # fmt: skip


def identification(images: Tensor, originals: Tensor) -> Tensor:
    """Is each image's nearest original (pixel MSE) its own source? (N, 3, H, W) each -> (N,) bool.

    images[i] is the reconstruction of originals[i]; chance is 1/N. It asks whether a person could
    pick the source out of the line-up, which PSNR alone does not: a blur of the mean image scores
    fair PSNR on every emoji and identifies none.
    """
    a, b = images.float().flatten(1), originals.float().flatten(1)  # (N, P)
    dist = torch.cdist(a, b).square()  # (N, N) squared distances, ∝ MSE
    return dist.argmin(dim=1) == torch.arange(len(a), device=a.device)


def effective_rank(tokens: Tensor) -> float:
    """exp(entropy of the normalised squared singular values) of the centred (N, D) tokens.

    1 for tokens on a line, D for tokens spread evenly in every direction (Roy & Vetterli 2007).
    A collapsed backbone (every image the same token up to its mean colour) scores 2-3.
    """
    x = tokens.double().flatten(1)
    s2 = torch.linalg.svdvals(x - x.mean(0, keepdim=True)).square()  # (min(N, D),)
    p = s2 / s2.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def ridge_probe(
    train_tokens: Tensor, train_images: Tensor, test_tokens: Tensor, test_images: Tensor
) -> dict[str, float]:
    """What a token carries, in seconds: a ridge regression tokens -> pixels fit on the train split,
    scored on the test split by PSNR, SSIM and identification.

    No decoder trained on the same tokens is expected to identify much more than this linear map
    does, so it ranks backbones and [cls] settings before a decoder run is paid for. The ridge
    strength is chosen by scikit-learn's efficient leave-one-out over a log grid.
    """
    from sklearn.linear_model import RidgeCV

    x_train = train_tokens.double().flatten(1).numpy()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(
        (x_train - mean) / std, train_images.flatten(1).numpy()
    )
    x_test = (test_tokens.double().flatten(1).numpy() - mean) / std
    pred = torch.from_numpy(ridge.predict(x_test)).float().view_as(test_images).clamp(-1.0, 1.0)
    return {
        "psnr": float(psnr(pred, test_images).mean()),
        "ssim": float(ssim(pred, test_images).mean()),
        "identification": float(identification(pred, test_images).float().mean()),
        "alpha": float(ridge.alpha_),
    }


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between two (N, F) feature sets.

    The matrix square root is scipy's, as in the reference FID code; a tiny diagonal offset
    is added when the product is near-singular (fewer samples than feature dimensions).
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, F) feature arrays of the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Fréchet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


class FeatureSpace:
    """A fixed, named feature extractor for Fréchet distances: images (B, 3, H, W) in [-1, 1]
    -> features (B, F). `name` goes into every metric key computed with it."""

    def __init__(self, name: str, extract: Callable[[Tensor], Tensor], batch_size: int = 64) -> None:
        self.name = name
        self.extract = extract
        self.batch_size = batch_size

    @torch.inference_mode()
    def features(self, images: Tensor) -> np.ndarray:
        chunks = [
            self.extract(images[i : i + self.batch_size]).float().flatten(1).cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(chunks).numpy()

    def distance(self, images_a: Tensor, images_b: Tensor) -> float:
        return frechet_distance(self.features(images_a), self.features(images_b))

    def key(self, prefix: str) -> str:
        """e.g. key("rFD") -> "rFD_dino-emoji": the feature space is part of the metric's name."""
        return f"{prefix}_{self.name}"
