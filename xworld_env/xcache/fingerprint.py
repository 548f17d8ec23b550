"""The fingerprint of a DiT block input, as X-Cache (arXiv 2604.20289) defines it.

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
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
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
        layout: the packing, when whoever built the fingerprint had it at hand (``fingerprint``
            does); computed from the entries on first use otherwise.
    """

    samples: tuple[torch.Tensor, ...]
    means: tuple[torch.Tensor, ...]
    action: torch.Tensor
    layout: PackedFingerprint | None = field(default=None, compare=False, repr=False)

    @cached_property
    def packed(self) -> PackedFingerprint:
        """The entries packed for the batched gate (see ``PackedFingerprint``)."""
        if self.layout is not None:
            return self.layout
        numels = [t[0].numel() for t in self.samples]
        row = math.gcd(*numels)
        rows_per_group = tuple(n // row for n in numels)
        b = self.action.shape[0]
        rows = np.concatenate(
            [_numpy(t).reshape(b, r, row) for t, r in zip(self.samples, rows_per_group)], axis=1
        )
        means = np.stack([_numpy(m) for m in self.means], axis=1)
        return _pack(rows, _starts(rows_per_group), numels, means, _numpy(self.action))

    def extrapolate(self, previous: Fingerprint, ahead: np.ndarray) -> Fingerprint:
        """``self + ahead * (self - previous)`` per world on the samples and group means (the
        action entry stays ``self``'s); ``ahead`` is (b,) float32.

        Computed on the packed host layout the gate reads; the entries are views of it."""
        p, q = self.packed, previous.packed
        k3 = np.asarray(ahead, dtype=np.float32).reshape(-1, 1, 1)
        rows = p.rows + k3 * (p.rows - q.rows)
        means = p.means + k3 * (p.means - q.means)
        b = rows.shape[0]
        ends = (*p.starts[1:], rows.shape[1])
        samples = tuple(
            torch.from_numpy(np.ascontiguousarray(rows[:, i:j]).reshape(b, *t.shape[1:]))
            for i, j, t in zip(p.starts, ends, self.samples)
        )
        return Fingerprint(
            samples,
            tuple(torch.from_numpy(means[:, g]) for g in range(means.shape[1])),
            self.action,
            _pack(rows, p.starts, p.numels, means, p.action),
        )

    def select(self, worlds: torch.Tensor) -> Fingerprint:
        """The fingerprint of a subset of worlds (index tensor along b)."""
        worlds = worlds.to(self.action.device)
        return Fingerprint(
            tuple(s[worlds] for s in self.samples),
            tuple(m[worlds] for m in self.means),
            self.action[worlds],
        )


@dataclass(frozen=True)
class PackedFingerprint:
    """A fingerprint laid out for the batched gate (``gate.gate_metrics``), on the host.

    The gate runs once per span of blocks and denoising step, on small arrays: host (numpy)
    arithmetic costs microseconds per operation where a tensor dispatch (and, on the CPU, waking
    the intra-op threads) costs tens, and no BLAS call is made, whose idle threads would
    compete with torch's for the cores.

    Attributes:
        rows: (b, R, n) every group's sample cut into equal-length rows (one per camera when
            the groups' lengths allow), groups one after another.
        starts: (G,) index of each group's first row (groups own consecutive rows).
        numels: (G,) elements of each group's sample, per world.
        sq: (b, G) squared L2 norm of each group's sample.
        means: (b, G, d) the group means.
        action: (b, a) the action entry.
        entry_sq: (b, G + 1) squared L2 norms of the group means and of the action.
    """

    rows: np.ndarray
    starts: np.ndarray
    numels: np.ndarray
    sq: np.ndarray
    means: np.ndarray
    action: np.ndarray
    entry_sq: np.ndarray

    @cached_property
    def l1(self) -> np.ndarray:
        """(b, G) L1 norm of each group's sample; computed on first use (the gate reads it
        only from the fingerprint it compares against)."""
        return np.add.reduceat(np.abs(self.rows).sum(axis=-1), self.starts, axis=-1)


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A float32 host copy (or view, for a float32 CPU tensor) of a tensor."""
    return x.detach().to("cpu", torch.float32).numpy()


@lru_cache(maxsize=64)
def _starts(rows_per_group: tuple[int, ...]) -> np.ndarray:
    """Index of each group's first row when groups own consecutive rows."""
    starts = np.cumsum((0, *rows_per_group[:-1]))
    starts.flags.writeable = False
    return starts


def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., R) dot products of the last axes of two (..., R, n) arrays (no BLAS call)."""
    return np.einsum("...n,...n->...", a, b)


def _pack(
    rows: np.ndarray, starts: np.ndarray, numels: Sequence[int], means: np.ndarray,
    action: np.ndarray,
) -> PackedFingerprint:
    """Packs (b, R, n) sample rows, (b, G, d) group means and the (b, a) action (see above)."""
    sq = np.add.reduceat(row_dot(rows, rows), starts, axis=-1)
    return PackedFingerprint(
        rows=rows,
        starts=starts,
        numels=np.asarray(numels, dtype=np.float32),
        sq=sq,
        means=means,
        action=action,
        entry_sq=np.concatenate([row_dot(means, means), row_dot(action, action)[:, None]],
                                axis=1),
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
    of its cameras' means: every camera has as many tokens). The entries are float32 tensors on
    the host (the gate's arithmetic runs there).

    Args:
        x: (b, v, f, h, w, d) block input tokens.
        groups: camera indices (along v) of each view group.
        action: (b, a) the chunk's action conditioning vector.
        budget: token budget K of each group's sample.
    """
    b, v, f, h, w, d = x.shape
    tokens = x.reshape(b, v, f * h * w, d)
    index = sample_index(f, h, w, budget, x.device)
    if len(index) == f * h * w:
        # A grid within the budget is kept whole: the sample is the tokens themselves.
        sampled = _numpy(tokens)
        camera_means = sampled.mean(axis=2)
    else:
        sampled = _numpy(tokens.index_select(2, index))
        camera_means = _numpy(tokens.mean(dim=2, dtype=torch.float32))
    action_host = _numpy(action)
    spans = _consecutive_spans(tuple(tuple(g) for g in groups))
    if spans is not None and spans[-1][1] == v:
        # Groups of consecutive cameras covering all of them in order (the usual case): the
        # per-camera samples already are the packed rows.
        rows = sampled.reshape(b, v, -1)
        cameras = tuple(j - i for i, j in spans)
        starts = _starts(cameras)
        means = np.add.reduceat(camera_means, starts, axis=1) / np.float32(cameras)[:, None]
        samples = tuple(torch.from_numpy(sampled[:, i:j].reshape(b, -1, d)) for i, j in spans)
        numels = [n * rows.shape[-1] for n in cameras]
        return Fingerprint(samples, tuple(torch.from_numpy(means[:, g]) for g in range(len(spans))),
                           torch.from_numpy(action_host),
                           _pack(rows, starts, numels, means, action_host))
    samples, means = [], []
    for cams in groups:
        samples.append(torch.from_numpy(sampled[:, list(cams)].reshape(b, -1, d)))
        means.append(torch.from_numpy(camera_means[:, list(cams)].mean(axis=1)))
    return Fingerprint(tuple(samples), tuple(means), torch.from_numpy(action_host))


@lru_cache(maxsize=32)
def _consecutive_spans(groups: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, int], ...] | None:
    """``(first, end)`` camera span of each group when the groups are runs of consecutive
    cameras one after another from camera 0; None otherwise."""
    spans, end = [], 0
    for cams in groups:
        if not cams or list(cams) != list(range(end, end + len(cams))):
            return None
        spans.append((end, end + len(cams)))
        end += len(cams)
    return tuple(spans)
