"""The flow convention and the samplers, on fields whose answer is known."""

from __future__ import annotations

import pytest
import torch

from reptok import flow, sampling


def test_interpolation_endpoints_and_target() -> None:
    x, n = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert torch.equal(flow.interpolate(x, n, torch.zeros(4)), n)  # t = 0 is noise
    assert torch.equal(flow.interpolate(x, n, torch.ones(4)), x)  # t = 1 is data
    t = torch.rand(4)
    h = 1e-3
    numeric = (flow.interpolate(x, n, t + h) - flow.interpolate(x, n, t - h)) / (2 * h)
    torch.testing.assert_close(numeric, flow.velocity_target(x, n), atol=1e-2, rtol=1e-2)


def test_flow_loss_is_zero_for_the_true_velocity_and_positive_otherwise() -> None:
    x, n = torch.randn(8, 5), torch.randn(8, 5)
    perfect = flow.flow_loss(lambda x_t, t: x - n, x, noise=n)
    assert float(perfect) == 0.0
    wrong = flow.flow_loss(lambda x_t, t: torch.zeros_like(x_t), x, noise=n)
    assert float(wrong) == pytest.approx(float((x - n).square().mean()), rel=1e-5)


@pytest.mark.parametrize("schedule", ["uniform", "logit_normal"])
def test_sample_time_in_unit_interval_and_seeded(schedule: str) -> None:
    t1 = flow.sample_time(1000, schedule=schedule, generator=torch.Generator().manual_seed(3))
    t2 = flow.sample_time(1000, schedule=schedule, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)
    assert float(t1.min()) > 0.0 and float(t1.max()) < 1.0


def test_time_grid() -> None:
    g = sampling.time_grid(10)
    assert g[0] == 0.0 and g[-1] == 1.0 and len(g) == 11
    torch.testing.assert_close(g, torch.linspace(0, 1, 11))
    shifted = sampling.time_grid(10, shift=3.0)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0
    assert bool((shifted.diff() > 0).all())
    assert shifted[5] < g[5]  # shift > 1: more steps near the noise end
    with pytest.raises(ValueError):
        sampling.time_grid(0)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_constant_field_is_integrated_exactly(sampler: str) -> None:
    x0 = torch.randn(3, 4)
    c = torch.randn(3, 4)
    x1 = sampling.integrate(lambda x, t: c.expand_as(x), x0, steps=7, sampler=sampler)
    torch.testing.assert_close(x1, x0 + c, atol=1e-6, rtol=0)


def test_euler_matches_its_closed_form_and_heun_is_exact_for_linear_time() -> None:
    x0 = torch.zeros(2, 1)
    field = lambda x, t: t[:, None].expand_as(x)  # noqa: E731   dx/dt = t  ->  x(1) = x(0) + 1/2
    n = 8
    euler = sampling.integrate(field, x0, steps=n, sampler="euler")
    torch.testing.assert_close(euler, torch.full((2, 1), (n - 1) / (2 * n)))  # left Riemann sum
    heun = sampling.integrate(field, x0, steps=n, sampler="heun")
    torch.testing.assert_close(heun, torch.full((2, 1), 0.5))  # trapezoid is exact for linear t


def test_exponential_field_converges_with_order() -> None:
    # dx/dt = x -> x(1) = e·x(0). Heun's error must shrink ~4× per halving, Euler's ~2×.
    x0 = torch.ones(1, 1, dtype=torch.float64)
    exact = torch.e

    def err(sampler: str, steps: int) -> float:
        return abs(float(sampling.integrate(lambda x, t: x, x0, steps=steps, sampler=sampler)) - exact)

    assert err("euler", 20) / err("euler", 40) == pytest.approx(2.0, rel=0.1)
    assert err("heun", 20) / err("heun", 40) == pytest.approx(4.0, rel=0.1)


def test_guidance_scale_one_is_the_conditional_model() -> None:
    cond = lambda x, t: x + 1  # noqa: E731
    uncond = lambda x, t: x - 1  # noqa: E731
    x, t = torch.randn(2, 3), torch.full((2,), 0.5)
    assert torch.equal(sampling.guided(cond, uncond, cfg_scale=1.0)(x, t), cond(x, t))
    g = sampling.guided(cond, uncond, cfg_scale=3.0, interval=(0.3, 0.9))
    torch.testing.assert_close(g(x, t), uncond(x, t) + 3.0 * (cond(x, t) - uncond(x, t)))
    # outside the interval: the conditional velocity alone
    assert torch.equal(g(x, torch.full((2,), 0.1)), cond(x, t))
    assert torch.equal(g(x, torch.full((2,), 0.95)), cond(x, t))


def test_guidance_joint_call_is_used_inside_the_interval_only() -> None:
    cond = lambda x, t: x + 1  # noqa: E731
    uncond = lambda x, t: x - 1  # noqa: E731
    calls: list[int] = []

    def joint(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(x))
        return cond(x, t), uncond(x, t)

    x = torch.randn(2, 3)
    two = sampling.guided(cond, uncond, cfg_scale=3.0, interval=(0.3, 0.9))
    one = sampling.guided(cond, uncond, cfg_scale=3.0, interval=(0.3, 0.9), joint_fn=joint)
    for t in (0.1, 0.5, 0.95):
        tt = torch.full((2,), t)
        assert torch.equal(one(x, tt), two(x, tt))
    assert calls == [2]  # only at t = 0.5


def test_seeded_noise_is_per_sample_and_reproducible() -> None:
    a = sampling.seeded_noise((4, 3, 2), 7)
    b = sampling.seeded_noise((16, 3, 2), 7)
    assert torch.equal(a, b[:4])  # image i does not depend on the batch size
    assert not torch.equal(a, sampling.seeded_noise((4, 3, 2), 8))
    assert torch.equal(sampling.seeded_noise((2, 3), [5, 9])[1], sampling.seeded_noise((1, 3), 9)[0])
    with pytest.raises(ValueError):
        sampling.seeded_noise((3, 2), [1, 2])


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.integrate(lambda x, t: x, torch.zeros(1), steps=2, sampler="dpm")  # type: ignore[arg-type]
