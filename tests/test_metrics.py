"""PSNR, SSIM and the Fréchet distance against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reptok.metrics import FeatureSpace, frechet_distance, psnr, ssim


def test_psnr_known_value_and_identity() -> None:
    x = torch.zeros(2, 3, 8, 8)  # mid-grey in [-1, 1]
    y = x.clone()
    y[1] += 0.2  # 0.1 in [0, 1] units everywhere -> MSE 0.01 -> 20 dB
    values = psnr(y, x)
    assert math.isinf(float(values[0])) or float(values[0]) > 100
    assert float(values[1]) == pytest.approx(20.0, abs=1e-3)


def test_ssim_is_one_for_identical_and_lower_for_noisy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert bool((ssim(noisy, x) < 0.9).all())


def test_frechet_distance_closed_forms() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, shifted mean: distance = ‖Δμ‖²
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 3-D: 3 · (1 + 4 − 2·2) = 3
    assert frechet_distance(rng.normal(size=(20000, 3)), 2 * rng.normal(size=(20000, 3))) == pytest.approx(
        3.0, rel=0.05
    )
    with pytest.raises(ValueError):
        frechet_distance(a, a[:, :2])


def test_feature_space_names_the_metric() -> None:
    space = FeatureSpace("toy-mean", lambda im: im.mean(dim=(2, 3)), batch_size=3)
    x = torch.rand(10, 3, 8, 8) * 2 - 1
    assert space.features(x).shape == (10, 3)
    assert space.distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert space.key("gFD") == "gFD_toy-mean"


@pytest.mark.parametrize("shape", [(1, 1), (4, 10), (3, 40)])
def test_ssim_on_images_smaller_than_its_window(shape: tuple[int, int]) -> None:
    x = torch.rand(1, 3, *shape) * 2 - 1
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-4)
    assert math.isfinite(float(ssim(-x, x)[0]))
