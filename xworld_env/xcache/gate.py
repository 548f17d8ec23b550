"""The two metrics of the X-Cache gate and its adaptive threshold (XCACHE.md, "Gate").

Pure functions over ``Fingerprint`` pairs; the per-cell state lives in ``store.py``.
"""

from __future__ import annotations

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


def update_ema(ema: torch.Tensor, value: torch.Tensor, alpha: float, fresh: torch.Tensor):
    """``alpha * value + (1 - alpha) * ema``; worlds flagged ``fresh`` start at ``value``."""
    return torch.where(fresh, value, alpha * value + (1.0 - alpha) * ema)


def cosine_threshold(ema: torch.Tensor, margin: float, floor: float) -> torch.Tensor:
    """Adaptive threshold ``max(floor, ema - margin)``."""
    return torch.clamp(ema - margin, min=floor)


def reuse_decision(
    cos: torch.Tensor, dev: torch.Tensor, tau_cos: torch.Tensor, tau_dev: float
) -> torch.Tensor:
    """Reuse only where both metrics agree: ``cos >= tau_cos`` and ``dev < tau_dev``."""
    return (cos >= tau_cos) & (dev < tau_dev)
