"""What a cache executor did: reuse counts per block, step, chunk and world, gate metrics, time.

Two skip rates are kept:

* ``skip_rate``: reused / evaluated over the cells a policy may reuse, i.e. denoising passes
  after warmup, anchors left out;
* ``skip_rate_all``: reused / every block evaluation of every pass, anchors, warmup chunks and
  the KV-update passes included (the share of DiT block work actually saved).

``pass_agreement`` says how often one decision per pass would have done: the share of
(world, denoising pass) pairs whose decisions at every gated block were the same (all reused
or all computed).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

_HISTORY = 50_000


class CacheStats:
    """Counters of one executor; ``reset()`` starts them over."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.eligible: dict[tuple[int, int], int] = {}
        self.reused: dict[tuple[int, int], int] = {}
        self.all_evals = 0
        self.all_reused = 0
        self.world_eligible = np.zeros(0, dtype=np.int64)
        self.world_reused = np.zeros(0, dtype=np.int64)
        # The latest chunks only, so that stats stay bounded over a long RL run.
        self.chunks: deque[dict[str, int]] = deque(maxlen=_HISTORY)
        self.chunks_begun = 0
        self.chunk_world_reused = np.zeros(0, dtype=np.int64)
        self.cos: deque[float] = deque(maxlen=_HISTORY)
        self.dev: deque[float] = deque(maxlen=_HISTORY)
        self.rel: deque[float] = deque(maxlen=_HISTORY)
        self.err: deque[float] = deque(maxlen=_HISTORY)
        self.drift: deque[float] = deque(maxlen=_HISTORY)
        self.gate_seconds = 0.0
        self.gated_passes = 0
        self.mixed_passes = 0
        self._pass_key: tuple[int, int] | None = None
        self._pass_first = np.zeros(0, dtype=np.int8)  # -1: no decision yet, else 0/1
        self._pass_mixed = np.zeros(0, dtype=bool)

    def begin_chunk(self, batch_size: int, num_blocks: int) -> None:
        """Opens the record of a new chunk; its KV-update pass computes every block in full."""
        if len(self.world_eligible) < batch_size:
            grow = batch_size - len(self.world_eligible)
            self.world_eligible = np.concatenate([self.world_eligible, np.zeros(grow, np.int64)])
            self.world_reused = np.concatenate([self.world_reused, np.zeros(grow, np.int64)])
        self.chunk_world_reused = np.zeros(batch_size, dtype=np.int64)
        self.chunks_begun += 1
        kv_evals = batch_size * num_blocks
        self.all_evals += kv_evals
        self.chunks.append({"eligible": 0, "reused": 0, "evaluations": kv_evals})

    def forced(self, worlds: int) -> None:
        """Block evaluations that no policy may skip (anchors, protected steps)."""
        self.all_evals += worlds
        if self.chunks:
            self.chunks[-1]["evaluations"] += worlds

    def decided(
        self, s: int, l: int, eligible: np.ndarray | torch.Tensor,  # noqa: E741
        reuse: np.ndarray | torch.Tensor, cos: np.ndarray | None = None,
        dev: np.ndarray | None = None, rel: np.ndarray | None = None,
        err: np.ndarray | None = None, drift: np.ndarray | None = None, blocks: int = 1,
    ) -> None:
        """One decision for a batch at step ``s``, covering ``blocks`` consecutive blocks from
        ``l`` (a span decided once counts as that many block evaluations, each under its own
        block): ``eligible`` and ``reuse`` are (b,) bool masks (host arrays or CPU tensors);
        ``cos``, ``dev``, ``rel``, ``err`` (the predicted error) and ``drift`` (the drift a
        reuse would carry) the gate's metrics, recorded once.

        Worlds not eligible (warmup, nothing stored) are computed and count only in
        ``skip_rate_all``.
        """
        eligible, reuse = np.asarray(eligible), np.asarray(reuse)
        b = reuse.size
        n_eligible, n_reused = int(eligible.sum()), int(reuse.sum())
        for block in range(l, l + blocks):
            key = (s, block)
            self.eligible[key] = self.eligible.get(key, 0) + n_eligible
            self.reused[key] = self.reused.get(key, 0) + n_reused
        self.all_evals += b * blocks
        self.all_reused += n_reused * blocks
        self.world_eligible[:b] += eligible * blocks
        self.world_reused[:b] += reuse * blocks
        if len(self.chunk_world_reused) >= b:
            self.chunk_world_reused[:b] += reuse * blocks
        if self.chunks:
            row = self.chunks[-1]
            row["eligible"] += n_eligible * blocks
            row["reused"] += n_reused * blocks
            row["evaluations"] += b * blocks
        self._track_pass(s, eligible, reuse)
        if n_eligible:
            for values, metric in ((self.cos, cos), (self.dev, dev), (self.rel, rel),
                                   (self.err, err), (self.drift, drift)):
                if metric is not None:
                    picked = np.asarray(metric)[eligible]
                    values.extend(picked[np.isfinite(picked)].tolist())

    def _track_pass(self, s: int, eligible: np.ndarray, reuse: np.ndarray) -> None:
        """Follows whether each world's decisions in the current pass all agree."""
        key = (self.chunks_begun, s)
        if key != self._pass_key:
            self.gated_passes, self.mixed_passes = self.passes()
            self._pass_key = key
            self._pass_first = np.full(reuse.size, -1, dtype=np.int8)
            self._pass_mixed = np.zeros(reuse.size, dtype=bool)
        first = self._pass_first
        seen = first >= 0
        self._pass_mixed |= eligible & seen & (first != reuse)
        new = eligible & ~seen
        first[new] = reuse[new]

    def passes(self) -> tuple[int, int]:
        """(gated, mixed) passes so far, the open one included."""
        return (self.gated_passes + int((self._pass_first >= 0).sum()),
                self.mixed_passes + int(self._pass_mixed.sum()))

    def last_chunk(self) -> dict[str, int]:
        """Counts of the latest chunk (what a step's ``info`` reports)."""
        return dict(self.chunks[-1]) if self.chunks else {"eligible": 0, "reused": 0,
                                                           "evaluations": 0}

    def last_chunk_per_world(self, batch_size: int) -> list[int]:
        """Reused block evaluations of each world in the latest chunk."""
        counts = self.chunk_world_reused[:batch_size].tolist()
        return counts + [0] * (batch_size - len(counts))

    def counts(self) -> tuple[int, int]:
        """Eligible and reused block evaluations so far; ``skip_rate_between`` two of them
        gives the skip rate of the evaluations in between (one rollout, one measurement)."""
        return sum(self.eligible.values()), sum(self.reused.values())

    def summary(self) -> dict:
        """Skip rates per block, step, chunk (the latest ones) and world, and gate-metric
        percentiles (over the latest decisions)."""
        eligible, reused = self.counts()
        blocks = sorted({blk for _, blk in self.eligible})
        steps = sorted({s for s, _ in self.eligible})

        def rate(keys) -> float:
            e = sum(self.eligible[k] for k in keys)
            return sum(self.reused[k] for k in keys) / e if e else 0.0

        gated, mixed = self.passes()
        return {
            "skip_rate": reused / eligible if eligible else 0.0,
            "skip_rate_all": self.all_reused / self.all_evals if self.all_evals else 0.0,
            "eligible_evaluations": eligible,
            "reused_evaluations": reused,
            "all_evaluations": self.all_evals,
            "per_block": {blk: rate([k for k in self.eligible if k[1] == blk]) for blk in blocks},
            "per_step": {s: rate([k for k in self.eligible if k[0] == s]) for s in steps},
            "per_chunk": [c["reused"] / c["eligible"] if c["eligible"] else 0.0
                          for c in self.chunks],
            "per_world": [float(r / e) if e else 0.0
                          for r, e in zip(self.world_reused, self.world_eligible)],
            "cos_percentiles": _percentiles(self.cos),
            "dev_percentiles": _percentiles(self.dev),
            "rel_percentiles": _percentiles(self.rel),
            "error_percentiles": _percentiles(self.err),
            "drift_percentiles": _percentiles(self.drift),
            "gate_seconds": self.gate_seconds,
            "gated_passes": gated,
            "pass_agreement": 1.0 - mixed / gated if gated else 1.0,
        }


def skip_rate_between(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Skip rate of the evaluations between two ``CacheStats.counts()``; None if none were
    eligible."""
    eligible = after[0] - before[0]
    return (after[1] - before[1]) / eligible if eligible else None


def _percentiles(values) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95)}
