"""Per-cell state of a cross-chunk cache: one cell per (denoising step s, block l), per world.

A cell remembers, for every world, the residual (block output minus input) from the last time
it was computed, the fingerprint of the input that produced it, the EMA of the cosine seen at
the cell, and how many times in a row it has been reused.
"""

from __future__ import annotations

import torch

from xworld_env.xcache.fingerprint import Fingerprint


class Cell:
    """State of one (s, l) cell for a batch of ``b`` worlds (tensors allocated on first write)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.residual: torch.Tensor | None = None
        self.fingerprint: Fingerprint | None = None
        self.reference: torch.Tensor | None = None
        self.has = torch.zeros(batch_size, dtype=torch.bool)
        self.cos_ema = torch.zeros(batch_size)
        self.ema_started = torch.zeros(batch_size, dtype=torch.bool)
        self.consecutive = torch.zeros(batch_size, dtype=torch.long)

    def write(
        self,
        worlds: torch.Tensor,
        residual: torch.Tensor,
        fingerprint: Fingerprint | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        """Stores what the worlds just computed (long indices) leave for the next chunk.

        Args:
            worlds: indices along the batch axis.
            residual: their residuals; kept without a copy when every world is written: the
                caller hands over a fresh tensor that nothing else holds.
            fingerprint: their input fingerprints (X-Cache).
            reference: any other per-world tensor a policy compares against (e.g. block 0's
                output for first-block caching).
        """
        every = self._every_world(worlds)
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
        if self.fingerprint is None:
            self.fingerprint = Fingerprint(
                tuple(s.new_zeros(self.batch_size, *s.shape[1:]) for s in fingerprint.samples),
                tuple(m.new_zeros(self.batch_size, *m.shape[1:]) for m in fingerprint.means),
                fingerprint.action.new_zeros(self.batch_size, *fingerprint.action.shape[1:]),
            )
        # Copies, so that the stored tensors never alias a fingerprint still in use; then a
        # new object, so that no packing cached before the write survives it.
        worlds = worlds.to(self.fingerprint.action.device)
        samples = tuple(dst.clone() for dst in self.fingerprint.samples)
        means = tuple(dst.clone() for dst in self.fingerprint.means)
        action = self.fingerprint.action.clone()
        for dst, src in zip(samples, fingerprint.samples):
            dst[worlds] = src
        for dst, src in zip(means, fingerprint.means):
            dst[worlds] = src
        action[worlds] = fingerprint.action
        self.fingerprint = Fingerprint(samples, means, action)

    def reset(self, worlds: torch.Tensor | None = None) -> None:
        """Forgets everything for some worlds (all when None)."""
        index = slice(None) if worlds is None else worlds.cpu()
        self.has[index] = False
        self.ema_started[index] = False
        self.cos_ema[index] = 0.0
        self.consecutive[index] = 0


class CellStore:
    """All cells of one batch, created on first use."""

    def __init__(self) -> None:
        self.batch_size = 0
        self._cells: dict[tuple[int, int], Cell] = {}

    def resize(self, batch_size: int) -> None:
        """Starts over with a batch of ``batch_size`` worlds if the size changed."""
        if batch_size != self.batch_size:
            self.batch_size = batch_size
            self._cells.clear()

    def cell(self, s: int, l: int) -> Cell:  # noqa: E741
        found = self._cells.get((s, l))
        if found is None:
            found = self._cells[(s, l)] = Cell(self.batch_size)
        return found

    def reset(self, worlds: torch.Tensor | None = None) -> None:
        """Clears the state of some worlds (all when None) in every cell."""
        for cell in self._cells.values():
            cell.reset(worlds)

    def memory_bytes(self) -> int:
        """Bytes held by stored residuals and fingerprints."""
        total = 0
        for cell in self._cells.values():
            if cell.residual is not None:
                total += cell.residual.numel() * cell.residual.element_size()
            if cell.reference is not None:
                total += cell.reference.numel() * cell.reference.element_size()
            if cell.fingerprint is not None:
                fp = cell.fingerprint
                for t in (*fp.samples, *fp.means, fp.action):
                    total += t.numel() * t.element_size()
        return total
