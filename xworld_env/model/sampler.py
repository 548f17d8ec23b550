"""Few-step rectified-flow sampler.

Rectified flow (Liu et al. 2022) interpolates ``x_t = (1 - t) x0 + t noise`` and the model predicts
the velocity ``v = noise - x0``, so ``x0 = x_t - t v``. Few-step sampling as in distilled
autoregressive video models (CausVid, Self Forcing): at every step predict the clean chunk, then
re-noise it with fresh noise to the next, lower noise level. The schedule is shifted towards high
noise (Esser et al. 2024, SD3 §5.3.2), where the coarse layout of the chunk is decided.

All randomness is drawn from per-world ``torch.Generator`` objects, so a world's rollout depends
only on its own seed, never on the other worlds of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``denoise(x_t, t, s) -> velocity``: one model evaluation at flow time t (b,) and step index s.
Denoiser = Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of :class:`FlowSampler`.

    Attributes:
        num_steps: denoising steps ``S`` per chunk.
        shift: schedule shift; 1.0 is the uniform schedule, larger spends more steps at high noise.
    """

    num_steps: int = 4
    shift: float = 3.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"SamplerConfig.num_steps must be >= 1, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError(f"SamplerConfig.shift must be > 0, got {self.shift}")


def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x0 + t noise`` with t (b,) broadcast over the other axes of x0 (b, ...)."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Shifted flow time ``shift t / (1 + (shift - 1) t)``; keeps 0 and 1 fixed."""
    return shift * t / (1 + (shift - 1) * t)


def draw_noise(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise (b, *shape), world ``i`` drawn from ``generators[i]`` only."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators]
    )


class FlowSampler:
    """Few-step rectified-flow sampler with re-noising between steps.

    Args:
        config: number of steps and schedule shift.
    """

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config

    @property
    def num_steps(self) -> int:
        """Denoising steps ``S`` per chunk."""
        return self.config.num_steps

    def timesteps(self) -> Tensor:
        """(S + 1,) flow times from 1 (noise) down to 0 (clean), shifted."""
        base = torch.linspace(1.0, 0.0, self.config.num_steps + 1, dtype=torch.float64)
        return shift_time(base, self.config.shift).float()

    def sample(
        self,
        denoise: Denoiser,
        noise: Tensor,
        generators: Sequence[torch.Generator],
        renoise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Generates clean latents from noise in ``S`` model evaluations.

        Args:
            denoise: the model, called once per step with ``(x_t, t, s)``.
            noise: (b, ...) starting noise at t = 1.
            generators: one per world, for the re-noising between steps.
            renoise: optional noise for each re-noising (``S - 1`` tensors shaped like
                ``noise``) instead of fresh draws from ``generators``.

        Returns:
            (b, ...) the predicted clean latents of the last step.
        """
        if len(generators) != noise.shape[0]:
            raise ValueError(
                f"need one generator per world: {noise.shape[0]}, got {len(generators)}"
            )
        times = self.timesteps().tolist()
        b = noise.shape[0]
        x = noise
        for s in range(self.config.num_steps):
            t = noise.new_full((b,), times[s])
            x0 = x - times[s] * denoise(x, t, s)
            t_next = times[s + 1]
            if t_next > 0:
                if renoise is not None:
                    fresh = renoise[s]
                else:
                    fresh = draw_noise(noise.shape[1:], generators, noise.device, noise.dtype)
                x = add_noise(x0, fresh, noise.new_full((b,), t_next))
        return x0
