"""X-Cache: cross-chunk block residual reuse, as an executor of the DiT's block loop.

For every denoising step ``s`` and block ``l`` (a *cell*), X-Cache keeps the residual of the
block from the last chunk in which the cell was computed and the fingerprint of the input that
produced it. In the next chunk, the cell's new input is fingerprinted; if it is close enough to
the stored one (the published cosine with its adaptive threshold and maximum deviation, plus
our relative change; see ``gate.py``), the block is skipped and its stored residual added
instead. Every world of a batch gates on its own.

Ours: a cell may cover a *span* of consecutive non-anchor blocks (``XCacheConfig.span``). The
span gates on its first block's input and, when it reuses, adds the residual of the whole span
and skips all its blocks. ``span=1`` is the published per-block gate; the default, one span of
every non-anchor block, decides once per denoising pass: on the shipped model the per-block
decisions of a pass always agree (``CacheStats.summary()["pass_agreement"]``), so it makes the
same decisions at a seventh of the gate's cost.

Ours too: *linear reuse* (``XCacheConfig.reuse``, default ``"linear"``). A reused cell adds
its residual continued along the line through its last two computations rather than the last
one as it is, and its gate compares the new input with the stored fingerprint continued the same
way: a world whose blocks change steadily from chunk to chunk (a car driving on) passes the gate
and is predicted where it will be, not where it was. How far along the line
(``XCacheConfig.position``): by default by the chunks elapsed since the last computation;
``"input"`` continues it to where the new input's fingerprint lies on the line through the two
stored ones (``gate.line_position``), as far as its input went.
A run of reuses continues the line at most ``XCacheConfig.max_ahead`` intervals (default one:
as far as the two computations lie apart) and holds it there. A world computes a cell until it
has two computations of it (after a reset, the first chunk past warmup computes as well).
``reuse="hold"`` is the published rule.

Ours as well: the *predicted error* (``XCacheConfig.max_error``, on by default for linear reuse
in float32). The same relative change of a block input means a different error of the reused
residual at different denoising steps (at step 0 the input is the episode's noise, and moves
only through block 0's attention to the past). Each cell fits, per world, the gain from the
relative change to the relative error reuse would have made, on its own computations, and a
world reuses only while ``gain * relative change`` stays below ``max_error``.

And the *drift bound* (``XCacheConfig.max_drift``, on by default for linear reuse). Every cell
measures, per world, how far its residual moved per chunk between its last two computations; a
world reuses the cell only while that drift times the chunks the reuse lies past what it
follows (the line's ``max_ahead`` intervals, or the last computation under ``hold``) stays
below ``max_drift``. Without it a near-still closed-loop world locks: once every pass of a
chunk is reused, the next chunk meets nearly the same inputs and the same residuals come back,
where full compute would move on (docs/performance.md, "X-Cache drift").

Guardrails (as published): passes that write the KV cache always compute every block;
the first ``front_anchor`` (and last ``tail_anchor``) blocks always compute; the first
``warmup_chunks`` chunks after a reset compute everything; step-0 protection and a cap on
consecutive reuses are optional.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from xworld_env.model.dit import BlockContext
from xworld_env.model.quantize import int8_active
from xworld_env.types import CAMERA_NAMES, VIEW_GROUPS
from xworld_env.xcache.fingerprint import DEFAULT_BUDGET, Fingerprint, fingerprint
from xworld_env.xcache.gate import (
    cosine_threshold,
    gate_metrics,
    line_position,
    reuse_decision,
    update_ema,
)
from xworld_env.xcache.stats import CacheStats
from xworld_env.xcache.store import Cell, CellStore

BATCH_MODES = ("gather", "all")
#: What a reused cell adds: ``hold`` the residual of its last computation (published);
#: ``linear`` the residual continued along the line through its last two computations.
REUSE_MODES = ("linear", "hold")
#: How far along its line a ``linear`` cell is continued: ``time``, by the chunks elapsed;
#: ``input``, where the new input's fingerprint lies on the line (clipped to ``LINE_RANGE``).
POSITIONS = ("time", "input")
#: Positions along the line ``input`` may continue a cell to, in intervals between its last
#: two computations: from back at the previous one to four intervals past the last.
LINE_RANGE = (-1.0, 4.0)
#: ``max_rel_change``, ``max_error`` and ``max_drift`` when they are left to the reuse rule and
#: the precision: blocks computed in float32; under bfloat16 / float16 autocast (``low``); and
#: with int8 linear layers (``int8``, ``xworld_env.model.quantize``). Rounding to a lower
#: precision adds its own chunk-to-chunk change to every block input and residual (and
#: ``linear`` extrapolates it). docs/performance.md, "X-Cache reuse", "X-Cache predicted error",
#: "bfloat16" and "int8", has the sweeps behind them.
DEFAULT_MAX_REL_CHANGE = {
    "linear": {"float32": math.inf, "low": 0.008, "int8": math.inf},
    "hold": {"float32": 0.003, "low": 0.005, "int8": 0.006},
}
DEFAULT_MAX_ERROR = {
    "linear": {"float32": 0.02, "low": math.inf, "int8": 0.08},
    "hold": {"float32": math.inf, "low": math.inf, "int8": math.inf},
}
DEFAULT_MAX_DRIFT = {
    "linear": {"float32": 0.02, "low": 0.02, "int8": 0.02},
    "hold": {"float32": math.inf, "low": math.inf, "int8": math.inf},
}


@dataclass(frozen=True)
class XCacheConfig:
    """Settings of :class:`XCache` (the ``xcache`` config group).

    Attributes:
        budget: token budget K of each view group's structure-aware sample.
        ema_alpha: weight of the newest cosine in the per-cell EMA.
        margin: the threshold sits this far below the EMA ...
        floor: ... but never below this floor (a floor above 1 disables reuse).
        max_deviation: reuse only while the maximum relative deviation stays below this.
        max_rel_change: reuse only while the relative L1 change of the fingerprint samples
            stays below this (``inf``: off). ``None`` (default): by ``reuse`` and the
            precision the blocks compute in, ``DEFAULT_MAX_REL_CHANGE`` (``linear``: off in
            float32 and int8, 0.008 under bfloat16 or float16 autocast; ``hold``: 0.003, 0.005
            and 0.006 in int8); a number holds in any precision.
        max_error: reuse only while the predicted relative L1 error of the residual a world
            would add stays below this (``inf``: off). The prediction is the relative change
            times a gain the cell fits, per world, to its own computations: whenever a world
            computes a cell it could have reused, the residual reuse would have added is
            compared with the computed one (``gate.fit_gain``; older samples decay by
            ``1 - ema_alpha``); a world reuses a cell only once it has such a sample. ``None``
            (default): ``DEFAULT_MAX_ERROR`` (``linear``: 0.02 in float32, 0.08 in int8;
            otherwise off).
            With both thresholds off the gate is the published two-metric one.
        front_anchor: first blocks that always compute (``Fn``).
        tail_anchor: last blocks that always compute (``Bn``).
        warmup_chunks: chunks after a reset that compute everything (``W``).
        protect_step0: always compute the first denoising step.
        max_consecutive: at most this many reuses in a row per cell and world (0: no limit).
        span: consecutive non-anchor blocks one gate decision covers; 0: all of them, one
            decision per denoising pass; 1: every block gates on its own input, as published.
            A span gates on its first block's input and, when it reuses, adds the residual of
            the whole span (see docs/performance.md, "X-Cache spans").
        batch_mode: ``gather`` computes a block only for the worlds that need it; ``all``
            reuses only when every world of the batch agrees (one full-batch block call).
        reuse: what a reused cell adds and what its gate compares with. ``hold`` (published):
            the residual of the cell's last computation, gated on the fingerprint of that
            computation's input. ``linear`` (default): both continued along the line through
            the cell's last two computations, ``last + k (last - previous)`` with ``k`` the
            chunks since the last computation over the chunks between the two; a world
            computes the cell until it has two; see docs/performance.md, "X-Cache reuse".
        position: how far along the line ``linear`` continues a cell. ``time`` (default):
            ``k`` is the chunks since the last computation over the chunks between the two.
            ``input``: ``k`` is where the new input's fingerprint lies on the line through the
            two stored ones (least squares on the sampled tokens, ``gate.line_position``; 0 at
            the last computation, clipped to ``LINE_RANGE``), so a world that slows down, stops
            or backs up is continued only as far as its input moved; its reused chunks can
            then keep its inputs on the line while errors build up, so pair it with
            ``max_consecutive`` (docs/performance.md, "X-Cache reuse").
        max_ahead: the farthest ``linear`` continues a line, in intervals between the cell's
            last two computations (``inf``: no limit). Past it, a run of reuses holds the
            residual continued this far: the two computations say how the cell moved over one
            interval, not over many, and a line continued over a long run runs away
            (default 1: as far as the two computations lie apart).
        max_drift: reuse only while the drift a world's reuse would carry stays below this
            (``inf``: off): the relative L1 change per chunk of the cell's residual between its
            last two computations, times the chunks the reuse lies past what it follows (under
            ``linear``, ``max_ahead`` intervals of the line; under ``hold``, the last
            computation). A world with one computation of the cell (drift unknown) computes.
            ``None`` (default): ``DEFAULT_MAX_DRIFT`` (``linear``: 0.02 in every precision;
            ``hold``: off).
        view_groups: camera names of each fingerprint view group.
    """

    budget: int = DEFAULT_BUDGET
    ema_alpha: float = 0.3
    margin: float = 0.02
    floor: float = 0.97
    max_deviation: float = 2.0
    max_rel_change: float | None = None
    max_error: float | None = None
    front_anchor: int = 1
    tail_anchor: int = 0
    warmup_chunks: int = 1
    protect_step0: bool = False
    max_consecutive: int = 0
    span: int = 0
    batch_mode: str = "gather"
    reuse: str = "linear"
    position: str = "time"
    max_ahead: float = 1.0
    max_drift: float | None = None
    view_groups: tuple[tuple[str, ...], ...] = tuple(VIEW_GROUPS.values())

    def __post_init__(self) -> None:
        object.__setattr__(self, "view_groups", tuple(tuple(g) for g in self.view_groups))
        checks = [
            (isinstance(self.budget, int) and self.budget >= 1, "budget must be an int >= 1"),
            (0.0 < self.ema_alpha <= 1.0, "ema_alpha must be in (0, 1]"),
            (math.isfinite(self.margin) and self.margin >= 0.0, "margin must be >= 0"),
            (math.isfinite(self.floor) and self.floor >= -1.0,
             "floor must be a finite number >= -1 (above 1 disables reuse)"),
            (self.max_deviation > 0.0, "max_deviation must be > 0 (inf allowed)"),
            (self.max_rel_change is None or self.max_rel_change > 0.0,
             "max_rel_change must be > 0 (inf allowed) or None (by precision)"),
            (self.max_error is None or self.max_error > 0.0,
             "max_error must be > 0 (inf allowed) or None (by precision)"),
            (self.max_drift is None or self.max_drift > 0.0,
             "max_drift must be > 0 (inf allowed) or None (by precision)"),
            (isinstance(self.front_anchor, int) and self.front_anchor >= 0,
             "front_anchor must be an int >= 0"),
            (isinstance(self.tail_anchor, int) and self.tail_anchor >= 0,
             "tail_anchor must be an int >= 0"),
            (isinstance(self.warmup_chunks, int) and self.warmup_chunks >= 0,
             "warmup_chunks must be an int >= 0"),
            (isinstance(self.max_consecutive, int) and self.max_consecutive >= 0,
             "max_consecutive must be an int >= 0 (0: no limit)"),
            (isinstance(self.span, int) and self.span >= 0,
             "span must be an int >= 0 (0: all non-anchor blocks)"),
            (self.batch_mode in BATCH_MODES, f"batch_mode must be one of {BATCH_MODES}"),
            (self.reuse in REUSE_MODES, f"reuse must be one of {REUSE_MODES}"),
            (self.position in POSITIONS, f"position must be one of {POSITIONS}"),
            (self.max_ahead > 0.0, "max_ahead must be > 0 (inf: no limit)"),
            (len(self.view_groups) > 0 and all(self.view_groups), "view_groups must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid XCacheConfig: {message}; got {self}")


class ChunkCacheExecutor:
    """What every cross-chunk cache executor shares: per-world chunk counters, cells, stats.

    The engine calls ``reset(worlds)`` when worlds start or end and ``begin_chunk(...)`` before
    the denoising passes of every chunk.
    """

    name = "cache"

    def __init__(self, warmup_chunks: int, keep_previous: bool = False) -> None:
        self.warmup_chunks = warmup_chunks
        self.store = CellStore(keep_previous)
        self.stats = CacheStats()
        self.num_blocks = 0
        self.chunk_index = torch.zeros(0, dtype=torch.long)

    def reset(self, worlds: torch.Tensor | None = None) -> None:
        """Forgets every stored residual and counter of some worlds (all when None)."""
        if worlds is None:
            self.store.resize(0)
            self.chunk_index = torch.zeros(0, dtype=torch.long)
            return
        worlds = torch.as_tensor(worlds, dtype=torch.long).cpu()
        self.store.reset(worlds)
        if len(self.chunk_index):
            self.chunk_index[worlds] = 0

    def begin_chunk(self, batch_size: int, num_blocks: int) -> None:
        """Called once per chunk, before its denoising passes."""
        if batch_size != len(self.chunk_index):
            self.store.resize(batch_size)
            self.chunk_index = torch.zeros(batch_size, dtype=torch.long)
        else:
            self.chunk_index += 1
        self.num_blocks = num_blocks
        self.stats.begin_chunk(batch_size, num_blocks)

    def warm(self) -> torch.Tensor:
        """(b,) bool: worlds still in their warmup chunks."""
        return self.chunk_index < self.warmup_chunks

    def compute_some(
        self, block, x: torch.Tensor, ctx: BlockContext, compute: torch.Tensor,
        reused_out: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs ``block`` for the worlds in ``compute`` only.

        Returns:
            (output for every world, indices computed, their inputs, their new outputs).
        """
        if bool(compute.all()):
            y = block(x, ctx)
            return y, torch.arange(x.shape[0], device=x.device), x, y
        idx = compute.nonzero().flatten().to(x.device)
        x_in = x[idx]
        y = block(x_in, ctx.select(idx))
        out = reused_out.clone()
        out[idx] = y
        return out, idx, x_in, y


class XCache(ChunkCacheExecutor):
    """The X-Cache executor (see the module docstring).

    Args:
        config: thresholds and guardrails.
        camera_names: cameras along the ``v`` axis of block inputs, to resolve view groups.
    """

    name = "xcache"

    def __init__(
        self, config: XCacheConfig | None = None, camera_names: tuple[str, ...] = CAMERA_NAMES
    ) -> None:
        self.config = config or XCacheConfig()
        super().__init__(self.config.warmup_chunks, keep_previous=self.config.reuse == "linear")
        unknown = {c for g in self.config.view_groups for c in g} - set(camera_names)
        if unknown:
            raise ValueError(
                f"view groups name cameras {sorted(unknown)} that are not in {camera_names}"
            )
        self.groups = [[camera_names.index(c) for c in g] for g in self.config.view_groups]
        self._span: _OpenSpan | None = None

    def anchored(self, s: int, l: int) -> bool:  # noqa: E741
        """Whether cell (s, l) always computes (front/tail anchors, step-0 protection)."""
        cfg = self.config
        return (
            l < cfg.front_anchor
            or l >= self.num_blocks - cfg.tail_anchor
            or (cfg.protect_step0 and s == 0)
        )

    def rel_change_threshold(self, device: torch.device) -> float:
        """``max_rel_change``, or its default for ``reuse`` and the precision blocks on
        ``device`` compute in now (float32, lower under autocast, or int8 inside
        ``int8_blocks``)."""
        return self._threshold(self.config.max_rel_change, DEFAULT_MAX_REL_CHANGE, device)

    def error_threshold(self, device: torch.device) -> float:
        """``max_error``, or its default (as ``rel_change_threshold``)."""
        return self._threshold(self.config.max_error, DEFAULT_MAX_ERROR, device)

    def drift_threshold(self, device: torch.device) -> float:
        """``max_drift``, or its default (as ``rel_change_threshold``)."""
        return self._threshold(self.config.max_drift, DEFAULT_MAX_DRIFT, device)

    def _threshold(self, value: float | None, defaults: dict, device: torch.device) -> float:
        if value is not None:
            return value
        if int8_active():
            precision = "int8"
        elif torch.is_autocast_enabled(device.type) and (
                torch.get_autocast_dtype(device.type) != torch.float32):
            precision = "low"
        else:
            precision = "float32"
        return defaults[self.config.reuse][precision]

    def span_of(self, l: int) -> tuple[int, int]:  # noqa: E741
        """``(first, last)`` block of the span that non-anchor block ``l`` belongs to."""
        cfg = self.config
        end = self.num_blocks - cfg.tail_anchor
        if cfg.span == 0:
            return cfg.front_anchor, end - 1
        first = cfg.front_anchor + (l - cfg.front_anchor) // cfg.span * cfg.span
        return first, min(first + cfg.span, end) - 1

    def run(self, s: int, l: int, block, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:  # noqa: E741
        """Returns block ``l``'s output at step ``s``, computed or reused per world."""
        b = x.shape[0]
        if ctx.writes_kv or self.anchored(s, l) or b != len(self.chunk_index):
            # Guardrail 1 (KV-update protection) and the anchors: compute in full.
            self.stats.forced(b)
            return block(x, ctx)
        first, last = self.span_of(l)
        if l != first:
            return self._inside_span(l, last, block, x, ctx)
        cfg = self.config
        cell = self.store.cell(s, l)
        started = time.perf_counter()
        fp = fingerprint(x, self.groups, ctx.action, cfg.budget)
        # The per-world bookkeeping is host arithmetic on numpy views of the cell's tensors.
        has = cell.has.numpy()
        eligible = has & ~self.warm().numpy()
        reuse = np.zeros(b, dtype=bool)
        cos = dev = rel = err = drift = None
        ahead = None
        max_error = self.error_threshold(x.device)
        max_drift = self.drift_threshold(x.device)
        if has.any():
            reference = cell.fingerprint
            if cfg.reuse == "linear":
                ahead = self._ahead(cell, fp)
                reference = cell.extrapolated_fingerprint(ahead)
            cos, dev, rel = gate_metrics(fp, reference)
            ema, ema_started = cell.cos_ema.numpy(), cell.ema_started.numpy()
            np.copyto(ema, update_ema(ema, cos, cfg.ema_alpha, fresh=~ema_started), where=has)
            ema_started |= has
            tau = cosine_threshold(ema, cfg.margin, cfg.floor)
            if math.isfinite(max_error):
                err = cell.predicted_error(rel)
            if math.isfinite(max_drift):
                drift = self._drift(cell)
            reuse = eligible & reuse_decision(cos, dev, tau, cfg.max_deviation, rel,
                                              self.rel_change_threshold(x.device), err,
                                              max_error, drift, max_drift)
            if cfg.max_consecutive:
                reuse &= cell.consecutive.numpy() < cfg.max_consecutive
            # A line needs two points: under ``linear`` a world computes the cell until it
            # has two.
            reuse &= cell.reusable().numpy()
        if cfg.batch_mode == "all" and not reuse.all():
            reuse[:] = False
        self.stats.gate_seconds += time.perf_counter() - started
        self.stats.decided(s, l, eligible, reuse, cos, dev, rel, err, drift, blocks=last - l + 1)
        consecutive = cell.consecutive.numpy()
        consecutive[reuse] += 1
        # Reused worlds take the span's whole residual here and pass through its other blocks;
        # the residual is continued along its line only when some world reuses it.
        residual = cell.residual
        if ahead is not None and reuse.any():
            residual = cell.extrapolated_residual(ahead)
        fit = None
        if rel is not None and math.isfinite(max_error):
            fit = (rel, np.zeros(b, np.float32) if ahead is None else ahead)
        if reuse.all():
            self._span = _OpenSpan(cell, reuse, None, None, fp, fit)
            return x + residual
        reused_out = x + residual if reuse.any() else None
        compute = torch.from_numpy(~reuse).to(x.device)
        out, idx, x_in, y = self.compute_some(block, x, ctx, compute, reused_out)
        if first == last:
            self._write(cell, idx, y - x_in, fp, fit)
        else:
            self._span = _OpenSpan(cell, reuse, idx, x_in, fp, fit)
        return out

    def _inside_span(
        self, l: int, last: int, block, x: torch.Tensor, ctx: BlockContext  # noqa: E741
    ) -> torch.Tensor:
        """Block ``l`` after the first of its span: the span's first block decided (and
        recorded the decision for every block of the span)."""
        span = self._span
        if span.worlds is None:
            return x
        reused = x if span.reuse.any() else None
        out, idx, _, y = self.compute_some(
            block, x, ctx, torch.from_numpy(~span.reuse).to(x.device), reused
        )
        if l == last:
            self._write(span.cell, idx, y - span.inputs, span.fingerprint, span.fit)
            self._span = None
        return out

    def _drift(self, cell: Cell) -> np.ndarray:
        """(b,) float32: the drift reusing ``cell`` now would carry, per world: its residual's
        relative change per chunk between its last two computations (``Cell.drift``) times
        the chunks this one lies past what its reuse follows (under ``linear``, the line up to
        ``max_ahead`` intervals; under ``hold``, nothing past the last computation); infinite
        where a world has fewer than two computations (its drift is unknown)."""
        covered = self.config.max_ahead if self.config.reuse == "linear" else 0.0
        return cell.drift_past(self.chunk_index, covered)

    def _ahead(self, cell: Cell, fp: Fingerprint) -> np.ndarray:
        """(b,) float32: how far along its line ``linear`` continues ``cell`` for input
        fingerprint ``fp`` (``XCacheConfig.position``), at most ``max_ahead``; 0 where a
        world has no line."""
        if self.config.position == "time" or cell.previous_fingerprint is None:
            ahead = cell.steps_ahead(self.chunk_index)
        else:
            position = np.clip(line_position(fp, cell.fingerprint, cell.previous_fingerprint),
                               *LINE_RANGE)
            ahead = np.where(cell.has_previous.numpy(), position, np.float32(0.0))
        return np.minimum(ahead, np.float32(self.config.max_ahead))

    def _write(self, cell: Cell, idx: torch.Tensor, residual: torch.Tensor,
               fp: Fingerprint, fit: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Stores the residuals the worlds ``idx`` just computed, with their fingerprints.

        With ``fit`` (every world's relative change at the decision and how far along its
        line reuse would have continued the cell), first fits the cell's gain to the error
        reuse would have made for the computed worlds that could have reused
        (``max_error``)."""
        if fit is not None:
            cell.calibrate(idx, residual, *fit, 1.0 - self.config.ema_alpha)
        every = len(idx) == len(self.chunk_index)
        cell.write(idx, residual, fp if every else fp.select(idx),
                   chunk=self.chunk_index[idx.cpu()])


@dataclass
class _OpenSpan:
    """What a span's first block decided, for the span's other blocks in the same pass.

    Attributes:
        cell: the span's cell (its first block's).
        reuse: (b,) host mask of the decision.
        worlds: indices of the worlds that compute the span (None: every world reuses).
        inputs: their inputs to the span's first block.
        fingerprint: the fingerprint of every world's input to the span's first block.
        fit: every world's relative change at the decision and how far along its line reuse
            would have continued the cell, kept when the gain is fitted.
    """

    cell: Cell
    reuse: np.ndarray
    worlds: torch.Tensor | None
    inputs: torch.Tensor | None
    fingerprint: Fingerprint
    fit: tuple[np.ndarray, np.ndarray] | None = None
