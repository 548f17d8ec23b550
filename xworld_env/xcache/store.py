"""Per-cell state of a cross-chunk cache: one cell per (denoising step s, block l), per world.

A cell remembers, for every world, the residual (block output minus input) from the last time
it was computed, the fingerprint of the input that produced it, the chunk it was computed in,
the EMA of the cosine seen at the cell, how many times in a row it has been reused, the
running sums of the fit that predicts its reuse error from the fingerprint's change, and its
drift: how fast its residual moved between its last two computations. A cell
that keeps history (``Cell.keep_previous``) also remembers the computation before the last one,
for reuse that extrapolates along the line through the two (X-Cache ``reuse="linear"``).
"""

from __future__ import annotations

import numpy as np
import torch

from xworld_env.xcache.fingerprint import Fingerprint
from xworld_env.xcache.gate import fit_gain, predicted_error


class Cell:
    """State of one (s, l) cell for a batch of ``b`` worlds (tensors allocated on first write).

    Args:
        batch_size: worlds ``b``.
        keep_previous: also keep each world's computation before the last one
            (``previous_residual``, ``previous_fingerprint``, ``previous_chunk``).
    """

    def __init__(self, batch_size: int, keep_previous: bool = False) -> None:
        self.batch_size = batch_size
        self.keep_previous = keep_previous
        self.residual: torch.Tensor | None = None
        self.fingerprint: Fingerprint | None = None
        self.reference: torch.Tensor | None = None
        self.has = torch.zeros(batch_size, dtype=torch.bool)
        self.cos_ema = torch.zeros(batch_size)
        self.ema_started = torch.zeros(batch_size, dtype=torch.bool)
        self.consecutive = torch.zeros(batch_size, dtype=torch.long)
        self.chunk = torch.zeros(batch_size, dtype=torch.long)
        self.previous_residual: torch.Tensor | None = None
        self.previous_fingerprint: Fingerprint | None = None
        self.previous_chunk = torch.zeros(batch_size, dtype=torch.long)
        self.has_previous = torch.zeros(batch_size, dtype=torch.bool)
        # Running sums of the gain fit (``gate.fit_gain``), float64 host arrays.
        self.gain_num = np.zeros(batch_size)
        self.gain_den = np.zeros(batch_size)
        # Relative L1 change of the residual per chunk between the last two computations
        # (inf until a world has two: unknown), a float32 host array.
        self.drift = np.full(batch_size, np.inf, dtype=np.float32)
        # The latest line continuation of the fingerprint and of the residual, by how far
        # along (``ahead``): a run of reuses continues the line the same way chunk after chunk
        # (``max_ahead``), so each is computed once per computation of the cell; ``write``
        # clears them.
        self._continuations: dict[str, tuple[bytes, object]] = {}

    def reusable(self) -> torch.Tensor:
        """(b,) bool: worlds the cell could reuse for, by what it holds: a computation, and
        the one before it too where it keeps history (a line needs two points)."""
        return self.has_previous if self.keep_previous else self.has

    def reuse_error(self, worlds: torch.Tensor, residual: torch.Tensor,
                    ahead: np.ndarray) -> np.ndarray:
        """Relative L1 error, per world of ``worlds`` (long indices), of what reusing the cell
        ``ahead`` (per world of the batch, as ``extrapolated_residual``) would have added,
        against ``residual``, what those worlds just computed:
        ``mean|residual - reused| / mean|residual|``. Call it before ``write``; meaningful
        where ``reusable()``."""
        return _relative_l1(residual, self.extrapolated_residual(ahead, worlds)).numpy()

    def calibrate(self, worlds: torch.Tensor, residual: torch.Tensor, rel: np.ndarray,
                  ahead: np.ndarray, decay: float) -> None:
        """Fits the gain of the worlds that just computed ``residual`` (long indices
        ``worlds``) and could have reused (``reusable()``) to the error reuse would have made
        (``reuse_error`` at ``ahead``) against ``rel``, every world's relative change at the
        decision (``gate.fit_gain``). Call it before ``write``."""
        host = worlds.cpu().numpy()
        could = self.reusable().numpy()[host]
        if not could.any():
            return
        if not could.all():
            mask = torch.from_numpy(could)
            worlds = worlds[mask.to(worlds.device)]
            residual = residual[mask.to(residual.device)]
            host = host[could]
        error = self.reuse_error(worlds, residual, ahead)
        self.gain_num[host], self.gain_den[host] = fit_gain(
            self.gain_num[host], self.gain_den[host], rel[host], error, decay)

    def predicted_error(self, rel: np.ndarray) -> np.ndarray:
        """(b,) float32: each world's fitted gain times its relative change ``rel``; infinite
        where nothing was fitted yet (``gate.predicted_error``)."""
        return predicted_error(self.gain_num, self.gain_den, rel)

    def write(
        self,
        worlds: torch.Tensor,
        residual: torch.Tensor,
        fingerprint: Fingerprint | None = None,
        reference: torch.Tensor | None = None,
        chunk: torch.Tensor | None = None,
    ) -> None:
        """Stores what the worlds just computed (long indices) leave for the next chunk.

        Args:
            worlds: indices along the batch axis.
            residual: their residuals; kept without a copy when every world is written: the
                caller hands over a fresh tensor that nothing else holds.
            fingerprint: their input fingerprints (X-Cache).
            reference: any other per-world tensor a policy compares against (e.g. block 0's
                output for first-block caching).
            chunk: the worlds' chunk numbers (since their reset) of this computation; with
                it, the worlds that had a computation get their ``drift`` measured first.
        """
        every = self._every_world(worlds)
        self._continuations.clear()
        if chunk is not None:
            self._measure_drift(worlds, residual, chunk)
        if self.keep_previous:
            self._keep_previous(worlds, every)
        if chunk is not None:
            self.chunk[worlds.cpu()] = chunk.cpu()
        if every:
            self.residual = residual
        else:
            if self.residual is None:
                self.residual = residual.new_zeros(self.batch_size, *residual.shape[1:])
            self.residual[worlds] = residual
        if reference is not None:
            if self.reference is None:
                self.reference = reference.new_zeros(self.batch_size, *reference.shape[1:])
            self.reference[worlds] = reference
        if fingerprint is not None:
            self._write_fingerprint(worlds, fingerprint, every)
        self.has[worlds.cpu()] = True
        self.consecutive[worlds.cpu()] = 0

    def _measure_drift(self, worlds: torch.Tensor, residual: torch.Tensor,
                       chunk: torch.Tensor) -> None:
        """Sets ``drift`` of the worlds that had a computation, before it is overwritten:
        ``mean|new - last| / mean|new|`` over the chunks between the two."""
        host = worlds.cpu()
        had = self.has[host]
        if self.residual is None or not bool(had.any()):
            return
        gap = (chunk.cpu() - self.chunk[host]).clamp_min(1).float()
        drift = _relative_l1(residual, self.residual[worlds]) / gap
        index = host.numpy()[had.numpy()]
        self.drift[index] = drift.numpy()[had.numpy()]

    def _keep_previous(self, worlds: torch.Tensor, every: bool) -> None:
        """Moves the worlds' last computation to ``previous_*`` before it is overwritten."""
        host = worlds.cpu()
        self.has_previous[host] = self.has[host]
        self.previous_chunk[host] = self.chunk[host]
        if self.residual is None:
            return
        if every:
            # The last ones become the previous ones as they are: ``write`` stores new objects.
            self.previous_residual = self.residual
            self.previous_fingerprint = self.fingerprint
            return
        if self.previous_residual is None:
            self.previous_residual = torch.zeros_like(self.residual)
        self.previous_residual[worlds] = self.residual[worlds]
        if self.fingerprint is not None:
            self.previous_fingerprint = _merged(
                self.previous_fingerprint, worlds, self.fingerprint.select(worlds),
                self.batch_size)

    def interval(self) -> np.ndarray:
        """(b,) float32: chunks between each world's last two computations, at least 1."""
        return np.maximum(self.chunk.numpy() - self.previous_chunk.numpy(), 1).astype(np.float32)

    def _elapsed(self, now: torch.Tensor) -> np.ndarray:
        """(b,) float32: chunks from each world's last computation to chunk ``now``."""
        return (now.cpu().numpy() - self.chunk.numpy()).astype(np.float32)

    def drift_past(self, now: torch.Tensor, covered: float) -> np.ndarray:
        """(b,) float32: ``drift`` times the chunks ``now`` (per world) lies past the last
        computation beyond ``covered`` intervals (``interval``); infinite where a world's drift
        is unknown."""
        past = np.maximum(self._elapsed(now) - np.float32(covered) * self.interval(),
                          np.float32(0.0))
        known = np.isfinite(self.drift)
        lag = np.where(known, self.drift, np.float32(0.0)) * past
        return np.where(known, lag, np.float32(np.inf)).astype(np.float32)

    def steps_ahead(self, now: torch.Tensor) -> np.ndarray:
        """(b,) float32: how far chunk ``now`` (per world) lies past the last computation, in
        units of the interval between the last two computations; 0 where a world has fewer
        than two."""
        ahead = self._elapsed(now) / self.interval()
        return np.where(self.has_previous.numpy(), ahead, np.float32(0.0))

    def extrapolated_fingerprint(self, ahead: np.ndarray) -> Fingerprint:
        """The fingerprint continued ``ahead`` intervals along the line through the last two
        computations, per world (``steps_ahead`` or ``gate.line_position``):
        ``last + ahead * (last - previous)``; the last one where ``ahead`` is 0."""
        if self.previous_fingerprint is None or not ahead.any():
            return self.fingerprint
        return self._continued("fingerprint", ahead, lambda: self.fingerprint.extrapolate(
            self.previous_fingerprint, ahead))

    def extrapolated_residual(self, ahead: np.ndarray,
                              worlds: torch.Tensor | None = None) -> torch.Tensor:
        """The residual continued the same way (see ``extrapolated_fingerprint``), of every
        world or of ``worlds`` (long indices) only."""
        if worlds is None:
            if self.previous_residual is None or not ahead.any():
                return self.residual
            return self._continued("residual", ahead, lambda: _line(
                self.previous_residual, self.residual, ahead))
        residual = self.residual[worlds]
        ahead = ahead[worlds.cpu().numpy()]
        if self.previous_residual is None or not ahead.any():
            return residual
        return _line(self.previous_residual[worlds], residual, ahead)

    def _continued(self, what: str, ahead: np.ndarray, make):
        """``make()``, or what it gave for the same ``ahead`` since the last ``write``."""
        key = np.asarray(ahead, dtype=np.float32).tobytes()
        found = self._continuations.get(what)
        if found is None or found[0] != key:
            found = self._continuations[what] = (key, make())
        return found[1]

    def _every_world(self, worlds: torch.Tensor) -> bool:
        return len(worlds) == self.batch_size and bool(
            (worlds.cpu() == torch.arange(self.batch_size)).all()
        )

    def _write_fingerprint(self, worlds: torch.Tensor, fingerprint: Fingerprint,
                           every: bool) -> None:
        if every:
            # Every world at once: keep the object, with the packing the gate already cached.
            self.fingerprint = fingerprint
            return
        self.fingerprint = _merged(self.fingerprint, worlds, fingerprint, self.batch_size)

    def reset(self, worlds: torch.Tensor | None = None) -> None:
        """Forgets everything for some worlds (all when None)."""
        index = slice(None) if worlds is None else worlds.cpu()
        self.has[index] = False
        self.ema_started[index] = False
        self.cos_ema[index] = 0.0
        self.consecutive[index] = 0
        self.has_previous[index] = False
        self.gain_num[index] = 0.0
        self.gain_den[index] = 0.0
        self.drift[index] = np.inf


def _line(previous: torch.Tensor, last: torch.Tensor, ahead: np.ndarray) -> torch.Tensor:
    """``last + ahead * (last - previous)`` per world (``ahead`` (b,) float32), in one kernel:
    ``previous + (1 + ahead) (last - previous)``."""
    weight = torch.from_numpy(ahead + np.float32(1.0)).to(last.device, last.dtype)
    return torch.lerp(previous, last, weight.view(-1, *([1] * (last.dim() - 1))))


def _relative_l1(new: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per world, ``mean|new - reference| / mean|new|``: a (b,) float32 CPU tensor."""
    diff = (new - reference).abs().flatten(1).mean(1)
    scale = new.abs().flatten(1).mean(1).clamp_min(1e-12)
    return (diff / scale).float().cpu()


def _merged(
    base: Fingerprint | None, worlds: torch.Tensor, src: Fingerprint, batch_size: int
) -> Fingerprint:
    """A new fingerprint of ``batch_size`` worlds: ``base`` (zeros where None) with the rows of
    ``worlds`` taken from ``src``. Copies, so that the result never aliases a fingerprint still
    in use, and a new object, so that no packing cached for ``base`` survives."""
    if base is None:
        base = Fingerprint(
            tuple(s.new_zeros(batch_size, *s.shape[1:]) for s in src.samples),
            tuple(m.new_zeros(batch_size, *m.shape[1:]) for m in src.means),
            src.action.new_zeros(batch_size, *src.action.shape[1:]),
        )
    worlds = worlds.to(base.action.device)
    samples = tuple(dst.clone() for dst in base.samples)
    means = tuple(dst.clone() for dst in base.means)
    action = base.action.clone()
    for dst, new in zip(samples, src.samples):
        dst[worlds] = new
    for dst, new in zip(means, src.means):
        dst[worlds] = new
    action[worlds] = src.action
    return Fingerprint(samples, means, action)


class CellStore:
    """All cells of one batch, created on first use."""

    def __init__(self, keep_previous: bool = False) -> None:
        self.batch_size = 0
        self.keep_previous = keep_previous
        self._cells: dict[tuple[int, int], Cell] = {}

    def resize(self, batch_size: int) -> None:
        """Starts over with a batch of ``batch_size`` worlds if the size changed."""
        if batch_size != self.batch_size:
            self.batch_size = batch_size
            self._cells.clear()

    def cell(self, s: int, l: int) -> Cell:  # noqa: E741
        found = self._cells.get((s, l))
        if found is None:
            found = self._cells[(s, l)] = Cell(self.batch_size, self.keep_previous)
        return found

    def reset(self, worlds: torch.Tensor | None = None) -> None:
        """Clears the state of some worlds (all when None) in every cell."""
        for cell in self._cells.values():
            cell.reset(worlds)

    def memory_bytes(self) -> int:
        """Bytes held by stored residuals and fingerprints, and their kept line continuations."""
        tensors = []
        for cell in self._cells.values():
            tensors += [cell.residual, cell.reference, cell.previous_residual]
            continued = [value for _, value in cell._continuations.values()]
            for held in (cell.fingerprint, cell.previous_fingerprint, *continued):
                if isinstance(held, Fingerprint):
                    tensors += [*held.samples, *held.means, held.action]
                elif isinstance(held, torch.Tensor):
                    tensors.append(held)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
