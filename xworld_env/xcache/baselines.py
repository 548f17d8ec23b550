"""Baseline cache policies on the same executor seam, for side-by-side benchmarks.

* :class:`FirstBlockCache`: block 0 always computes; the relative L1 change of its output
  against the chunk in which the rest was last computed decides, per world, whether all other
  blocks reuse their combined residual (first-block-cache style, applied across chunks).
* :class:`StaticReuse`: every non-anchor block reuses its residual on ``k`` of every ``n``
  chunks, whatever the input.

Both share X-Cache's guardrails that are not about gating: KV-writing passes compute in full,
warmup chunks compute everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xworld_env.model.dit import BlockContext
from xworld_env.xcache.controller import ChunkCacheExecutor


@dataclass(frozen=True)
class FirstBlockCacheConfig:
    """Settings of :class:`FirstBlockCache`.

    Attributes:
        threshold: reuse while ``mean|y0 - y0_ref| / mean|y0_ref|`` stays below this, with
            ``y0_ref`` block 0's output in the chunk the other blocks were last computed in.
        warmup_chunks: chunks after a reset that compute everything.
    """

    threshold: float = 0.002
    warmup_chunks: int = 1

    def __post_init__(self) -> None:
        if not self.threshold >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.warmup_chunks < 0:
            raise ValueError(f"warmup_chunks must be >= 0, got {self.warmup_chunks}")


class FirstBlockCache(ChunkCacheExecutor):
    """First-block-cache style policy across chunks (see the module docstring)."""

    name = "fbcache"

    def __init__(self, config: FirstBlockCacheConfig | None = None) -> None:
        self.config = config or FirstBlockCacheConfig()
        super().__init__(self.config.warmup_chunks)
        self._skip: torch.Tensor | None = None
        self._first_out: torch.Tensor | None = None

    def run(self, s: int, l: int, block, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:  # noqa: E741
        b, last = x.shape[0], self.num_blocks - 1
        if ctx.writes_kv or b != len(self.chunk_index) or self.num_blocks < 2:
            self.stats.forced(b)
            return block(x, ctx)
        cell = self.store.cell(s, 0)
        if l == 0:
            self.stats.forced(b)
            y0 = block(x, ctx)
            eligible = cell.has & ~self.warm()
            skip = torch.zeros(b, dtype=torch.bool)
            if bool(eligible.any()):
                prev = cell.reference
                change = (y0.flatten(1) - prev).abs().mean(1) / (prev.abs().mean(1) + 1e-6)
                skip = eligible & (change.cpu() < self.config.threshold)
            self._skip, self._first_out = skip, y0
            # One decision for blocks 1 .. L-1, recorded for each of them.
            self.stats.decided(s, 1, eligible, skip, blocks=last)
            return y0
        skip = self._skip
        if l < last:
            if bool(skip.all()):
                return x
            if not bool(skip.any()):
                return block(x, ctx)
            out, *_ = self.compute_some(block, x, ctx, ~skip.to(x.device), x)
            return out
        # Last block: skipped worlds add the residual of blocks 1..L-1 stored with block 0's
        # output; computed worlds refresh both.
        reused = x + cell.residual if bool(skip.any()) else None
        if bool(skip.all()):
            return reused
        out, idx, _, y = self.compute_some(block, x, ctx, ~skip.to(x.device), reused)
        first = self._first_out[idx]
        cell.write(idx, y - first, reference=first.flatten(1))
        return out


@dataclass(frozen=True)
class StaticReuseConfig:
    """Settings of :class:`StaticReuse`: reuse on ``k`` of every ``n`` chunks after warmup.

    Attributes:
        k, n: chunks reused per period, period length (``0 <= k < n``).
        front_anchor: first blocks that always compute.
        warmup_chunks: chunks after a reset that compute everything.
    """

    k: int = 1
    n: int = 2
    front_anchor: int = 1
    warmup_chunks: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.k, int) and 0 <= self.k < self.n):
            raise ValueError(f"static reuse needs integers 0 <= k < n, got k={self.k}, n={self.n}")
        if self.front_anchor < 0 or self.warmup_chunks < 0:
            raise ValueError("front_anchor and warmup_chunks must be >= 0")


class StaticReuse(ChunkCacheExecutor):
    """Periodic reuse of every non-anchor block (see the module docstring)."""

    name = "static"

    def __init__(self, config: StaticReuseConfig | None = None) -> None:
        self.config = config or StaticReuseConfig()
        super().__init__(self.config.warmup_chunks)

    def reuse_chunk(self) -> torch.Tensor:
        """(b,) bool: worlds whose current chunk reuses (the last ``k`` of each period)."""
        cfg = self.config
        phase = (self.chunk_index - cfg.warmup_chunks) % cfg.n
        return ~self.warm() & (phase >= cfg.n - cfg.k)

    def run(self, s: int, l: int, block, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:  # noqa: E741
        b = x.shape[0]
        if ctx.writes_kv or l < self.config.front_anchor or b != len(self.chunk_index):
            self.stats.forced(b)
            return block(x, ctx)
        cell = self.store.cell(s, l)
        eligible = cell.has & ~self.warm()
        reuse = eligible & self.reuse_chunk()
        self.stats.decided(s, l, eligible, reuse)
        if bool(reuse.all()):
            return x + cell.residual
        reused = x + cell.residual if bool(reuse.any()) else None
        out, idx, x_in, y = self.compute_some(block, x, ctx, ~reuse.to(x.device), reused)
        cell.write(idx, y - x_in)
        return out
