"""CausalDiT: cached chunk loop == block-causal sequence pass, causality, executors, presets."""

from __future__ import annotations

import pytest
import torch

from xworld_env.model.dit import (
    KV_UPDATE_STEP,
    PRESETS,
    BlockContext,
    CausalDiT,
    DiTBlock,
    FullCompute,
    attention_dtype,
    attention_precision,
    dit_config,
)
from xworld_env.model.kv_cache import KVCacheConfig, RollingKVCache

from .conftest import make_dit, randomize_zero_init

TOL = {"rtol": 1e-9, "atol": 1e-9}


def sequence(model: CausalDiT, b: int, n: int, seed: int = 0):
    """Random clean/noisy latents, actions, speeds and times of n chunks, in the model's dtype."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    shape = (
        b,
        n,
        cfg.num_cameras,
        cfg.frames_per_chunk,
        cfg.latent_size,
        cfg.latent_size,
        cfg.latent_channels,
    )
    clean = torch.randn(shape, generator=g, dtype=dtype)
    noisy = torch.randn(shape, generator=g, dtype=dtype)
    action = torch.rand(b, n, 2, generator=g, dtype=dtype) * 2 - 1
    speed = torch.rand(b, n, generator=g, dtype=dtype) * 30
    t = torch.rand(b, n, generator=g, dtype=dtype)
    return clean, noisy, action, speed, t


class Recorder:
    """An executor that computes every block and records where it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def run(self, s, l, block, x, ctx):  # noqa: E741
        self.calls.append((s, l))
        return block(x, ctx)


class SkipAll:
    """An executor that never computes a block (what a broken cache would do)."""

    def run(self, s, l, block, x, ctx):  # noqa: E741
        return x


@torch.no_grad()
@pytest.mark.parametrize(("window", "sink", "n"), [(2, False, 5), (None, False, 3), (2, True, 3)])
def test_cached_chunk_loop_equals_block_causal_sequence(dit64, window, sink, n):
    """KV-update passes chunk by chunk give what one masked pass over the whole sequence gives,
    and so does every denoising pass against its teacher-forcing reference."""
    b = 2
    clean, noisy, action, speed, t = sequence(dit64, b, n)
    cache_window = window if window is not None else n
    kv = RollingKVCache(KVCacheConfig(window=cache_window, sink=sink), dit64.config.depth, b)
    kv_outs, denoise_outs = [], []
    for i in range(n):
        denoise_outs.append(dit64(noisy[:, i], t[:, i], action[:, i], speed[:, i], kv=kv, step=1))
        kv_outs.append(
            dit64(clean[:, i], t.new_zeros(b), action[:, i], speed[:, i], kv=kv, writes_kv=True)
        )
    ref_window = None if sink else window  # with a sink, nothing is evicted for n <= window + 1
    torch.testing.assert_close(
        torch.stack(kv_outs, 1), dit64.forward_sequence(clean, action, speed, ref_window), **TOL
    )
    torch.testing.assert_close(
        torch.stack(denoise_outs, 1),
        dit64.forward_sequence(clean, action, speed, ref_window, noisy=noisy, t=t),
        **TOL,
    )


@torch.no_grad()
def test_float32_cache_agrees_with_sequence():
    model = randomize_zero_init(CausalDiT(PRESETS["test"])).eval()
    clean, _, action, speed, _ = sequence(model, 1, 4)
    kv = RollingKVCache(KVCacheConfig(window=2), model.config.depth, 1)
    outs = [
        model(clean[:, i], speed.new_zeros(1), action[:, i], speed[:, i], kv=kv, writes_kv=True)
        for i in range(4)
    ]
    ref = model.forward_sequence(clean, action, speed, window=2)
    torch.testing.assert_close(torch.stack(outs, 1), ref, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_chunk_output_does_not_depend_on_later_chunks(dit64):
    clean, noisy, action, speed, t = sequence(dit64, 1, 4)
    out = dit64.forward_sequence(clean, action, speed, noisy=noisy, t=t)
    clean2, noisy2, action2, speed2, t2 = (x.clone() for x in (clean, noisy, action, speed, t))
    for x in (clean2, noisy2):
        x[:, 2:] += 1.0
    action2[:, 2:] = -action2[:, 2:]
    speed2[:, 2:] += 5.0
    t2[:, 2:] = 1 - t2[:, 2:]
    out2 = dit64.forward_sequence(clean2, action2, speed2, noisy=noisy2, t=t2)
    torch.testing.assert_close(out2[:, :2], out[:, :2], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[:, 2:], out[:, 2:])


@torch.no_grad()
def test_past_is_attended_to(dit64):
    """The cache changes the output (the equivalence tests are not vacuous)."""
    clean, noisy, action, speed, t = sequence(dit64, 1, 2)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 1)
    alone = dit64(noisy[:, 1], t[:, 1], action[:, 1], speed[:, 1], kv=kv)
    dit64(clean[:, 0], t.new_zeros(1), action[:, 0], speed[:, 0], kv=kv, writes_kv=True)
    with_past = dit64(noisy[:, 1], t[:, 1], action[:, 1], speed[:, 1], kv=kv)
    assert (alone - with_past).abs().max() > 1e-3


@torch.no_grad()
def test_full_compute_executor_equals_direct_call(dit64):
    clean, noisy, action, speed, t = sequence(dit64, 2, 2)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 2)
    dit64(clean[:, 0], t.new_zeros(2), action[:, 0], speed[:, 0], kv=kv, writes_kv=True)
    args = (noisy[:, 1], t[:, 1], action[:, 1], speed[:, 1])
    default = dit64(*args, kv=kv, step=2)
    full = dit64(*args, kv=kv, step=2, executor=FullCompute())
    recorder = Recorder()
    recorded = dit64(*args, kv=kv, step=2, executor=recorder)
    assert torch.equal(default, full)
    assert torch.equal(default, recorded)
    assert recorder.calls == [(2, layer) for layer in range(dit64.config.depth)]
    assert kv.num_chunks.tolist() == [1, 1], "a read-only pass must not write the cache"


@torch.no_grad()
def test_kv_writing_pass_must_compute_every_block(dit64):
    clean, _, action, speed, t = sequence(dit64, 1, 1)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 1)
    dit64(clean[:, 0], t[:, 0], action[:, 0], speed[:, 0], kv=kv, executor=SkipAll())
    with pytest.raises(RuntimeError, match="KV-writing"):
        dit64(
            clean[:, 0],
            t.new_zeros(1),
            action[:, 0],
            speed[:, 0],
            kv=kv,
            writes_kv=True,
            executor=SkipAll(),
        )
    assert kv.num_chunks.tolist() == [0]


@torch.no_grad()
def test_worlds_of_a_batch_are_independent(dit64):
    """World 0 computes the same whether world 1 has a past or was just reset."""
    clean, noisy, action, speed, t = sequence(dit64, 2, 3)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 2)
    for i in range(2):
        dit64(clean[:, i], t.new_zeros(2), action[:, i], speed[:, i], kv=kv, writes_kv=True)
    both = dit64(noisy[:, 2], t[:, 2], action[:, 2], speed[:, 2], kv=kv)
    kv.reset([1])
    masked = dit64(noisy[:, 2], t[:, 2], action[:, 2], speed[:, 2], kv=kv)
    torch.testing.assert_close(masked[0], both[0], **TOL)
    alone = dit64(noisy[1:, 2], t[1:, 2], action[1:, 2], speed[1:, 2])
    torch.testing.assert_close(masked[1], alone[0], **TOL)


@torch.no_grad()
def test_block_on_a_subset_of_worlds(dit64):
    """``ctx.select`` lets an executor compute a block for some worlds only."""
    clean, noisy, action, speed, t = sequence(dit64, 3, 2)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 3)
    dit64(clean[:, 0], t.new_zeros(3), action[:, 0], speed[:, 0], kv=kv, writes_kv=True)
    kv.reset([1])
    captured: list[tuple[DiTBlock, torch.Tensor, BlockContext]] = []

    class Capture:
        def run(self, s, l, block, x, ctx):  # noqa: E741
            captured.append((block, x, ctx))
            return block(x, ctx)

    dit64(noisy[:, 1], t[:, 1], action[:, 1], speed[:, 1], kv=kv, executor=Capture())
    block, x, ctx = captured[-1]
    worlds = torch.tensor([2, 1])
    torch.testing.assert_close(block(x[worlds], ctx.select(worlds)), block(x, ctx)[worlds], **TOL)


def test_zero_init_starts_as_identity_blocks_and_zero_output():
    model = CausalDiT(PRESETS["test"]).eval()
    cfg = model.config
    x = torch.randn(
        2,
        cfg.num_cameras,
        cfg.frames_per_chunk,
        cfg.latent_size,
        cfg.latent_size,
        cfg.latent_channels,
    )
    with torch.no_grad():
        out = model(x, torch.rand(2), torch.zeros(2, 2), torch.ones(2))
    assert torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_action_field_starts_at_zero_and_reaches_every_token_with_the_action():
    """A new action field adds nothing; trained, it alone makes the output depend on the
    action (the adaLN action path zeroed here) and differently at different tokens."""
    plain, with_field = make_dit(), make_dit(action_field=True)
    clean, noisy, action, speed, t = sequence(plain, 2, 2)
    fresh = CausalDiT(with_field.config)
    assert not fresh.action_field.weight.any()
    fresh.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(
        fresh.forward_sequence(clean, action, speed, noisy=noisy, t=t),
        plain.forward_sequence(clean, action, speed, noisy=noisy, t=t), rtol=0, atol=0,
    )
    for model in (plain, with_field):
        model.cond_embedder.mlp[2].weight.zero_()
        model.cond_embedder.mlp[2].bias.zero_()
    flipped = -action
    for model, reacts in ((plain, False), (with_field, True)):
        a = model.forward_sequence(clean, action, speed, noisy=noisy, t=t)
        b = model.forward_sequence(clean, flipped, speed, noisy=noisy, t=t)
        assert (not torch.equal(a, b)) == reacts
    offsets = with_field.action_field(action[:, 0], speed[:, 0])
    assert offsets.shape == (2, *with_field.config.chunk_shape[:2], 4, 4, 64)
    assert not torch.allclose(offsets[:, 0, 0, 0, 0], offsets[:, 1, 0, 2, 3])


def test_presets_and_token_count():
    assert set(PRESETS) >= {"test", "tiny", "small", "base"}
    tiny = PRESETS["tiny"]
    assert (tiny.width, tiny.depth, tiny.num_heads) == (256, 8, 4)
    test = PRESETS["test"]
    assert (test.width, test.depth, test.num_heads) == (64, 2, 2)
    assert tiny.tokens_per_chunk == 7 * 2 * 16
    assert dit_config("tiny", depth=3).depth == 3
    with pytest.raises(KeyError, match="unknown DiT preset"):
        dit_config("huge")
    with pytest.raises(TypeError, match="unknown DiTConfig fields"):
        dit_config("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible"):
        dit_config("tiny", num_heads=3)


def test_wrong_shapes_are_rejected(dit64):
    clean, _, action, speed, t = sequence(dit64, 1, 1)
    with pytest.raises(ValueError, match="latents of shape"):
        dit64(clean[:, 0, :3], t[:, 0], action[:, 0], speed[:, 0])
    with pytest.raises(ValueError, match="needs a kv cache"):
        dit64(clean[:, 0], t[:, 0], action[:, 0], speed[:, 0], writes_kv=True)
    kv = RollingKVCache(KVCacheConfig(), dit64.config.depth, 2)
    with pytest.raises(ValueError, match="2 worlds"):
        dit64(clean[:, 0], t[:, 0], action[:, 0], speed[:, 0], kv=kv)


@torch.no_grad()
def test_commit_kv_writes_what_a_full_kv_writing_pass_writes(dit64):
    """The lean KV-update pass (last block stops at its keys/values, no final layer) commits
    exactly the cache of a full ``writes_kv`` forward, chunk after chunk, window rolling."""
    b, n = 2, 4
    clean, noisy, action, speed, t = sequence(dit64, b, n)
    full = RollingKVCache(KVCacheConfig(window=2), dit64.config.depth, b)
    lean = RollingKVCache(KVCacheConfig(window=2), dit64.config.depth, b)
    for i in range(n):
        dit64(clean[:, i], t.new_zeros(b), action[:, i], speed[:, i], kv=full, writes_kv=True)
        dit64.commit_kv(clean[:, i], action[:, i], speed[:, i], lean)
        for layer in range(dit64.config.depth):
            torch.testing.assert_close(lean.view(layer).k, full.view(layer).k, rtol=0, atol=0)
            torch.testing.assert_close(lean.view(layer).v, full.view(layer).v, rtol=0, atol=0)
        args = (noisy[:, i], t[:, i], action[:, i], speed[:, i])
        torch.testing.assert_close(dit64(*args, kv=lean), dit64(*args, kv=full), rtol=0, atol=0)
    assert lean.num_chunks.tolist() == full.num_chunks.tolist() == [n, n]
    with pytest.raises(ValueError, match="kv cache holds"):
        dit64.commit_kv(clean[:1, 0], action[:1, 0], speed[:1, 0], lean)


@torch.no_grad()
def test_attention_precision_rounds_attention_only():
    """Under ``attention_precision(bfloat16)`` the chunk loop stays close to float32 but is not
    float32's; the cache it commits and what it returns stay float32, and the mark is gone
    after the block."""
    dit = make_dit(action_field=True)
    b, n = 2, 3
    clean, noisy, action, speed, t = sequence(dit, b, n)
    caches = {dtype: RollingKVCache(KVCacheConfig(window=2), dit.config.depth, b)
              for dtype in (None, torch.bfloat16)}
    for i in range(n):
        args = (noisy[:, i], t[:, i], action[:, i], speed[:, i])
        outs = {}
        for dtype, kv in caches.items():
            with attention_precision(dtype):
                outs[dtype] = dit(*args, kv=kv)
                dit.commit_kv(clean[:, i], action[:, i], speed[:, i], kv)
        low, ref = outs[torch.bfloat16], outs[None]
        assert low.dtype == torch.float32
        assert not torch.equal(low, ref)
        assert float((low - ref).norm() / ref.norm()) < 2e-2
    k = caches[torch.bfloat16].view(0).k
    assert k.dtype == torch.float32
    assert attention_dtype() is None


@torch.no_grad()
def test_chunk_inputs_computed_once_give_the_same_passes(dit64):
    """Passes given the chunk's precomputed inputs compute exactly what passes that compute
    them do; inputs of another action tensor are refused."""
    b = 2
    clean, noisy, action, speed, t = sequence(dit64, b, 2)
    caches = [RollingKVCache(KVCacheConfig(window=2), dit64.config.depth, b) for _ in range(2)]
    for i in range(2):
        a, v = action[:, i], speed[:, i]
        chunk = dit64.chunk_inputs(a, v)
        own = dit64(noisy[:, i], t[:, i], a, v, kv=caches[0])
        shared = dit64(noisy[:, i], t[:, i], a, v, kv=caches[1], chunk=chunk)
        assert torch.equal(own, shared)
        dit64.commit_kv(clean[:, i], a, v, caches[0])
        dit64.commit_kv(clean[:, i], a, v, caches[1], chunk=chunk)
        last = dit64.config.depth - 1
        assert torch.equal(caches[0].view(last).k, caches[1].view(last).k)
    with pytest.raises(ValueError, match="another action"):
        dit64(noisy[:, 0], t[:, 0], action[:, 0].clone(), speed[:, 0], chunk=chunk)


@torch.no_grad()
def test_chunk_inputs_with_times_condition_every_pass_once(dit64):
    """Given the passes' flow times, ``chunk_inputs`` conditions every pass and modulates
    every block up front; the passes then use those (and compute what they would compute on
    their own, to float rounding), and a pass at another time computes its own."""
    b = 2
    clean, noisy, action, speed, _ = sequence(dit64, b, 2)
    a, v = action[:, 1], speed[:, 1]
    times = {0: 1.0, 1: 0.55, KV_UPDATE_STEP: 0.0}
    chunk = dit64.chunk_inputs(a, v, times)
    assert sorted(chunk.passes) == sorted(times)
    caches = [RollingKVCache(KVCacheConfig(window=2), dit64.config.depth, b) for _ in range(2)]
    for kv in caches:
        dit64.commit_kv(clean[:, 0], action[:, 0], speed[:, 0], kv)
    seen = []

    class Capture:
        def run(self, s, l, block, x, ctx):  # noqa: E741
            seen.append(ctx.modulation)
            return block(x, ctx)

    for step in (0, 1):
        t = torch.full((b,), times[step])
        shared = dit64(noisy[:, 1], t, a, v, kv=caches[0], step=step, chunk=chunk,
                       executor=Capture())
        assert all(m is chunk.passes[step].modulations[l] for l, m in enumerate(seen))  # noqa: E741
        seen.clear()
        own = dit64(noisy[:, 1], t, a, v, kv=caches[0], step=step)
        torch.testing.assert_close(shared, own, rtol=1e-5, atol=1e-5)
        other = torch.full((b,), 0.3)
        assert torch.equal(dit64(noisy[:, 1], other, a, v, kv=caches[0], step=step, chunk=chunk),
                           dit64(noisy[:, 1], other, a, v, kv=caches[0], step=step))
    dit64.commit_kv(clean[:, 1], a, v, caches[0], chunk=chunk)
    dit64.commit_kv(clean[:, 1], a, v, caches[1])
    for layer in range(dit64.config.depth):
        torch.testing.assert_close(caches[0].view(layer).k, caches[1].view(layer).k,
                                   rtol=1e-5, atol=1e-5)
