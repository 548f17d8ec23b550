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
from functools import cached_property, lru_cache

import torch

#: Default token budget of the structure-aware sample.
DEFAULT_BUDGET = 32


@dataclass(frozen=True)
class Fingerprint:
    """Fingerprint entries of a batch of worlds.

    The tensors are read, never changed in place, once a fingerprint exists: the packed views
    and per-fingerprint reductions the gate uses (``packed``) are computed once and cached.

    Attributes:
        samples: per view group, (b, k, d) sampled tokens.
        means: per view group, (b, d) mean token.
        action: (b, a) action conditioning vector.
    """

    samples: tuple[torch.Tensor, ...]
    means: tuple[torch.Tensor, ...]
    action: torch.Tensor

    @cached_property
    def packed(self) -> PackedFingerprint:
        """The entries packed for the batched gate (see ``PackedFingerprint``)."""
        numels = tuple(t[0].numel() for t in self.samples)
        row = math.gcd(*numels)
        rows_per_group = tuple(n // row for n in numels)
        b = self.action.shape[0]
        rows = torch.cat([t.reshape(b, r, row) for t, r in zip(self.samples, rows_per_group)],
                         dim=1)
        means = torch.stack(self.means, dim=1)
        return PackedFingerprint(
            rows=rows,
            rows_per_group=rows_per_group,
            numels=numels,
            row_sq=torch.einsum("brn,brn->br", rows, rows),
            row_l1=rows.abs().sum(dim=-1),
            means=means,
            entry_sq=torch.cat([(means * means).sum(-1),
                                (self.action * self.action).sum(-1, keepdim=True)], dim=1),
        )

    def select(self, worlds: torch.Tensor) -> Fingerprint:
        """The fingerprint of a subset of worlds (index tensor along b)."""
        return Fingerprint(
            tuple(s[worlds] for s in self.samples),
            tuple(m[worlds] for m in self.means),
            self.action[worlds],
        )


@dataclass(frozen=True)
class PackedFingerprint:
    """A fingerprint laid out for the batched gate (``gate.gate_metrics``).

    Attributes:
        rows: (b, R, n) every group's sample cut into equal-length rows (one per camera when
            the groups' lengths allow), groups one after another.
        rows_per_group: how many of the R rows each group owns.
        numels: elements of each group's sample, per world.
        row_sq: (b, R) squared L2 norm of every row.
        row_l1: (b, R) L1 norm of every row.
        means: (b, G, d) the group means.
        entry_sq: (b, G + 1) squared L2 norms of the group means and of the action.
    """

    rows: torch.Tensor
    rows_per_group: tuple[int, ...]
    numels: tuple[int, ...]
    row_sq: torch.Tensor
    row_l1: torch.Tensor
    means: torch.Tensor
    entry_sq: torch.Tensor


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


@lru_cache(maxsize=64)
def sample_index(f: int, h: int, w: int, budget: int, device: torch.device) -> torch.Tensor:
    """Flat indices into an (f, h, w) grid of the structure-aware sample (f-, h-, then
    w-major), computed once per grid, budget and device."""
    kf, kh, kw = axis_counts((f, h, w), budget)
    fi, hi, wi = (uniform_indices(n, k) for n, k in ((f, kf), (h, kh), (w, kw)))
    flat = (fi[:, None, None] * h + hi[None, :, None]) * w + wi[None, None, :]
    return flat.flatten().to(device)


def structure_sample(x: torch.Tensor, budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """Samples the tokens of one view group on a Cartesian grid of uniform indices.

    Args:
        x: (b, v, f, h, w, d) tokens of the cameras of one group.

    Returns:
        (b, v * kf * kh * kw, d).
    """
    b, v, f, h, w, d = x.shape
    index = sample_index(f, h, w, budget, x.device)
    return x.reshape(b, v, f * h * w, d).index_select(2, index).reshape(b, -1, d)


def fingerprint(
    x: torch.Tensor,
    groups: Sequence[Sequence[int]],
    action: torch.Tensor,
    budget: int = DEFAULT_BUDGET,
) -> Fingerprint:
    """Fingerprint of a block input.

    Every camera of the DiT shares one (f, h, w) grid, so the sample and the per-camera means
    are taken once for all cameras and then split into view groups (a group's mean is the mean
    of its cameras' means: every camera has as many tokens).

    Args:
        x: (b, v, f, h, w, d) block input tokens.
        groups: camera indices (along v) of each view group.
        action: (b, a) the chunk's action conditioning vector.
        budget: token budget K of each group's sample.
    """
    b, v, f, h, w, d = x.shape
    tokens = x.reshape(b, v, f * h * w, d)
    sampled = tokens.index_select(2, sample_index(f, h, w, budget, x.device)).float()
    camera_means = tokens.float().mean(dim=2)
    samples, means = [], []
    for cams in groups:
        if len(cams) == 1:
            samples.append(sampled[:, cams[0]])
            means.append(camera_means[:, cams[0]])
        else:
            index = torch.as_tensor(cams, device=x.device)
            samples.append(sampled.index_select(1, index).reshape(b, -1, d))
            means.append(camera_means.index_select(1, index).mean(dim=1))
    return Fingerprint(tuple(samples), tuple(means), action.float())
