"""Rolling per-block key/value cache of past chunks, one per batch of worlds.

The cache holds, for every DiT block, the keys and values of the last ``window`` committed chunks
of each world (and, with ``sink``, the first chunk of the episode as well). Denoising passes only
read it (:meth:`RollingKVCache.view`); the KV-update pass on the clean chunk writes it
(:meth:`RollingKVCache.commit`). Storage is allocated once, so memory stays flat however long the
episode runs.

Keys are stored *before* rotary position encoding. Positions are assigned at read time from each
slot's age in chunks, so they stay bounded however long the episode is; a kept sink chunk is placed
just before the oldest window chunk (positions within the cache, as in StreamingLLM, Xiao et al.
2023, §3.2) so attention never sees a time offset larger than ``window + 1`` chunks.

Slots fill in order after a reset (sink slot first when enabled, then the ring), so the filled slots
of every world are a prefix of the slot axis and a read touches only that prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class KVCacheConfig:
    """Settings of :class:`RollingKVCache`.

    Attributes:
        window: number of most recent chunks kept (FIFO, oldest evicted first).
        sink: also keep the first chunk after a reset, in a slot of its own, for the whole episode.
    """

    window: int = 4
    sink: bool = False

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"KVCacheConfig.window must be >= 1, got {self.window}")

    @property
    def num_slots(self) -> int:
        """Chunk slots allocated per world: the window plus the sink slot when enabled."""
        return self.window + int(self.sink)


class KVView(NamedTuple):
    """Past keys and values of one block, as attention reads them.

    Attributes:
        k: keys, (b, heads, n * tokens, e), slot-major; as stored, not rotated (the model
            passes its blocks a copy with the keys rotated to their positions).
        v: values, (b, heads, n * tokens, e).
        age: (b, n) long, age in chunks of each slot as used for positions (1 = previous chunk).
        valid: (b, n) bool, whether the slot holds a chunk for that world.
    """

    k: Tensor
    v: Tensor
    age: Tensor
    valid: Tensor


class RollingKVCache:
    """Per-block rolling KV cache for a batch of ``b`` independent worlds.

    Each world keeps its own chunk counter, so a subset of worlds can be reset (or replaced by the
    state of another cache) while the others continue.

    Args:
        config: window and sink settings.
        num_layers: number of DiT blocks (one key/value store each).
        batch_size: number of worlds ``b``.
    """

    def __init__(self, config: KVCacheConfig, num_layers: int, batch_size: int) -> None:
        if num_layers < 1 or batch_size < 1:
            raise ValueError(
                f"num_layers and batch_size must be >= 1, got {num_layers} and {batch_size}"
            )
        self.config = config
        self.num_layers = num_layers
        self.batch_size = batch_size
        # Storage of all layers, (layers, b, heads, slot, tokens, e), so that a reader can take
        # every layer's past in one operation (``view_all``); allocated on the first commit, when
        # the shapes are known.
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        # Chunks committed per world since its last reset, and the chunk index held by each slot
        # (-1 = empty).
        self._count = torch.zeros(batch_size, dtype=torch.long)
        self._slot_chunk = torch.full((batch_size, config.num_slots), -1, dtype=torch.long)
        # (age, valid) of the filled slots, derived from the two above, and whatever readers
        # derived from the stored chunks (``derived``); both cleared on every change.
        self._ages: tuple[Tensor, Tensor] | None = None
        self._derived: dict[Hashable, Any] = {}

    # ------------------------------------------------------------------ reading

    @property
    def window(self) -> int:
        """Number of most recent chunks kept."""
        return self.config.window

    @property
    def sink(self) -> bool:
        """Whether the first chunk of each episode is kept."""
        return self.config.sink

    @property
    def num_chunks(self) -> Tensor:
        """(b,) long: chunks committed per world since its last reset (not only those kept)."""
        return self._count.clone()

    def held_chunks(self, world: int) -> list[int]:
        """Indices (since reset) of the chunks world ``world`` currently holds, oldest first."""
        held = self._slot_chunk[world]
        return sorted(int(i) for i in held[held >= 0])

    def _num_filled_slots(self) -> int:
        return int(min(int(self._count.max()), self.config.num_slots))

    def ages(self) -> tuple[Tensor, Tensor] | None:
        """Age and validity of the filled slot prefix, shared by all layers.

        Returns:
            ``(age, valid)``, both (b, n), or None when no world holds any chunk. The tensors are
            kept until the next change of the cache: read them, do not modify them.
        """
        n = self._num_filled_slots()
        if n == 0:
            return None
        if self._ages is None:
            slot_chunk = self._slot_chunk[:, :n]
            valid = slot_chunk >= 0
            age = self._count[:, None] - slot_chunk
            if self.config.sink:
                # The sink sits right before the oldest window chunk, whatever its true age.
                age[:, 0] = age[:, 0].clamp(max=self.config.window + 1)
            self._ages = (age.masked_fill(~valid, 0), valid)
        return self._ages

    def view(self, layer: int) -> KVView | None:
        """Past keys and values of block ``layer`` for every world.

        Args:
            layer: block index.

        Returns:
            A :class:`KVView` over the filled slot prefix (no copy), or None when no world holds
            any chunk yet.
        """
        every = self.view_all()
        if every is None:
            return None
        return every._replace(k=every.k[layer], v=every.v[layer])

    def view_all(self) -> KVView | None:
        """Past keys and values of every block at once, for readers that treat all blocks alike
        (one operation over all of them instead of one per block).

        Returns:
            A :class:`KVView` whose ``k`` and ``v`` carry a leading block axis, (layers, b, heads,
            n * tokens, e), over the filled slot prefix (no copy); None when no world holds any
            chunk yet.
        """
        meta = self.ages()
        if meta is None:
            return None
        age, valid = meta
        n = age.shape[1]
        k = self._k[:, :, :, :n].flatten(3, 4)
        v = self._v[:, :, :, :n].flatten(3, 4)
        return KVView(k, v, age, valid)

    def derived(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """A value computed from the cache's current contents, kept until the cache changes.

        Every pass of a chunk (its denoising passes and its KV-update pass) reads the same past,
        so what a reader derives from it alone (the rotary tables of the slots' ages, each
        block's rotated keys) needs computing once per chunk, not once per pass. ``make()`` is
        called on the first request for ``key`` after a commit, reset or replace; later requests
        get the same object back, which readers must not modify.

        Args:
            key: names the value; include whatever else it depends on besides the cache.
            make: computes it.
        """
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def memory_bytes(self) -> int:
        """Bytes held by the key/value storage (fixed once allocated)."""
        stores = [t for t in (self._k, self._v) if t is not None]
        return sum(t.numel() * t.element_size() for t in stores)

    # ------------------------------------------------------------------ writing

    def _slot_of(self, count: Tensor) -> Tensor:
        window, sink = self.config.window, self.config.sink
        if not sink:
            return count % window
        return torch.where(count == 0, torch.zeros_like(count), 1 + (count - 1) % window)

    def _allocate(self, like: Tensor) -> None:
        """Storage for keys and values shaped like ``like``, (b, heads, tokens, e), for every
        layer and slot."""
        self._k = like.new_zeros(self.num_layers, self.batch_size, like.shape[1],
                                 self.config.num_slots, *like.shape[2:])
        self._v = torch.zeros_like(self._k)

    def commit(self, keys: Sequence[Tensor], values: Sequence[Tensor]) -> None:
        """Store one chunk's keys and values for every block and every world.

        The chunk goes into the world's next slot; when the window is full the oldest window chunk
        is overwritten (the sink, when enabled, never is).

        Args:
            keys: one tensor per block, each (b, heads, tokens, e), not rotated.
            values: one tensor per block, each (b, heads, tokens, e).
        """
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(
                f"commit needs keys and values for all {self.num_layers} layers, "
                f"got {len(keys)} and {len(values)}"
            )
        if keys[0].shape[0] != self.batch_size:
            raise ValueError(f"commit expects b={self.batch_size} worlds, got {keys[0].shape[0]}")
        if self._k is None:
            self._allocate(keys[0])
        elif keys[0].shape[1:] != (self._k.shape[2], *self._k.shape[4:]):
            raise ValueError(
                f"commit got keys of shape {tuple(keys[0].shape)}, cache holds "
                f"(b, heads, tokens, e) = {(self.batch_size, self._k.shape[2])} + "
                f"{tuple(self._k.shape[4:])}"
            )
        worlds = torch.arange(self.batch_size)
        slot = self._slot_of(self._count)
        first = int(slot[0])
        # Where every world writes the same slot (worlds started together) a slice takes the
        # chunk by plain copies; otherwise each world's slot is indexed.
        where = (slice(None), slice(None), first) if bool((slot == first).all()) else (
            worlds, slice(None), slot)
        for layer in range(self.num_layers):
            self._k[layer][where] = keys[layer]
            self._v[layer][where] = values[layer]
        self._slot_chunk[worlds, slot] = self._count
        self._count += 1
        self._changed()

    def reset(self, worlds: Tensor | Sequence[int] | None = None) -> None:
        """Forget the past of the given worlds (all when None).

        Storage stays allocated; emptied slots are masked out of attention.
        """
        index = self._index(worlds)
        self._count[index] = 0
        self._slot_chunk[index] = -1
        self._changed()

    def replace(self, worlds: Tensor | Sequence[int], other: RollingKVCache) -> None:
        """Overwrite the state of ``worlds`` with the whole state of another cache.

        Used to prime a subset of worlds (vector-env autoreset): the new context is committed into
        a fresh cache of ``len(worlds)`` worlds, which then replaces theirs.

        Args:
            worlds: indices (or bool mask) of the worlds to replace, in ``other``'s batch order.
            other: a cache with the same config and layer count, batch size ``len(worlds)``.
        """
        index = self._index(worlds)
        if other.config != self.config or other.num_layers != self.num_layers:
            raise ValueError("replace needs a cache with the same config and number of layers")
        if other.batch_size != len(index):
            raise ValueError(
                f"replace of {len(index)} worlds needs a cache of that batch size, "
                f"got {other.batch_size}"
            )
        if other._k is not None:
            if self._k is None:
                self._allocate(other._k[0, :, :, 0])
            self._k[:, index] = other._k
            self._v[:, index] = other._v
        self._count[index] = other._count
        self._slot_chunk[index] = other._slot_chunk
        self._changed()

    def _changed(self) -> None:
        """Forgets everything derived from the previous contents."""
        self._ages = None
        self._derived.clear()

    def _index(self, worlds: Tensor | Sequence[int] | None) -> Tensor:
        if worlds is None:
            return torch.arange(self.batch_size)
        index = torch.as_tensor(worlds)
        if index.dtype == torch.bool:
            if index.shape != (self.batch_size,):
                raise ValueError(f"world mask must have shape ({self.batch_size},)")
            return index.nonzero().flatten()
        index = index.long().flatten()
        if index.numel() and (index.min() < 0 or index.max() >= self.batch_size):
            raise IndexError(f"world indices must be in [0, {self.batch_size}), got {worlds}")
        return index
