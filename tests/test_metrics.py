"""PSNR, SSIM, identification, effective rank, the ridge probe and the Fréchet distance against
known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reptok.metrics import (
    FeatureSpace,
    effective_rank,
    frechet_distance,
    identification,
    psnr,
    ridge_probe,
    ssim,
)


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


def test_identification_finds_the_source_and_not_a_shuffle() -> None:
    g = torch.Generator().manual_seed(0)
    originals = torch.rand(20, 3, 8, 8, generator=g) * 2 - 1
    noisy = originals + 0.05 * torch.randn(originals.shape, generator=g)
    assert bool(identification(noisy, originals).all())
    shuffled = noisy.roll(1, dims=0)  # each image now sits next to another's source
    assert not bool(identification(shuffled, originals).any())
    mean = originals.mean(0, keepdim=True).expand_as(originals)  # knows nothing of the input
    assert float(identification(mean, originals).float().mean()) <= 0.1


def test_effective_rank_counts_directions() -> None:
    g = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=g) * torch.randn(1, 16, generator=g)  # one direction
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    iso = torch.randn(20000, 8, generator=g)  # every direction equally
    assert effective_rank(iso) == pytest.approx(8.0, rel=0.01)
    assert effective_rank(iso + 5.0) == pytest.approx(8.0, rel=0.01)  # centred first


def test_ridge_probe_reads_what_tokens_carry() -> None:
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(300, 12, generator=g)  # what varies between images
    images = torch.tanh(0.3 * factors @ torch.randn(12, 3 * 8 * 8, generator=g)).view(300, 3, 8, 8)
    tokens = factors @ torch.randn(12, 48, generator=g)  # (N, 48): a linear code of the factors
    informed = ridge_probe(tokens[:250], images[:250], tokens[250:], images[250:])
    blind = ridge_probe(torch.randn(300, 48, generator=g)[:250], images[:250], tokens[250:], images[250:])
    assert informed["identification"] > 0.9 > blind["identification"] + 0.5
    assert informed["psnr"] > blind["psnr"] + 2.0
