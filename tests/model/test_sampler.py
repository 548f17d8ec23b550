"""Rectified-flow sampler: schedule, exactness with a perfect denoiser, seeded randomness."""

from __future__ import annotations

import pytest
import torch

from xworld_env.model.sampler import (
    FlowSampler,
    SamplerConfig,
    add_noise,
    draw_noise,
    shift_time,
)


def test_schedule_runs_from_noise_to_clean_and_is_shifted():
    times = FlowSampler(SamplerConfig(num_steps=4, shift=3.0)).timesteps()
    assert times.shape == (5,)
    assert times[0] == 1.0 and times[-1] == 0.0
    assert bool((times[1:] < times[:-1]).all())
    torch.testing.assert_close(times, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    uniform = FlowSampler(SamplerConfig(num_steps=4, shift=1.0)).timesteps()
    torch.testing.assert_close(uniform, torch.linspace(1, 0, 5))
    assert float(shift_time(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)


def test_perfect_denoiser_recovers_the_clean_sample():
    x0 = torch.randn(2, 3, 4)
    calls = []

    def oracle(x_t, t, s):
        calls.append((s, t.clone()))
        return (x_t - x0) / t[:, None, None]  # the exact velocity noise - x0

    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    sampler = FlowSampler(SamplerConfig(num_steps=4))
    out = sampler.sample(oracle, draw_noise((3, 4), gens), gens)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    assert [s for s, _ in calls] == [0, 1, 2, 3]
    torch.testing.assert_close(calls[1][1], torch.full((2,), 0.9))


def test_same_generators_same_sample_and_worlds_do_not_share_noise():
    def denoise(x_t, t, s):
        return x_t * 0.5

    sampler = FlowSampler(SamplerConfig(num_steps=3))

    def run(seeds):
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        return sampler.sample(denoise, draw_noise((5,), gens), gens)

    a, b = run([1, 2]), run([1, 2])
    assert torch.equal(a, b)
    c = run([1, 3])
    assert torch.equal(a[0], c[0]), "world 0 must not depend on world 1's seed"
    assert not torch.equal(a[1], c[1])


def test_add_noise_interpolates():
    x0, noise = torch.zeros(2, 3), torch.ones(2, 3)
    out = add_noise(x0, noise, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[0.25] * 3, [1.0] * 3]))


def test_bad_config_and_generator_count():
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="shift"):
        SamplerConfig(shift=0.0)
    sampler = FlowSampler(SamplerConfig())
    with pytest.raises(ValueError, match="one generator per world"):
        sampler.sample(lambda x, t, s: x, torch.zeros(2, 3), [torch.Generator()])
