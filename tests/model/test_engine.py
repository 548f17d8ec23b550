"""WorldModelEngine: the chunk loop, seeding, per-world reset, executor seam, stats."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xworld_env.engine import ChunkOutput, EngineConfig, WorldModelEngine
from xworld_env.model.kv_cache import KVCacheConfig
from xworld_env.model.sampler import SamplerConfig

from .conftest import build_engine, context

CONFIG = EngineConfig(sampler=SamplerConfig(num_steps=3), kv_cache=KVCacheConfig(window=2))


def make_engine(config: EngineConfig = CONFIG) -> WorldModelEngine:
    return build_engine(config)


def actions(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, b, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def rollout(engine: WorldModelEngine, acts: torch.Tensor) -> list[ChunkOutput]:
    return [engine.step_chunk(a) for a in acts]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.resets: list[object] = []

    def run(self, s, l, block, x, ctx):  # noqa: E741
        self.calls.append((s, l))
        return block(x, ctx)

    def reset(self, worlds):
        self.resets.append(worlds)


def test_step_chunk_outputs():
    engine = make_engine()
    engine.start(*context(2), seeds=[0, 1])
    out = engine.step_chunk(actions(2, 1)[0])
    assert out.frames.shape == (2, 2, 7, 64, 64, 3) and out.frames.dtype == torch.uint8
    assert out.latents.shape == (2, 7, 2, 8, 8, 8)
    assert out.ego.shape == (2, 3)
    for prob in (out.collision_prob, out.off_road_prob):
        assert prob.shape == (2,) and bool(((prob >= 0) & (prob <= 1)).all())
    assert engine.kv.num_chunks.tolist() == [3, 3]


def test_same_seed_same_rollout_and_seed_matters():
    acts = actions(2, 3)
    runs = []
    for seeds in ([5, 6], [5, 6], [5, 7]):
        engine = make_engine()
        engine.start(*context(2), seeds=seeds)
        runs.append(rollout(engine, acts))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
        assert torch.equal(a.ego, b.ego)
    assert not torch.equal(runs[0][-1].latents[1], runs[2][-1].latents[1])


def test_resetting_one_world_does_not_change_the_other():
    acts = actions(2, 4)
    reference = make_engine()
    reference.start(*context(2), seeds=[0, 1])
    expected = rollout(reference, acts)

    engine = make_engine()
    engine.start(*context(2), seeds=[0, 1])
    got = rollout(engine, acts[:2])
    engine.reset_worlds([1])
    with pytest.raises(RuntimeError, match=r"worlds \[1\] were reset"):
        engine.step_chunk(acts[2])
    new_frames, new_actions, new_ego = context(1, chunks=1, seed=9)
    engine.start(new_frames, new_actions, new_ego, seeds=[42], worlds=[1])
    got += rollout(engine, acts[2:])
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g.latents[0], e.latents[0], rtol=1e-5, atol=1e-5)
        assert (g.frames[0].int() - e.frames[0].int()).abs().max() <= 1

    # The restarted world behaves as a fresh single-world engine with the same start.
    alone = make_engine()
    alone.start(new_frames, new_actions, new_ego, seeds=[42])
    for e, g in zip(rollout(alone, acts[2:, 1:]), got[2:], strict=True):
        torch.testing.assert_close(g.latents[1], e.latents[0], rtol=1e-5, atol=1e-5)


def test_executor_runs_denoising_passes_only():
    default = make_engine()
    default.start(*context(1), seeds=[3])
    expected = default.step_chunk(actions(1, 1)[0])

    engine = make_engine()
    recorder = Recorder()
    engine.executor = recorder
    engine.start(*context(1), seeds=[3])
    out = engine.step_chunk(actions(1, 1)[0])
    depth = engine.dit.config.depth
    assert recorder.calls == [(s, layer) for s in range(3) for layer in range(depth)]
    assert torch.equal(out.latents, expected.latents)
    assert len(recorder.resets) == 1 and recorder.resets[0] is None
    engine.reset_worlds([0])
    assert recorder.resets[1].tolist() == [0]


def test_start_from_frames_equals_start_from_latents():
    frames, acts, ego = context(1)
    by_frames, by_latents = make_engine(), make_engine()
    by_frames.start(frames, acts, ego, seeds=[0])
    by_latents.start(by_frames.encode(frames).clone(), acts, ego, seeds=[0])
    a = by_frames.step_chunk(actions(1, 1)[0])
    b = by_latents.step_chunk(actions(1, 1)[0])
    assert torch.equal(a.latents, b.latents)


def test_memory_stays_flat_and_stats_accumulate():
    engine = make_engine()
    engine.start(*context(1, chunks=1), seeds=[0])
    acts = actions(1, 5)
    engine.step_chunk(acts[0])
    engine.step_chunk(acts[1])
    size = engine.kv.memory_bytes()
    rollout(engine, acts[2:])
    assert engine.kv.memory_bytes() == size
    assert engine.stats["chunks"] == 5
    for key in ("prime_s", "dit_s", "kv_update_s", "decode_s", "heads_s"):
        assert engine.stats[key] > 0
    engine.reset_stats()
    assert engine.stats["chunks"] == 0


def test_bad_calls_are_rejected():
    engine = make_engine()
    with pytest.raises(RuntimeError, match="before start"):
        engine.step_chunk(torch.zeros(1, 2))
    frames, acts, ego = context(2)
    with pytest.raises(ValueError, match="one seed per world"):
        engine.start(frames, acts, ego, seeds=[0])
    with pytest.raises(ValueError, match="context frames"):
        engine.start(frames[:, :, :1], acts, ego, seeds=[0, 1])
    with pytest.raises(ValueError, match="context actions"):
        engine.start(frames, acts[:, :1], ego, seeds=[0, 1])
    engine.start(frames, acts, ego, seeds=[0, 1])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        engine.step_chunk(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="finite"):
        engine.step_chunk(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(IndexError):
        engine.start(frames[:1], acts[:1], ego[:1], seeds=[0], worlds=[2])


def test_fixed_noise_is_drawn_once_per_episode():
    config = EngineConfig(sampler=SamplerConfig(num_steps=3), kv_cache=KVCacheConfig(window=2),
                          noise="fixed")
    engine = make_engine(config)
    frames, acts, ego = context(2)
    engine.start(frames, acts, ego, seeds=[0, 1])
    fixed = engine._fixed.clone()
    assert fixed.shape == (3, 2, *engine.latent_shape)
    engine.step_chunk(actions(2, 1)[0])
    assert torch.equal(engine._fixed, fixed)  # stepping draws nothing new
    engine.start(frames[:1], acts[:1], ego[:1], seeds=[5], worlds=[1])
    assert torch.equal(engine._fixed[:, 0], fixed[:, 0])
    assert not torch.equal(engine._fixed[:, 1], fixed[:, 1])
    with pytest.raises(ValueError, match="noise"):
        EngineConfig(noise="pink")


def test_fixed_noise_rollout_is_reproducible():
    config = EngineConfig(sampler=SamplerConfig(num_steps=2), noise="fixed")
    outs = []
    for _ in range(2):
        engine = make_engine(config)
        engine.start(*context(1), seeds=[3])
        outs.append([engine.step_chunk(a).latents for a in actions(1, 2)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_decode_last_is_the_last_frame_of_decode_all():
    acts = actions(2, 2)
    full, last = make_engine(), make_engine()
    for engine in (full, last):
        engine.start(*context(2), seeds=[3, 4])
    for a in acts:
        out_all, out_last = full.step_chunk(a), last.step_chunk(a, decode="last")
        assert out_last.frames.shape == (2, 1, 7, 64, 64, 3)
        assert torch.equal(out_last.frames[:, 0], out_all.frames[:, -1])
        assert torch.equal(out_last.latents, out_all.latents)
    with pytest.raises(ValueError, match="decode must be one of"):
        last.step_chunk(acts[0], decode="first")
    assert last.kv.num_chunks.tolist() == [4, 4]  # the rejected call changed nothing


def test_bfloat16_compute_stays_close_to_float32():
    from xworld_env.bench.metrics import psnr

    acts = actions(1, 3)
    outs = {}
    for dtype in ("float32", "bfloat16"):
        engine = make_engine(dataclasses.replace(CONFIG, dtype=dtype))
        engine.start(*context(1), seeds=[0])
        outs[dtype] = rollout(engine, acts)
        # Weights stay float32; keys and values are computed (and cached) in the compute dtype.
        assert next(engine.dit.parameters()).dtype == torch.float32
        assert engine.kv.view(0).k.dtype == getattr(torch, dtype)
    for a, b in zip(outs["float32"], outs["bfloat16"], strict=True):
        assert b.latents.dtype == torch.float32 and b.frames.dtype == torch.uint8
        assert float(psnr(a.frames.numpy(), b.frames.numpy())) > 25.0
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype="int4")


def rollouts_under(setting: str, values: tuple[str, ...]) -> tuple[dict, dict]:
    """The same worlds and actions rolled out by engines that differ in one ``EngineConfig``
    setting (which each engine resolves to the value asked): (rollouts, engines) by value."""
    acts = actions(2, 3)
    outs, engines = {}, {}
    for value in values:
        engine = engines[value] = make_engine(dataclasses.replace(CONFIG, **{setting: value}))
        assert getattr(engine, setting) == value
        engine.start(*context(2), seeds=[0, 1])
        outs[value] = rollout(engine, acts)
    return outs, engines


def test_decoder_precision_changes_the_pixels_not_the_rollout():
    from xworld_env.bench.metrics import psnr

    outs, _ = rollouts_under("decode_dtype", ("float32", "bfloat16"))
    for a, b in zip(outs["float32"], outs["bfloat16"], strict=True):
        # Nothing reads the images back: latents, heads and so every later chunk are the same.
        assert torch.equal(a.latents, b.latents) and torch.equal(a.ego, b.ego)
        assert torch.equal(a.collision_prob, b.collision_prob)
        assert b.frames.dtype == torch.uint8 and b.frames.shape == a.frames.shape
        assert not torch.equal(a.frames, b.frames)
        assert float(psnr(a.frames.numpy(), b.frames.numpy())) > 40.0


def test_auto_decoder_precision(tmp_path):
    from xworld_env.engine import cpu_flags, resolve_decode_dtype

    cpu = torch.device("cpu")
    amx, avx512_bf16 = frozenset({"amx_bf16"}), frozenset({"avx512_bf16"})
    plain = frozenset({"avx2"})
    assert resolve_decode_dtype("auto", "float32", cpu, amx) == "bfloat16"
    assert resolve_decode_dtype("auto", "float32", cpu, avx512_bf16) == "bfloat16"
    assert resolve_decode_dtype("auto", "float32", cpu, plain) == "float32"
    # A DiT already in a lower precision decodes in it; an explicit choice is kept.
    assert resolve_decode_dtype("auto", "float16", cpu, amx) == "float16"
    assert resolve_decode_dtype("float32", "float32", cpu, amx) == "float32"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16 avx2\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "amx_bf16", "avx2"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    with pytest.raises(ValueError, match=r"decode_dtype must be one of \['auto', 'float32'"):
        EngineConfig(decode_dtype="int8")


def test_auto_attention_precision():
    from xworld_env.engine import resolve_attention_dtype

    cpu = torch.device("cpu")
    avx512_bf16, plain = frozenset({"avx512_bf16"}), frozenset({"avx2"})
    # bfloat16 attention only for an int8 DiT on hardware with bfloat16 dot products.
    assert resolve_attention_dtype("auto", "int8", cpu, avx512_bf16) == "bfloat16"
    assert resolve_attention_dtype("auto", "int8", cpu, plain) == "float32"
    assert resolve_attention_dtype("auto", "float32", cpu, avx512_bf16) == "float32"
    assert resolve_attention_dtype("auto", "bfloat16", cpu, avx512_bf16) == "bfloat16"
    assert resolve_attention_dtype("float32", "int8", cpu, avx512_bf16) == "float32"
    assert resolve_attention_dtype("bfloat16", "float32", cpu, plain) == "bfloat16"
    with pytest.raises(ValueError, match=r"attention_dtype must be one of \['auto', 'float32'"):
        EngineConfig(attention_dtype="int8")
    with pytest.raises(ValueError, match="applies to float32 and int8 DiTs"):
        EngineConfig(dtype="bfloat16", attention_dtype="float32")


def test_bfloat16_attention_engine_stays_close_to_float32():
    """An engine with bfloat16 attention rolls out near its float32-attention twin, and its
    KV cache stays float32."""
    outs, engines = rollouts_under("attention_dtype", ("float32", "bfloat16"))
    assert all(engine.kv.view(0).k.dtype == torch.float32 for engine in engines.values())
    for a, b in zip(outs["float32"], outs["bfloat16"], strict=True):
        assert not torch.equal(a.latents, b.latents)
        assert float((a.latents - b.latents).norm() / a.latents.norm()) < 2e-2


def test_kinematic_speed_follows_the_pedals_and_conditions_the_next_chunk():
    frames, acts, ego = context(2)
    heads_engine = make_engine()
    engine = make_engine(EngineConfig(sampler=CONFIG.sampler, kv_cache=CONFIG.kv_cache,
                                      speed="kinematic"))
    for e in (heads_engine, engine):
        e.start(frames, acts, ego, seeds=[0, 1])
    pedals = torch.tensor([[1.0, 0.0], [-1.0, 0.3]])
    first = engine.step_chunk(pedals)
    expected = (ego[:, -1, 0] + 2.5 * pedals[:, 0]).clamp(0.0, 40.0)
    torch.testing.assert_close(first.ego[:, 0], expected)
    # The other fields, the heads' own reading and the chunk itself are as with the heads.
    read = heads_engine.step_chunk(pedals)
    torch.testing.assert_close(read.ego[:, 1:], first.ego[:, 1:])
    torch.testing.assert_close(read.ego[:, 0], first.speed_read)
    torch.testing.assert_close(read.speed_read, read.ego[:, 0])
    torch.testing.assert_close(read.latents, first.latents)
    # The next chunk is conditioned on the kinematic speed, not on the heads' reading.
    assert not torch.allclose(first.ego[:, 0], first.speed_read)
    second = engine.step_chunk(pedals)
    torch.testing.assert_close(second.ego[:, 0], (expected + 2.5 * pedals[:, 0]).clamp(0.0, 40.0))
    assert not torch.equal(second.latents, heads_engine.step_chunk(pedals).latents)


@pytest.mark.parametrize(("settings", "message"), [
    ({"speed": "gps"}, r"speed must be one of \('heads', 'kinematic'\)"),
    ({"speed_gain": 0.0}, "speed_gain and max_speed must be positive"),
    ({"max_speed": -1.0}, "speed_gain and max_speed must be positive"),
])
def test_bad_speed_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**settings)
