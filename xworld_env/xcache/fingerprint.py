"""The fingerprint of a DiT block input (XCACHE.md, "Fingerprint").

A fingerprint is what X-Cache compares between consecutive chunks to decide whether a block's
residual can be reused. It has three kinds of entries:

1. per view group, a structure-aware sample of tokens: a budget of K tokens spread over the
   group's (f, h, w) grid in proportion to its shape, on uniformly spaced indices per axis, with
   all channels (the whole grid when it has at most K tokens);
2. per view group, the mean of all its tokens, which catches bulk drift the sample misses;
3. the chunk's action conditioning vector, since actions only enter inside the blocks.

All functions here are pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Default token budget of the structure-aware sample.
DEFAULT_BUDGET = 32


@dataclass(frozen=True)
class Fingerprint:
    """Fingerprint entries of a batch of worlds.

    Attributes:
        samples: per view group, (b, k, d) sampled tokens.
        means: per view group, (b, d) mean token.
        action: (b, a) action conditioning vector.
    """

    samples: tuple[torch.Tensor, ...]
    means: tuple[torch.Tensor, ...]
    action: torch.Tensor

    def select(self, worlds: torch.Tensor) -> Fingerprint:
        """The fingerprint of a subset of worlds (index tensor along b)."""
        return Fingerprint(
            tuple(s[worlds] for s in self.samples),
            tuple(m[worlds] for m in self.means),
            self.action[worlds],
        )


def axis_counts(shape: Sequence[int], budget: int = DEFAULT_BUDGET) -> tuple[int, ...]:
    """How many indices to sample on each axis of a grid, about ``budget`` in all.

    The budget is split in proportion to the grid's shape: every axis keeps the same fraction
    of its length (at least one index, at most all of them), the largest fraction that fits.
    A grid of at most ``budget`` tokens is kept whole.
    """
    if budget < 1:
        raise ValueError(f"fingerprint budget must be >= 1, got {budget}")
    if math.prod(shape) <= budget:
        return tuple(shape)
    # The largest common fraction of every axis that stays within the budget (axes that
    # cannot shrink below one index keep one).
    best = [1] * len(shape)
    for step in range(1, 257):
        frac = step / 256
        counts = [max(1, min(n, int(n * frac))) for n in shape]
        if math.prod(counts) > budget:
            break
        best = counts
    counts = best
    # Spend what flooring left over on the axis with the most room, within the budget.
    for i in sorted(range(len(shape)), key=lambda j: counts[j] / shape[j]):
        while counts[i] < shape[i] and math.prod(counts) // counts[i] * (counts[i] + 1) <= budget:
            counts[i] += 1
    return tuple(counts)


def uniform_indices(n: int, k: int) -> torch.Tensor:
    """``k`` uniformly spaced indices in ``range(n)``, centred in their strata."""
    if k >= n:
        return torch.arange(n)
    return ((torch.arange(k) + 0.5) * n / k).long().clamp(max=n - 1)


def structure_sample(x: torch.Tensor, budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """Samples the tokens of one view group on a Cartesian grid of uniform indices.

    Args:
        x: (b, v, f, h, w, d) tokens of the cameras of one group.

    Returns:
        (b, v * kf * kh * kw, d).
    """
    b, v, f, h, w, d = x.shape
    kf, kh, kw = axis_counts((f, h, w), budget)
    out = x.index_select(2, uniform_indices(f, kf).to(x.device))
    out = out.index_select(3, uniform_indices(h, kh).to(x.device))
    out = out.index_select(4, uniform_indices(w, kw).to(x.device))
    return out.reshape(b, -1, d)


def fingerprint(
    x: torch.Tensor,
    groups: Sequence[Sequence[int]],
    action: torch.Tensor,
    budget: int = DEFAULT_BUDGET,
) -> Fingerprint:
    """Fingerprint of a block input.

    Args:
        x: (b, v, f, h, w, d) block input tokens.
        groups: camera indices (along v) of each view group.
        action: (b, a) the chunk's action conditioning vector.
        budget: token budget K of each group's sample.
    """
    samples, means = [], []
    for cams in groups:
        xg = x[:, list(cams)]
        samples.append(structure_sample(xg, budget).float())
        means.append(xg.float().mean(dim=(1, 2, 3, 4)))
    return Fingerprint(tuple(samples), tuple(means), action.float())
