"""The metrics of the X-Cache gate (arXiv 2604.20289) and its adaptive threshold.

Cosine and maximum deviation are the published gate; the relative change is ours (a third
metric that must also pass; off when its threshold is infinite), and so is the predicted error:
the relative change times a gain that each cell fits, per world, to the errors its own
computations showed (``fit_gain``, ``predicted_error``).

Pure functions: the reference metrics over ``Fingerprint`` tensors, the gate itself
(``gate_metrics``) and the threshold arithmetic over host (numpy) arrays, (b,) per cell; the
per-cell state lives in ``store.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from xworld_env.xcache.fingerprint import Fingerprint, row_dot

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
    reusing the stored residual would be off (see docs/performance.md, "X-Cache gate").
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(min_cosine, max_deviation, relative_change)`` of two fingerprints at once, (b,) each.

    The same values as the three functions above at a fraction of their cost (the gate runs
    once per span of blocks and denoising step, so its cost is paid on every skip): three reductions
    over the packed sample rows (``Fingerprint.packed``, computed once per fingerprint and kept
    with a stored one), then small arithmetic per group, all on host arrays. Returned as
    float32 numpy arrays.
    """
    p_now, p_prev = now.packed, prev.packed
    dot_rows = row_dot(p_now.rows, p_prev.rows)
    abs_diff = np.subtract(p_now.rows, p_prev.rows)
    np.abs(abs_diff, out=abs_diff)
    # Rows to groups (each group owns consecutive rows).
    starts = p_now.starts
    dot = np.add.reduceat(dot_rows, starts, axis=-1)
    l1_diff = np.add.reduceat(abs_diff.sum(axis=-1), starts, axis=-1)
    peak = np.maximum.reduceat(abs_diff.max(axis=-1), starts, axis=-1)
    entry_dot = np.concatenate([row_dot(p_now.means, p_prev.means),
                                row_dot(p_now.action, p_prev.action)[:, None]], axis=1)
    cos = np.concatenate([_cosine(dot, p_now.sq, p_prev.sq),
                          _cosine(entry_dot, p_now.entry_sq, p_prev.entry_sq)], axis=1).min(1)
    mean_prev = p_prev.l1 / p_prev.numels + np.float32(_EPS)
    dev = (peak / mean_prev).max(axis=1)
    rel = (l1_diff / p_now.numels / mean_prev).max(axis=1)
    return tuple(np.asarray(m, dtype=np.float32) for m in (cos, dev, rel))


def line_position(now: Fingerprint, last: Fingerprint, previous: Fingerprint) -> np.ndarray:
    """Where ``now`` lies along the line through ``previous`` and ``last``, per world, (b,).

    The least-squares ``a`` of ``now ~ last + a (last - previous)`` on the packed sample rows:
    0 at ``last``, -1 at ``previous``, 1 one interval past ``last``; 0 where the two points
    coincide (no line). Returned as float32.
    """
    p_now, p_last, p_prev = now.packed.rows, last.packed.rows, previous.packed.rows
    b = p_now.shape[0]
    step = np.subtract(p_last, p_prev).reshape(b, -1)
    moved = np.subtract(p_now, p_last).reshape(b, -1)
    along = row_dot(moved, step)
    norm = row_dot(step, step)
    position = np.divide(along, norm, out=np.zeros_like(along), where=norm > ZERO_NORM**2)
    return position.astype(np.float32)


def update_ema(ema: np.ndarray, value: np.ndarray, alpha: float, fresh: np.ndarray) -> np.ndarray:
    """``alpha * value + (1 - alpha) * ema``; worlds flagged ``fresh`` start at ``value``."""
    return np.where(fresh, value, alpha * value + (1.0 - alpha) * ema).astype(np.float32)


def cosine_threshold(ema: np.ndarray, margin: float, floor: float) -> np.ndarray:
    """Adaptive threshold ``max(floor, ema - margin)``."""
    return np.maximum(ema - np.float32(margin), np.float32(floor))


def fit_gain(
    num: np.ndarray, den: np.ndarray, rel: np.ndarray, err: np.ndarray, decay: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of a decaying least-squares fit through the origin of ``err ~ gain * rel``.

    ``num`` and ``den`` are the running sums of ``rel * err`` and ``rel ** 2``, each older
    term weighted ``decay`` times the next; ``gain = num / den``. Returns the new sums.
    """
    rel = rel.astype(np.float64)
    return decay * num + rel * err, decay * den + rel * rel


def predicted_error(num: np.ndarray, den: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """``gain * rel`` with the fitted gain ``num / den`` (``fit_gain``); infinite where
    nothing was fitted yet (``den == 0``), so that such a world cannot pass the gate."""
    fitted = den > 0
    gain = np.divide(num, den, out=np.zeros_like(num), where=fitted)
    return np.where(fitted, gain * rel, np.inf).astype(np.float32)


def reuse_decision(
    cos: np.ndarray, dev: np.ndarray, tau_cos: np.ndarray, tau_dev: float,
    rel: np.ndarray | None = None, tau_rel: float = float("inf"),
    err: np.ndarray | None = None, tau_err: float = float("inf"),
    drift: np.ndarray | None = None, tau_drift: float = float("inf"),
) -> np.ndarray:
    """Reuse only where every metric agrees: ``cos >= tau_cos``, ``dev < tau_dev`` and, when
    given, ``rel < tau_rel``, ``err < tau_err`` (the predicted error) and ``drift <
    tau_drift`` (the drift a reuse would carry)."""
    reuse = (cos >= tau_cos) & (dev < tau_dev)
    if rel is not None:
        reuse &= rel < tau_rel
    if err is not None:
        reuse &= err < tau_err
    if drift is not None:
        reuse &= drift < tau_drift
    return reuse
