"""The metrics of the X-Cache gate and its adaptive threshold (XCACHE.md, "Gate").

Cosine and maximum deviation are the published gate; the relative change is ours (a third
metric that must also pass; off when its threshold is infinite).

Pure functions over ``Fingerprint`` pairs; the per-cell state lives in ``store.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from xworld_env.xcache.fingerprint import Fingerprint

#: Below this norm, both vectors of an entry count as zero: two zero vectors are equal.
ZERO_NORM = 1e-8
_EPS = 1e-6


def entry_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per world of two (b, ...) entries, flattened.

    Where both are (near) zero the entry is unchanged and counts as 1; where only one is, 0.
    """
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(ZERO_NORM**2)
    both_zero = (na < ZERO_NORM) & (nb < ZERO_NORM)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def min_cosine(now: Fingerprint, prev: Fingerprint) -> torch.Tensor:
    """Minimum over every entry (group samples, group means, action) of the cosine, (b,)."""
    entries = [
        *(entry_cosine(a, b) for a, b in zip(now.samples, prev.samples)),
        *(entry_cosine(a, b) for a, b in zip(now.means, prev.means)),
        entry_cosine(now.action, prev.action),
    ]
    return torch.stack(entries).min(dim=0).values


def max_deviation(now: Fingerprint, prev: Fingerprint) -> torch.Tensor:
    """Maximum over view groups of ``max|now - prev| / (mean|prev| + eps)`` on the samples, (b,)."""
    devs = []
    for a, b in zip(now.samples, prev.samples):
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        devs.append((a - b).abs().amax(dim=1) / (b.abs().mean(dim=1) + _EPS))
    return torch.stack(devs).max(dim=0).values


def relative_change(now: Fingerprint, prev: Fingerprint) -> torch.Tensor:
    """Maximum over view groups of ``mean|now - prev| / (mean|prev| + eps)`` on the samples, (b,).

    The relative L1 change of the sampled tokens. Unlike the cosine, it is not saturated by
    the large static part of a block input (positions, conditioning), and it tracks how far
    reusing the stored residual would be off (see README, "X-Cache gate").
    """
    changes = []
    for a, b in zip(now.samples, prev.samples):
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        changes.append((a - b).abs().mean(dim=1) / (b.abs().mean(dim=1) + _EPS))
    return torch.stack(changes).max(dim=0).values


def _cosine(dot: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Cosine from a dot product and squared norms, with ``entry_cosine``'s zero rules."""
    na, nb = np.sqrt(a2), np.sqrt(b2)
    cos = dot / np.maximum(na * nb, ZERO_NORM**2)
    return np.where((na < ZERO_NORM) & (nb < ZERO_NORM), np.float32(1.0), cos)


def gate_metrics(
    now: Fingerprint, prev: Fingerprint
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(min_cosine, max_deviation, relative_change)`` of two fingerprints at once, (b,) each.

    The same values as the three functions above at a fraction of their cost (the gate runs
    once per block and denoising step, so its cost is paid on every skip): three reductions
    over the packed sample rows (``Fingerprint.packed``, computed once per fingerprint and kept
    with a stored one) on the fingerprints' device, then small host arithmetic per group.
    Returned on the CPU.
    """
    p_now, p_prev = now.packed, prev.packed
    abs_diff = torch.sub(p_now.rows, p_prev.rows).abs_()
    per_row = torch.stack(
        [torch.linalg.vecdot(p_now.rows, p_prev.rows), abs_diff.sum(dim=-1),
         abs_diff.amax(dim=-1)], dim=1,
    ).to("cpu", torch.float32).numpy()
    # Rows to groups (each group owns consecutive rows); no BLAS call, whose idle threads
    # would compete with torch's for the cores.
    starts = p_now.starts
    dot, l1_diff = np.add.reduceat(per_row[:, :2], starts, axis=-1).swapaxes(0, 1)
    peak = np.maximum.reduceat(per_row[:, 2], starts, axis=-1)
    entry_dot = np.concatenate([(p_now.means * p_prev.means).sum(-1),
                                (p_now.action * p_prev.action).sum(-1, keepdims=True)], axis=1)
    cos = np.concatenate([_cosine(dot, p_now.sq, p_prev.sq),
                          _cosine(entry_dot, p_now.entry_sq, p_prev.entry_sq)], axis=1).min(1)
    mean_prev = p_prev.l1 / p_prev.numels + np.float32(_EPS)
    dev = (peak / mean_prev).max(axis=1)
    rel = (l1_diff / p_now.numels / mean_prev).max(axis=1)
    return tuple(torch.from_numpy(np.asarray(m, dtype=np.float32)) for m in (cos, dev, rel))


def update_ema(ema: torch.Tensor, value: torch.Tensor, alpha: float, fresh: torch.Tensor):
    """``alpha * value + (1 - alpha) * ema``; worlds flagged ``fresh`` start at ``value``."""
    return torch.where(fresh, value, alpha * value + (1.0 - alpha) * ema)


def cosine_threshold(ema: torch.Tensor, margin: float, floor: float) -> torch.Tensor:
    """Adaptive threshold ``max(floor, ema - margin)``."""
    return torch.clamp(ema - margin, min=floor)


def reuse_decision(
    cos: torch.Tensor, dev: torch.Tensor, tau_cos: torch.Tensor, tau_dev: float,
    rel: torch.Tensor | None = None, tau_rel: float = float("inf"),
) -> torch.Tensor:
    """Reuse only where every metric agrees: ``cos >= tau_cos``, ``dev < tau_dev`` and, when
    given, ``rel < tau_rel``."""
    reuse = (cos >= tau_cos) & (dev < tau_dev)
    if rel is not None:
        reuse &= rel < tau_rel
    return reuse
