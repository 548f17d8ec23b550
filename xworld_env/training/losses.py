"""Training objectives of the world model and its heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xworld_env.model.sampler import add_noise, shift_time


def sample_flow_times(
    n: int, inference_times: torch.Tensor, shift: float, discrete_fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Flow times for training: a mix of the sampler's own times and shifted uniform ones.

    Few-step sampling only ever evaluates the model at ``inference_times``; drawing part of the
    batch there concentrates capacity where it is used, the rest keeps the field smooth.
    """
    uniform = shift_time(torch.rand(n, generator=generator), shift)
    pick = inference_times[torch.randint(len(inference_times), (n,), generator=generator)]
    use_discrete = torch.rand(n, generator=generator) < discrete_fraction
    return torch.where(use_discrete, pick, uniform)


def flow_matching_loss(
    model, clean: torch.Tensor, action: torch.Tensor, speed: torch.Tensor, t: torch.Tensor,
    window: int, generator: torch.Generator, context_noise: float = 0.0,
    context: torch.Tensor | None = None, noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced rectified-flow loss over every chunk of a sequence.

    Each chunk is noised to its own time and predicts the velocity ``noise - x0`` while
    attending to the clean chunks before it (at most ``window``), as in the cached rollout.

    Args:
        model: ``CausalDiT``.
        clean: (b, t, v, f, h, w, c) clean latents.
        action: (b, t, 2). speed: (b, t) ego speed before each chunk. t: (b, t) flow times.
        window: past chunks each chunk attends to.
        context_noise: std of noise added to the clean context, so that the model tolerates
            the small errors of its own generated past (exposure bias).
        context: optional (b, t, v, f, h, w, c) latents the chunks attend to instead of
            ``clean`` (such as the model's own rollout); the targets stay ``clean``.
        noise: optional (b, t, v, f, h, w, c) noise of the noised chunks; default: drawn from
            ``generator``.
    """
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    elif noise.shape != clean.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match clean {tuple(clean.shape)}")
    b, n = clean.shape[:2]
    noisy = add_noise(clean.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(clean)
    context = clean if context is None else context
    if context.shape != clean.shape:
        raise ValueError(f"context {tuple(context.shape)} must match clean {tuple(clean.shape)}")
    if context_noise > 0:
        context = context + context_noise * torch.randn(clean.shape, generator=generator).to(
            clean.device
        )
    pred = model.forward_sequence(context, action, speed, window=window, noisy=noisy, t=t)
    return F.mse_loss(pred, noise - clean)
