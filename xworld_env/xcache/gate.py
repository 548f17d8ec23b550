"""The metrics of the X-Cache gate and its adaptive threshold (XCACHE.md, "Gate").

Cosine and maximum deviation are the published gate; the relative change is ours (a third
metric that must also pass; off when its threshold is infinite).

Pure functions over ``Fingerprint`` pairs; the per-cell state lives in ``store.py``.
"""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=32)
def _group_matrix(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(rows, groups) one-hot matrix: group ``g`` owns ``sizes[g]`` consecutive rows."""
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.nn.functional.one_hot(ids, len(sizes)).float().to(device)


def _cosine(dot: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Cosine from a dot product and squared norms, with ``entry_cosine``'s zero rules."""
    na, nb = a2.sqrt(), b2.sqrt()
    cos = dot / (na * nb).clamp_min(ZERO_NORM**2)
    both_zero = (na < ZERO_NORM) & (nb < ZERO_NORM)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def gate_metrics(
    now: Fingerprint, prev: Fingerprint
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(min_cosine, max_deviation, relative_change)`` of two fingerprints at once, (b,) each.

    The same values as the three functions above, computed with a few batched operations (the
    gate runs once per block and denoising step, so its cost is paid on every skip): the
    fingerprints' packed rows (``Fingerprint.packed``, computed once per fingerprint and kept
    with a stored one) are reduced row by row, then rows are summed into groups with a one-hot
    matrix product.
    """
    p_now, p_prev = now.packed, prev.packed
    groups = _group_matrix(p_now.rows_per_group, p_now.rows.device)
    diff = p_now.rows - p_prev.rows
    abs_diff = diff.abs()
    per_row = torch.stack([
        torch.einsum("brn,brn->br", p_now.rows, p_prev.rows),
        p_now.row_sq, p_prev.row_sq, abs_diff.sum(dim=-1), p_prev.row_l1,
    ], dim=1)
    dot, now2, prev2, l1_diff, l1_prev = (per_row @ groups).unbind(1)
    entry_dot = torch.cat([(p_now.means * p_prev.means).sum(-1),
                           (now.action * prev.action).sum(-1, keepdim=True)], dim=1)
    cos = torch.cat([
        _cosine(dot, now2, prev2), _cosine(entry_dot, p_now.entry_sq, p_prev.entry_sq),
    ], dim=1).amin(dim=1)
    count = torch.tensor(p_now.numels, dtype=diff.dtype, device=diff.device)
    mean_prev = l1_prev / count + _EPS
    # Peaks are >= 0, so a group's maximum is the maximum of its rows' peaks masked by groups.
    peak = (abs_diff.amax(dim=-1)[:, :, None] * groups).amax(dim=1)
    dev = (peak / mean_prev).amax(dim=1)
    rel = (l1_diff / count / mean_prev).amax(dim=1)
    return cos, dev, rel


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
