"""Rules of the rolling KV cache: FIFO window, sink, bounded memory, per-world reset/replace."""

from __future__ import annotations

import pytest
import torch

from xworld_env.model.kv_cache import KVCacheConfig, RollingKVCache

LAYERS, HEADS, TOKENS, E = 2, 2, 3, 4


def chunk(b: int, ids: list[float]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values of one chunk whose every entry is the world's id (values: negated)."""
    k = torch.tensor(ids, dtype=torch.float32).view(b, 1, 1, 1).expand(b, HEADS, TOKENS, E)
    return [k.clone() for _ in range(LAYERS)], [-k.clone() for _ in range(LAYERS)]


def held_ids(cache: RollingKVCache, world: int, layer: int = 0) -> list[float]:
    """Ids of the chunks visible to attention for one world, oldest first by age."""
    view = cache.view(layer)
    if view is None:
        return []
    keys = view.k[world, 0].view(-1, TOKENS, E)[:, 0, 0]
    slots = [
        (int(age), float(keys[i]))
        for i, (age, ok) in enumerate(zip(view.age[world], view.valid[world], strict=True))
        if ok
    ]
    return [key for _, key in sorted(slots, reverse=True)]


def test_window_is_fifo_and_memory_bounded():
    cache = RollingKVCache(KVCacheConfig(window=3), LAYERS, batch_size=1)
    assert cache.view(0) is None
    sizes = []
    for n in range(10):
        cache.commit(*chunk(1, [n]))
        sizes.append(cache.memory_bytes())
        assert held_ids(cache, 0) == [float(i) for i in range(max(0, n - 2), n + 1)]
        assert cache.held_chunks(0) == list(range(max(0, n - 2), n + 1))
    assert len(set(sizes)) == 1, "storage must be allocated once"
    assert sizes[0] == 2 * LAYERS * 3 * HEADS * TOKENS * E * 4
    assert int(cache.num_chunks[0]) == 10


def test_values_follow_keys_and_layers_are_independent():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=1)
    keys, values = chunk(1, [5])
    keys[1] = keys[1] * 10
    cache.commit(keys, values)
    assert torch.equal(cache.view(0).v, -cache.view(0).k)
    assert torch.equal(cache.view(1).k, 10 * cache.view(0).k)


def test_view_all_stacks_every_layer_view_without_a_copy():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    assert cache.view_all() is None
    for n in range(3):
        keys, values = chunk(2, [n, 10 + n])
        keys[1] = keys[1] * 100
        cache.commit(keys, values)
        every = cache.view_all()
        assert every.k.shape == (LAYERS, 2, HEADS, min(n + 1, 2) * TOKENS, E)
        for layer in range(LAYERS):
            one = cache.view(layer)
            assert torch.equal(every.k[layer], one.k) and torch.equal(every.v[layer], one.v)
            assert torch.equal(every.age, one.age) and torch.equal(every.valid, one.valid)
    # A view, not a copy: the next commit shows in a view taken before it.
    before = cache.view_all()
    cache.commit(*chunk(2, [7, 8]))
    assert 7.0 in before.k[:, 0] and 8.0 in before.k[:, 1] and 7.0 not in before.k[:, 1]


def test_ages_count_chunks_back_from_the_next_one():
    cache = RollingKVCache(KVCacheConfig(window=3), LAYERS, batch_size=1)
    for n in range(5):
        cache.commit(*chunk(1, [n]))
    age, valid = cache.ages()
    assert valid.all()
    assert sorted(age[0].tolist()) == [1, 2, 3]


def test_sink_keeps_first_chunk_and_sits_before_the_window():
    cache = RollingKVCache(KVCacheConfig(window=2, sink=True), LAYERS, batch_size=1)
    for n in range(6):
        cache.commit(*chunk(1, [n]))
    assert cache.held_chunks(0) == [0, 4, 5]
    assert held_ids(cache, 0) == [0.0, 4.0, 5.0]
    age, _ = cache.ages()
    # True age of the sink is 6; it is placed just before the oldest window chunk (age 2).
    assert sorted(age[0].tolist()) == [1, 2, 3]
    assert cache.memory_bytes() == 2 * LAYERS * 3 * HEADS * TOKENS * E * 4


def test_sink_before_eviction_is_an_ordinary_past():
    cache = RollingKVCache(KVCacheConfig(window=2, sink=True), LAYERS, batch_size=1)
    for n in range(3):
        cache.commit(*chunk(1, [n]))
    age, _ = cache.ages()
    assert sorted(age[0].tolist()) == [1, 2, 3]
    assert held_ids(cache, 0) == [0.0, 1.0, 2.0]


def test_reset_of_one_world_leaves_the_others():
    cache = RollingKVCache(KVCacheConfig(window=3), LAYERS, batch_size=3)
    for n in range(2):
        cache.commit(*chunk(3, [n, 10 + n, 20 + n]))
    cache.reset([1])
    assert cache.num_chunks.tolist() == [2, 0, 2]
    assert held_ids(cache, 1) == []
    assert held_ids(cache, 0) == [0.0, 1.0]
    cache.commit(*chunk(3, [2, 99, 22]))
    assert held_ids(cache, 0) == [0.0, 1.0, 2.0]
    assert held_ids(cache, 1) == [99.0]
    assert held_ids(cache, 2) == [20.0, 21.0, 22.0]
    _, valid = cache.ages()
    assert valid.tolist() == [[True] * 3, [True, False, False], [True] * 3]


def test_reset_all_empties_the_view():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    cache.commit(*chunk(2, [1, 2]))
    cache.reset()
    assert cache.view(0) is None
    assert cache.num_chunks.tolist() == [0, 0]


def test_reset_accepts_a_bool_mask():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    cache.commit(*chunk(2, [1, 2]))
    cache.reset(torch.tensor([False, True]))
    assert cache.num_chunks.tolist() == [1, 0]


def test_replace_copies_another_cache_into_selected_worlds():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=3)
    for n in range(3):
        cache.commit(*chunk(3, [n, 10 + n, 20 + n]))
    fresh = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    fresh.commit(*chunk(2, [100, 200]))
    cache.replace([2, 0], fresh)
    assert cache.num_chunks.tolist() == [1, 3, 1]
    assert held_ids(cache, 2) == [100.0]
    assert held_ids(cache, 0) == [200.0]
    assert held_ids(cache, 1) == [11.0, 12.0]
    cache.commit(*chunk(3, [7, 13, 8]))
    assert held_ids(cache, 2) == [100.0, 8.0]


def test_replace_into_an_unallocated_cache():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    fresh = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=1)
    fresh.commit(*chunk(1, [4]))
    cache.replace([1], fresh)
    assert held_ids(cache, 1) == [4.0]
    assert held_ids(cache, 0) == []


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="window"):
        KVCacheConfig(window=0)
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    with pytest.raises(ValueError, match="layers"):
        cache.commit(*(x[:1] for x in chunk(2, [1, 2])))
    with pytest.raises(ValueError, match="b=2"):
        cache.commit(*chunk(1, [1]))
    with pytest.raises(IndexError):
        cache.reset([2])
    with pytest.raises(ValueError, match="batch size"):
        cache.replace([0], RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2))
    with pytest.raises(ValueError, match="same config"):
        cache.replace([0], RollingKVCache(KVCacheConfig(window=3), LAYERS, batch_size=1))


def test_derived_values_are_kept_until_the_cache_changes():
    cache = RollingKVCache(KVCacheConfig(window=2), LAYERS, batch_size=2)
    calls = []

    def held_sum() -> float:
        calls.append(1)
        view = cache.view(0)
        return 0.0 if view is None else float(view.k.sum())

    cache.commit(*chunk(2, [1, 2]))
    first = cache.derived("sum", held_sum)
    assert cache.derived("sum", held_sum) == first and len(calls) == 1
    changes = [
        lambda: cache.commit(*chunk(2, [3, 4])),
        lambda: cache.reset([0]),
        lambda: cache.replace([1], RollingKVCache(KVCacheConfig(window=2), LAYERS, 1)),
    ]
    for n, change in enumerate(changes, start=2):
        change()
        cache.derived("sum", held_sum)
        assert len(calls) == n, "every commit, reset and replace must drop derived values"
    assert cache.view(0) is None and cache.derived("sum", held_sum) == 0.0
