"""X-Cache and the baselines under the real (tiny) DiT and engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.model.conftest import build_engine, make_autoencoder, make_dit, make_heads
from xworld_env.engine import EngineConfig, WorldModelEngine
from xworld_env.model.dit import KV_UPDATE_STEP, FullCompute
from xworld_env.model.kv_cache import KVCacheConfig
from xworld_env.model.quantize import int8_blocks
from xworld_env.model.sampler import SamplerConfig
from xworld_env.xcache import (
    FirstBlockCacheConfig,
    StaticReuseConfig,
    XCache,
    XCacheConfig,
    make_executor,
)
from xworld_env.xcache.stats import CacheStats, skip_rate_between

CONFIG = EngineConfig(sampler=SamplerConfig(num_steps=3), kv_cache=KVCacheConfig(window=2))
#: Gate that passes unless an entry points the other way (cosine below -0.5).
PERMISSIVE = {"floor": -0.5, "margin": 2.0, "max_deviation": math.inf,
              "max_rel_change": math.inf, "max_error": math.inf, "max_drift": math.inf}


def engine_with(executor, depth: int = 2) -> WorldModelEngine:
    engine = WorldModelEngine(CONFIG, make_autoencoder(), make_dit(depth=depth), make_heads())
    engine.executor = executor
    return engine


def start(engine: WorldModelEngine, b: int = 1, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, 1, 2, 7, 64, 64, 3), generator=g, dtype=torch.uint8)
    engine.start(frames, torch.zeros(b, 1, 2), torch.full((b, 1, 3), 10.0),
                 seeds=[seed + i for i in range(b)])


def rollout(executor, acts: torch.Tensor, b: int = 1, seed: int = 0, depth: int = 2):
    engine = engine_with(executor, depth)
    start(engine, b, seed)
    outs = [engine.step_chunk(a) for a in acts]
    return engine, outs


def constant_actions(n: int, b: int = 1) -> torch.Tensor:
    return torch.tensor([0.3, -0.2]).expand(n, b, 2).clone()


@pytest.mark.parametrize("span", [0, 1, 2])
def test_floor_above_one_is_bit_identical_to_full_compute(span):
    acts = constant_actions(4)
    _, full = rollout(FullCompute(), acts, depth=4)
    engine, cached = rollout(XCache(XCacheConfig(floor=1.5, span=span)), acts, depth=4)
    for a, b in zip(full, cached):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
    assert engine.executor.stats.summary()["reused_evaluations"] == 0


def test_kv_update_pass_never_skips_even_when_everything_reuses():
    acts = constant_actions(4)
    # Two warmup chunks: linear reuse (default) then has two computations of every cell.
    engine, outs = rollout(XCache(XCacheConfig(warmup_chunks=2, **PERMISSIVE)), acts)
    stats = engine.executor.stats.summary()
    assert stats["skip_rate"] == 1.0  # stress mode: every eligible cell reused
    # Replaying the same clean chunks through full-compute KV-writing passes (conditioned as
    # the engine conditions its passes) commits exactly the same keys/values.
    replay = engine_with(FullCompute())
    start(replay)
    for a, out in zip(acts, outs):
        chunk = replay.dit.chunk_inputs(a, replay._speed, replay.pass_times)
        replay.dit(out.latents, torch.zeros(1), a, replay._speed, kv=replay.kv,
                   step=KV_UPDATE_STEP, writes_kv=True, chunk=chunk)
        replay._speed = out.ego[:, 0]
    for layer in range(engine.dit.config.depth):
        got, want = engine.kv.view(layer), replay.kv.view(layer)
        assert torch.equal(got.k, want.k) and torch.equal(got.v, want.v)


def test_executor_refuses_nothing_on_kv_writing_passes():
    # Called directly on a KV-writing pass, X-Cache computes the block even in stress mode.
    engine, _ = rollout(XCache(XCacheConfig(**PERMISSIVE)), constant_actions(3))
    x = torch.randn(1, *engine.latent_shape)
    engine.dit(x, torch.zeros(1), torch.zeros(1, 2), torch.ones(1), kv=engine.kv,
               step=3, writes_kv=True, executor=engine.executor)  # raises if a block skipped


def test_warmup_and_reset():
    engine, _ = rollout(XCache(XCacheConfig(warmup_chunks=2, **PERMISSIVE)), constant_actions(4))
    chunks = list(engine.executor.stats.chunks)
    assert [c["reused"] for c in chunks[:2]] == [0, 0]
    assert all(c["reused"] > 0 for c in chunks[2:])
    engine.reset_worlds([0])
    assert engine.executor.chunk_index.tolist() == [0]
    assert not engine.executor.store.cell(0, 1).has.any()
    start(engine)
    engine.step_chunk(torch.zeros(1, 2))
    assert engine.executor.stats.last_chunk()["reused"] == 0


def test_abrupt_action_change_vetoes_reuse():
    acts = constant_actions(4)
    acts[3] = -acts[3]
    engine, _ = rollout(XCache(XCacheConfig(**PERMISSIVE)), acts)
    chunks = list(engine.executor.stats.chunks)
    assert chunks[2]["reused"] == chunks[2]["eligible"] > 0
    assert chunks[3]["eligible"] > 0 and chunks[3]["reused"] == 0


def test_relative_change_gates_reuse():
    acts = constant_actions(4)
    strict = {**PERMISSIVE, "max_rel_change": 1e-9}
    engine, _ = rollout(XCache(XCacheConfig(**strict)), acts)
    summary = engine.executor.stats.summary()
    assert summary["eligible_evaluations"] > 0 and summary["reused_evaluations"] == 0
    engine, _ = rollout(XCache(XCacheConfig(**PERMISSIVE)), acts)
    assert engine.executor.stats.summary()["reused_evaluations"] > 0


@pytest.mark.parametrize("span", [0, 1, 2])
def test_one_world_does_not_depend_on_another(span):
    # The predicted-error gate is on (a finite max_error): each world fits its own gains.
    cfg = XCacheConfig(**{**PERMISSIVE, "max_error": 1e30}, span=span)
    acts_a = constant_actions(6, 2)
    acts_b = acts_a.clone()
    acts_b[:, 1] = torch.rand(6, 2, generator=torch.Generator().manual_seed(5)) * 2 - 1
    engine_a, outs_a = rollout(XCache(cfg), acts_a, b=2, depth=4)
    engine_b, outs_b = rollout(XCache(cfg), acts_b, b=2, depth=4)
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a.latents[0], b.latents[0], rtol=0, atol=1e-5)
    ra, rb = engine_a.executor.stats, engine_b.executor.stats
    assert ra.world_reused[0] == rb.world_reused[0] > 0
    assert ra.world_eligible[0] == rb.world_eligible[0]
    assert ra.world_reused[1] != rb.world_reused[1] or not torch.equal(acts_a, acts_b)


def test_batch_mode_all_only_reuses_when_every_world_agrees():
    acts = constant_actions(3, 2)
    acts[2, 1] = -acts[2, 1]  # world 1 turns around in the last chunk
    engine, _ = rollout(XCache(XCacheConfig(batch_mode="all", **PERMISSIVE)), acts, b=2)
    assert engine.executor.stats.chunks[2]["reused"] == 0
    engine, _ = rollout(XCache(XCacheConfig(**PERMISSIVE)), acts, b=2)
    last = engine.executor.stats.chunks[2]
    assert 0 < last["reused"] < last["eligible"]  # gather: world 0 still reuses


def test_stats_counts_and_rates():
    # The published rule reuses from the first chunk after warmup (linear from the second).
    engine, _ = rollout(XCache(XCacheConfig(reuse="hold", **PERMISSIVE)), constant_actions(3))
    s = engine.executor.stats.summary()
    depth, steps = engine.dit.config.depth, CONFIG.sampler.num_steps
    # 3 chunks x (steps denoising passes + 1 KV pass) x depth blocks, one world.
    assert s["all_evaluations"] == 3 * (steps + 1) * depth
    # After the warmup chunk, every non-anchor cell of every denoising pass reused.
    assert s["reused_evaluations"] == 2 * steps * (depth - 1)
    assert s["skip_rate_all"] == pytest.approx(s["reused_evaluations"] / s["all_evaluations"])
    assert set(s["per_block"]) == set(range(1, depth)) and s["per_chunk"][0] == 0.0
    assert engine.executor.stats.counts() == (s["eligible_evaluations"], s["reused_evaluations"])


def test_skip_rate_between_two_counts():
    stats = CacheStats()
    stats.begin_chunk(2, 4)
    stats.decided(0, 1, np.array([True, True]), np.array([True, False]))
    before = stats.counts()
    assert before == (2, 1)
    assert skip_rate_between(before, stats.counts()) is None  # nothing eligible in between
    stats.decided(1, 1, np.array([True, True]), np.array([True, True]))
    stats.decided(2, 1, np.array([True, False]), np.array([False, False]))
    assert skip_rate_between(before, stats.counts()) == pytest.approx(2 / 3)


def test_one_decision_over_several_blocks_counts_as_each_of_them():
    eligible, reuse = np.array([True, True, False]), np.array([True, False, False])
    once, per_block = CacheStats(), CacheStats()
    for stats in (once, per_block):
        stats.begin_chunk(3, 5)
    once.decided(2, 1, eligible, reuse, cos=np.array([0.99, 0.9, 0.5]), blocks=3)
    per_block.decided(2, 1, eligible, reuse, cos=np.array([0.99, 0.9, 0.5]))
    for l in (2, 3):  # noqa: E741
        per_block.decided(2, l, eligible, reuse)
    a, b = once.summary(), per_block.summary()
    assert a == b
    assert a["per_block"] == {1: 0.5, 2: 0.5, 3: 0.5} and a["eligible_evaluations"] == 6
    assert once.last_chunk() == per_block.last_chunk() == {"eligible": 6, "reused": 3,
                                                           "evaluations": 15 + 9}
    assert once.last_chunk_per_world(3) == [3, 0, 0]


def test_spans_cut_the_non_anchor_blocks():
    executor = XCache(XCacheConfig(span=3, front_anchor=1, tail_anchor=1))
    executor.begin_chunk(1, 8)  # blocks 1..6 gate, in spans of 3
    assert [executor.span_of(b) for b in range(1, 7)] == [(1, 3)] * 3 + [(4, 6)] * 3
    executor = XCache(XCacheConfig(span=4))
    executor.begin_chunk(1, 8)
    assert [executor.span_of(b) for b in range(1, 8)] == [(1, 4)] * 4 + [(5, 7)] * 3
    executor = XCache(XCacheConfig(span=0))  # the default: one span of every non-anchor block
    executor.begin_chunk(1, 8)
    assert {executor.span_of(b) for b in range(1, 8)} == {(1, 7)}


def test_a_reused_span_adds_the_residual_of_the_whole_span():
    # One span over blocks 1..3 of a 4-block DiT, every eligible cell reused (stress mode).
    depth, steps = 4, CONFIG.sampler.num_steps
    engine = engine_with(XCache(XCacheConfig(span=0, reuse="hold", **PERMISSIVE)), depth)
    start(engine)
    calls: dict[str, list[torch.Tensor]] = {"span_in": [], "span_out": [], "inner": []}
    hooks = [
        engine.dit.blocks[0].register_forward_hook(lambda m, a, y: calls["span_in"].append(y)),
        engine.dit.final_layer.register_forward_pre_hook(
            lambda m, a: calls["span_out"].append(a[0])),
        *(engine.dit.blocks[b].register_forward_hook(lambda m, a, y: calls["inner"].append(y))
          for b in range(1, depth)),
    ]
    acts = constant_actions(2)
    engine.step_chunk(acts[0])  # warmup: computes every block and stores the span residuals
    residual = [o - i for i, o in zip(calls["span_in"][:steps], calls["span_out"][:steps])]
    for calls_so_far in calls.values():
        calls_so_far.clear()
    last = engine.step_chunk(acts[1])
    for hook in hooks:
        hook.remove()
    # Denoising passes: the span's blocks are not called; its output is input + residual.
    # Only the KV-update pass calls them (its last block stops at the keys and values).
    assert len(calls["inner"]) == depth - 2
    for s in range(steps):
        assert torch.equal(calls["span_out"][s], calls["span_in"][s] + residual[s])
    per_block = engine.executor.stats.summary()["per_block"]
    assert set(per_block) == set(range(1, depth)) and len(set(per_block.values())) == 1
    # The same as reusing the span's blocks one by one (up to the order of the float sums).
    one_by_one_cfg = XCacheConfig(span=1, reuse="hold", **PERMISSIVE)
    one_engine, one_by_one = rollout(XCache(one_by_one_cfg), acts, depth=depth)
    torch.testing.assert_close(last.latents, one_by_one[-1].latents, rtol=0, atol=1e-5)
    assert one_engine.executor.stats.summary()["pass_agreement"] == 1.0


def test_pass_agreement_counts_passes_whose_blocks_decided_alike():
    stats = CacheStats()
    stats.begin_chunk(2, 4)
    yes, no = np.array([True, True]), np.array([False, False])
    stats.decided(0, 1, yes, np.array([True, False]))
    stats.decided(0, 2, yes, yes)  # world 1 computed block 1, reuses block 2: mixed
    stats.decided(1, 1, np.array([True, False]), no)
    stats.decided(1, 2, np.array([True, False]), no)  # world 1 not gated in this pass
    assert stats.passes() == (3, 1)
    stats.begin_chunk(2, 4)
    stats.decided(0, 1, yes, yes)  # a new chunk opens a new pass at the same step
    summary = stats.summary()
    assert summary["gated_passes"] == 5 and summary["pass_agreement"] == pytest.approx(4 / 5)


def test_baselines_with_reuse_off_match_full_compute():
    acts = constant_actions(3)
    _, full = rollout(FullCompute(), acts)
    for executor in (make_executor("fbcache", threshold=0.0), make_executor("static", k=0, n=2)):
        _, outs = rollout(executor, acts)
        for a, b in zip(full, outs):
            assert torch.equal(a.latents, b.latents)


def test_static_reuse_alternates_and_fbcache_reuses():
    engine, _ = rollout(make_executor("static", k=1, n=2), constant_actions(5))
    reused = [c["reused"] > 0 for c in engine.executor.stats.chunks]
    assert reused == [False, False, True, False, True]
    engine, _ = rollout(make_executor("fbcache", threshold=1e9), constant_actions(3))
    assert engine.executor.stats.summary()["skip_rate"] == 1.0


@pytest.mark.parametrize(
    ("cache", "settings", "message"),
    [
        ("xcache", {"ema_alpha": 0.0}, "ema_alpha"),
        ("xcache", {"floor": float("nan")}, "floor"),
        ("xcache", {"batch_mode": "some"}, "batch_mode"),
        ("xcache", {"front_anchor": -1}, "front_anchor"),
        ("xcache", {"max_rel_change": 0.0}, "max_rel_change"),
        ("xcache", {"max_error": -1.0}, "max_error"),
        ("xcache", {"max_drift": 0.0}, "max_drift must be > 0"),
        ("xcache", {"span": -1}, "span"),
        ("xcache", {"reuse": "quadratic"}, "reuse must be one of"),
        ("xcache", {"position": "speed"}, "position must be one of"),
        ("xcache", {"max_consecutive": -1}, "max_consecutive"),
        ("xcache", {"max_ahead": 0.0}, "max_ahead must be > 0"),
        ("xcache", {"max_ahead": math.nan}, "max_ahead must be > 0"),
        ("xcache", {"treshold": 1}, "accepted"),
        ("static", {"k": 2, "n": 2}, "0 <= k < n"),
        ("fbcache", {"threshold": -1.0}, "threshold"),
        ("turbo", {}, "accepted: xcache, none, fbcache, static"),
    ],
)
def test_invalid_settings_are_rejected(cache, settings, message):
    with pytest.raises(ValueError, match=message):
        make_executor(cache, **settings)


def test_unknown_view_group_camera():
    with pytest.raises(ValueError, match="not in"):
        XCache(XCacheConfig(view_groups=(("front_wide", "roof"),)))


def test_static_config_validation():
    with pytest.raises(ValueError):
        StaticReuseConfig(k=-1)
    assert FirstBlockCacheConfig().threshold > 0


@pytest.mark.parametrize(("reuse", "dtype", "expected"), [
    ("linear", "float32", (math.inf, 0.02, 0.02)), ("linear", "bfloat16", (0.008, math.inf, 0.02)),
    ("hold", "float32", (0.003, math.inf, math.inf)),
    ("hold", "bfloat16", (0.005, math.inf, math.inf)),
    ("linear", "int8", (math.inf, 0.08, 0.02)), ("hold", "int8", (0.006, math.inf, math.inf)),
])
def test_thresholds_follow_the_precision_the_blocks_run_in(reuse, dtype, expected):
    import dataclasses

    seen = []

    class Recording(XCache):
        def rel_change_threshold(self, device):
            seen.append((super().rel_change_threshold(device), self.error_threshold(device),
                         self.drift_threshold(device)))
            return seen[-1][0]

    engine = build_engine(dataclasses.replace(CONFIG, dtype=dtype), depth=3)
    engine.executor = Recording(XCacheConfig(reuse=reuse))
    start(engine)
    for a in constant_actions(3):
        engine.step_chunk(a)
    assert seen and set(seen) == {expected}
    # A number set by the user holds in every precision.
    fixed = XCache(XCacheConfig(max_rel_change=0.002, max_error=0.01, max_drift=0.1))
    cpu = torch.device("cpu")

    def thresholds():
        return (fixed.rel_change_threshold(cpu), fixed.error_threshold(cpu),
                fixed.drift_threshold(cpu))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert thresholds() == (0.002, 0.01, 0.1)
    with int8_blocks():
        assert thresholds() == (0.002, 0.01, 0.1)
    assert thresholds() == (0.002, 0.01, 0.1)


def span_residuals(depth: int, reuse: str, chunks: int, **settings):
    """Span inputs and outputs of every denoising pass of a 2-chunk-warmup rollout in which
    every eligible cell is reused (one span over blocks 1.. of a ``depth``-block DiT)."""
    cfg = XCacheConfig(span=0, warmup_chunks=2, reuse=reuse, **PERMISSIVE, **settings)
    engine = engine_with(XCache(cfg), depth)
    start(engine)
    span_in, span_out = [], []
    engine.dit.blocks[0].register_forward_hook(lambda m, a, y: span_in.append(y))
    engine.dit.final_layer.register_forward_pre_hook(lambda m, a: span_out.append(a[0]))
    steps = CONFIG.sampler.num_steps
    per_chunk = []
    for a in constant_actions(chunks):
        span_in.clear(), span_out.clear()
        engine.step_chunk(a)
        per_chunk.append((list(span_in[:steps]), list(span_out[:steps])))
    return engine, per_chunk


def test_linear_reuse_by_input_continues_the_line_as_far_as_the_input_moved():
    from xworld_env.xcache.controller import LINE_RANGE
    from xworld_env.xcache.fingerprint import fingerprint
    from xworld_env.xcache.gate import line_position

    engine, per_chunk = span_residuals(depth=3, reuse="linear", chunks=4, position="input",
                                       max_ahead=math.inf)
    ex = engine.executor
    (in0, out0), (in1, out1) = per_chunk[:2]  # warmup: both computed
    action = torch.as_tensor(constant_actions(1)[0], dtype=torch.float32)

    def fp(x):
        return fingerprint(x, ex.groups, action, ex.config.budget)

    positions = []
    for s in range(CONFIG.sampler.num_steps):
        r0, r1 = out0[s] - in0[s], out1[s] - in1[s]
        for chunk in (2, 3):
            x, y = per_chunk[chunk][0][s], per_chunk[chunk][1][s]
            a = float(np.clip(line_position(fp(x), fp(in1[s]), fp(in0[s])), *LINE_RANGE)[0])
            positions.append(a)
            torch.testing.assert_close(y, x + (r1 + a * (r1 - r0)), rtol=0, atol=1e-6)
    # The inputs do move between chunks: the line is continued, not held.
    assert any(abs(a) > 1e-3 for a in positions)
    assert ex.stats.summary()["skip_rate"] == 1.0


def test_line_position_is_the_least_squares_position_on_the_line():
    from xworld_env.xcache.fingerprint import fingerprint
    from xworld_env.xcache.gate import line_position

    g = torch.Generator().manual_seed(3)
    groups = [[0, 1], [2, 3, 4], [5, 6]]
    prev, last, off = (torch.randn(2, 7, 1, 2, 2, 4, generator=g) for _ in range(3))

    def fp(x):
        return fingerprint(x, groups, torch.zeros(x.shape[0], 2), budget=8)

    # On the line: 1.5 intervals past the last point for world 0, back at the previous for 1.
    now = torch.stack([last[0] + 1.5 * (last[0] - prev[0]), prev[1]])
    np.testing.assert_allclose(line_position(fp(now), fp(last), fp(prev)), [1.5, -1.0],
                               rtol=1e-5)
    # Off the line: the projection, by hand.
    step, moved = (last - prev).flatten(1), (off - last).flatten(1)
    expected = (moved * step).sum(1) / (step * step).sum(1)
    np.testing.assert_allclose(line_position(fp(off), fp(last), fp(prev)), expected.numpy(),
                               rtol=1e-4)
    # No line (two equal points): 0, the last computation as it is.
    np.testing.assert_array_equal(line_position(fp(off), fp(last), fp(last)), [0.0, 0.0])


def test_linear_reuse_by_time_continues_the_line_through_the_last_two_computations():
    # Chunk 2 lies one interval past chunk 1, chunk 3 two; max_ahead stops the line there.
    for max_ahead, aheads in ((math.inf, (1.0, 2.0)), (1.0, (1.0, 1.0)), (1.5, (1.0, 1.5))):
        engine, per_chunk = span_residuals(depth=3, reuse="linear", chunks=4, position="time",
                                           max_ahead=max_ahead)
        (in0, out0), (in1, out1) = per_chunk[:2]  # warmup: both computed
        for s in range(CONFIG.sampler.num_steps):
            r0, r1 = out0[s] - in0[s], out1[s] - in1[s]
            for chunk, ahead in zip((2, 3), aheads):
                x, y = per_chunk[chunk][0][s], per_chunk[chunk][1][s]
                torch.testing.assert_close(y, x + (r1 + ahead * (r1 - r0)), rtol=0, atol=1e-6)
        assert engine.executor.stats.summary()["skip_rate"] == 1.0
    # The published rule adds the last computed residual as it is.
    _, held = span_residuals(depth=3, reuse="hold", chunks=3)
    (_, _), (in1, out1), (x2, y2) = held
    for s in range(CONFIG.sampler.num_steps):
        assert torch.equal(y2[s], x2[s] + (out1[s] - in1[s]))


def test_linear_reuse_computes_until_a_world_has_two_computations():
    # Warmup of one chunk: chunk 1 has a single computation behind every cell, so it computes
    # (bit-identical to full compute, while ``hold`` reuses there); chunk 2 continues the line.
    acts = constant_actions(3)
    _, full = rollout(FullCompute(), acts, depth=3)
    engine, lin = rollout(XCache(XCacheConfig(reuse="linear", **PERMISSIVE)), acts, depth=3)
    _, hold = rollout(XCache(XCacheConfig(reuse="hold", **PERMISSIVE)), acts, depth=3)
    assert torch.equal(lin[1].latents, full[1].latents)
    assert not torch.equal(hold[1].latents, full[1].latents)
    per_chunk = engine.executor.stats.summary()["per_chunk"]
    assert per_chunk[1:] == [0.0, 1.0]


def test_cell_keeps_each_worlds_previous_computation():
    from xworld_env.xcache.fingerprint import fingerprint
    from xworld_env.xcache.store import Cell

    g = torch.Generator().manual_seed(0)
    groups = [[0, 1], [2, 3, 4], [5, 6]]

    def fp(x):
        return fingerprint(x, groups, torch.zeros(x.shape[0], 2), budget=8)

    x = [torch.randn(2, 7, 1, 2, 2, 4, generator=g) for _ in range(2)]
    r = [torch.randn(2, 5, 4, generator=g) for _ in range(2)]
    cell = Cell(2, keep_previous=True)
    both = torch.arange(2)
    cell.write(both, r[0].clone(), fp(x[0]), chunk=torch.tensor([1, 1]))
    assert not cell.has_previous.any()
    np.testing.assert_array_equal(cell.steps_ahead(torch.tensor([3, 3])), [0.0, 0.0])
    one = torch.tensor([0])
    cell.write(one, r[1][:1].clone(), fp(x[1][:1]), chunk=torch.tensor([3]))
    assert cell.has_previous.tolist() == [True, False]
    ahead = cell.steps_ahead(torch.tensor([4, 4]))
    np.testing.assert_array_equal(ahead, [0.5, 0.0])  # (4 - 3) / (3 - 1); world 1: one only
    residual, line = cell.extrapolated_residual(ahead), cell.extrapolated_fingerprint(ahead)
    torch.testing.assert_close(residual[0], r[1][0] + 0.5 * (r[1][0] - r[0][0]))
    assert torch.equal(residual[1], r[0][1])
    torch.testing.assert_close(line.samples[0][0], 1.5 * fp(x[1][:1]).samples[0][0]
                               - 0.5 * fp(x[0][:1]).samples[0][0])
    assert torch.equal(line.samples[0][1], fp(x[0]).samples[0][1])
    cell.reset(one)
    assert not cell.has_previous.any()
    # Without history a cell keeps nothing more (the published rule's memory).
    plain = Cell(2)
    plain.write(both, r[0], fp(x[0]), chunk=torch.tensor([1, 1]))
    plain.write(both, r[1], fp(x[1]), chunk=torch.tensor([2, 2]))
    assert plain.previous_residual is None and not plain.has_previous.any()


def test_line_continuations_are_kept_per_ahead_until_the_next_write():
    from xworld_env.xcache.fingerprint import fingerprint
    from xworld_env.xcache.store import Cell

    g = torch.Generator().manual_seed(2)
    groups = [[0, 1], [2, 3, 4], [5, 6]]
    x = [torch.randn(2, 7, 1, 2, 2, 4, generator=g) for _ in range(3)]
    r = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    cell = Cell(2, keep_previous=True)
    both = torch.arange(2)
    for i in range(2):
        cell.write(both, r[i].clone(), fingerprint(x[i], groups, torch.zeros(2, 2)),
                   chunk=torch.tensor([i + 1, i + 1]))
    ahead = np.array([1.0, 0.5], np.float32)
    residual, line = cell.extrapolated_residual(ahead), cell.extrapolated_fingerprint(ahead)
    # The same continuation again: the same objects, not a recomputation.
    assert cell.extrapolated_residual(ahead.copy()) is residual
    assert cell.extrapolated_fingerprint(ahead.copy()) is line
    # Another ahead is computed for itself.
    other = np.array([0.5, 0.5], np.float32)
    torch.testing.assert_close(cell.extrapolated_residual(other)[0],
                               r[1][0] + 0.5 * (r[1][0] - r[0][0]))
    # A write (here of world 0 only, in place) makes every continuation stale.
    cell.write(torch.tensor([0]), r[2][:1].clone(),
               fingerprint(x[2][:1], groups, torch.zeros(1, 2)), chunk=torch.tensor([3]))
    after = cell.extrapolated_residual(ahead)
    torch.testing.assert_close(after[0], r[2][0] + (r[2][0] - r[1][0]))
    torch.testing.assert_close(after[1], r[1][1] + 0.5 * (r[1][1] - r[0][1]))
    fresh = cell.fingerprint.extrapolate(cell.previous_fingerprint, ahead)
    np.testing.assert_array_equal(cell.extrapolated_fingerprint(ahead).packed.rows,
                                  fresh.packed.rows)


def test_cell_store_memory_counts_kept_line_continuations():
    from xworld_env.xcache.store import CellStore

    store = CellStore(keep_previous=True)
    store.resize(2)
    cell = store.cell(0, 1)
    r = torch.randn(2, 5, 4)
    for chunk in (1, 2):
        cell.write(torch.arange(2), r.clone() * chunk, chunk=torch.tensor([chunk, chunk]))
    held = store.memory_bytes()
    assert held == 2 * r.numel() * 4  # the last and the previous residual
    cell.extrapolated_residual(np.ones(2, np.float32))
    assert store.memory_bytes() == held + r.numel() * 4


def test_reuse_error_is_the_relative_error_of_what_reuse_would_have_added():
    from xworld_env.xcache.store import Cell

    g = torch.Generator().manual_seed(1)
    r = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    both = torch.arange(2)
    for keep in (True, False):
        cell = Cell(2, keep_previous=keep)
        cell.write(both, r[0].clone(), chunk=torch.tensor([1, 1]))
        cell.write(both, r[1].clone(), chunk=torch.tensor([2, 2]))
        assert cell.reusable().all()
        # Chunk 4, two chunks past the last computation: linear continues the line two steps.
        reused = r[1] + 2 * (r[1] - r[0]) if keep else r[1]
        ahead = cell.steps_ahead(torch.tensor([4, 4])) if keep else np.zeros(2, np.float32)
        err = cell.reuse_error(torch.tensor([1]), r[2][1:], ahead)
        expected = (r[2][1] - reused[1]).abs().mean() / r[2][1].abs().mean()
        np.testing.assert_allclose(err, [expected.item()], rtol=1e-5)
        cell.gain_num[:], cell.gain_den[:] = 1.0, 2.0
        cell.reset(torch.tensor([0]))
        assert cell.gain_den.tolist() == [0.0, 2.0] and cell.gain_num.tolist() == [0.0, 1.0]


def test_predicted_error_reuses_only_after_a_fitted_gain():
    # Warmup 1: chunk 1 gives the first computation, chunk 2 the second (a line), chunk 3 the
    # first one the cell could have continued: the gain is fitted there, and reuse starts at 4.
    acts = constant_actions(5)
    loose = {**PERMISSIVE, "max_error": 1e30}
    engine, outs = rollout(XCache(XCacheConfig(**loose)), acts, depth=3)
    _, full = rollout(FullCompute(), acts, depth=3)
    per_chunk = engine.executor.stats.summary()["per_chunk"]
    assert per_chunk[1:] == [0.0, 0.0, 1.0, 1.0]
    for a, b in zip(outs[:3], full[:3]):
        assert torch.equal(a.latents, b.latents)
    errors = engine.executor.stats.summary()["error_percentiles"]
    assert 0.0 < errors["p5"] <= errors["p95"] < 1e30
    # A threshold below every prediction: never reused.
    strict = {**PERMISSIVE, "max_error": 1e-12}
    engine, _ = rollout(XCache(XCacheConfig(**strict)), acts, depth=3)
    summary = engine.executor.stats.summary()
    assert summary["eligible_evaluations"] > 0 and summary["reused_evaluations"] == 0


def test_max_consecutive_bounds_a_run_of_reuses_per_world():
    # Every eligible cell passes the gate; at most two reuses in a row, then a computation.
    acts = constant_actions(8)
    capped = XCache(XCacheConfig(**{**PERMISSIVE, "max_consecutive": 2}))
    engine, _ = rollout(capped, acts, depth=3)
    per_chunk = engine.executor.stats.summary()["per_chunk"]
    assert per_chunk[1:] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    free = XCache(XCacheConfig(**{**PERMISSIVE, "max_consecutive": 0}))
    engine, _ = rollout(free, acts, depth=3)
    assert engine.executor.stats.summary()["per_chunk"][1:] == [0.0] + [1.0] * 6


def test_cell_measures_the_drift_of_its_residual_per_chunk():
    from xworld_env.xcache.store import Cell

    g = torch.Generator().manual_seed(2)
    r = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    for keep in (True, False):
        cell = Cell(2, keep_previous=keep)
        cell.write(torch.arange(2), r[0].clone(), chunk=torch.tensor([1, 1]))
        assert np.isinf(cell.drift).all()  # one computation: unknown
        # World 0 computes again three chunks later; world 1 does not.
        cell.write(torch.tensor([0]), r[1][:1].clone(), chunk=torch.tensor([4]))
        change = (r[1][0] - r[0][0]).abs().mean() / r[1][0].abs().mean()
        np.testing.assert_allclose(cell.drift[0], change.item() / 3, rtol=1e-5)
        assert np.isinf(cell.drift[1])
        cell.reset(torch.tensor([0]))
        assert np.isinf(cell.drift).all()


def test_max_drift_bounds_the_reuses_past_the_line():
    # Every eligible cell passes the gate. Chunks 0 and 1 compute (warmup, then a second
    # computation for the line). With max_ahead 1 the line covers as many chunks past the last
    # computation as lay between the last two: chunk 2; chunk 3 lies one past it, and any drift
    # there exceeds a tiny max_drift: computed. Then 3 - 1 = 2 chunks are covered (4, 5), and 6
    # computes; then 7, 8, 9, and 10 computes.
    acts = constant_actions(11)
    engine, _ = rollout(XCache(XCacheConfig(**{**PERMISSIVE, "max_drift": 1e-9})), acts, depth=3)
    summary = engine.executor.stats.summary()
    assert summary["per_chunk"][1:] == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert summary["drift_percentiles"]["p95"] > 1e-9  # what vetoed chunks 3, 6 and 10
    # A threshold above any drift: every eligible chunk reused, as with the bound off.
    engine, _ = rollout(XCache(XCacheConfig(**{**PERMISSIVE, "max_drift": 1e9})), acts, depth=3)
    assert engine.executor.stats.summary()["per_chunk"][1:] == [0.0] + [1.0] * 9
    # Under the published rule a reuse follows no line: once a world knows its drift, every
    # chunk past the last computation adds to it. With one computation the drift is unknown.
    hold = XCacheConfig(**{**PERMISSIVE, "max_drift": 1e-9, "reuse": "hold"})
    engine, _ = rollout(XCache(hold), acts[:4], depth=3)
    assert engine.executor.stats.summary()["per_chunk"][1:] == [0.0, 0.0, 0.0]
