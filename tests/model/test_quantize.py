"""int8 DiT blocks: which layers quantize, the calibrated grids, the engine's int8."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from xworld_env.engine import (
    EngineConfig,
    WorldModelEngine,
    calibrate_int8,
    resolve_decode_dtype,
)
from xworld_env.model.checkpoint import WorldModelBundle
from xworld_env.model.dit import KV_UPDATE_STEP
from xworld_env.model.quantize import (
    QUANTIZED_LAYERS,
    Int8Linear,
    Int8Mlp,
    current_pass,
    dit_pass,
    int8_active,
    int8_blocks,
    quantize_blocks,
    record_ranges,
)

from .conftest import build_engine, context, make_autoencoder, make_dit, make_heads
from .test_engine import CONFIG, actions, rollout

INT8 = dataclasses.replace(CONFIG, dtype="int8")


def full_ranges(dit: nn.Module, lo: float = -4.0, hi: float = 4.0) -> dict:
    steps = (KV_UPDATE_STEP, *range(CONFIG.sampler.num_steps))
    return {f"blocks.{l}.{name}": dict.fromkeys(steps, (lo, hi))
            for l in range(len(dit.blocks)) for name in QUANTIZED_LAYERS}  # noqa: E741


def test_quantize_blocks_copies_and_quantizes_the_token_layers_only():
    dit = make_dit()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    quantized = quantize_blocks(dit, full_ranges(dit))
    assert quantized is not dit
    for block in quantized.blocks:
        for name in QUANTIZED_LAYERS:
            assert isinstance(block.get_submodule(name), Int8Linear), name
        # adaLN acts on one vector per chunk: left in float32, where it costs nothing.
        assert type(block.adaLN_modulation[1]) is nn.Linear
        # The MLP's GELU runs inside its first layer's kernel, its hidden layer in int8.
        assert isinstance(block.mlp, Int8Mlp) and block.mlp.fc1.post[0] == "gelu"
    assert type(quantized.final_layer.linear) is nn.Linear
    # The DiT it was given is untouched.
    after = dit.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(block.mlp.fc1) is nn.Linear for block in dit.blocks)
    assert all(isinstance(block.mlp.act, nn.GELU) for block in dit.blocks)


def test_quantize_blocks_refuses_a_dit_off_the_cpu_or_ranges_without_a_layer():
    dit = make_dit()
    with pytest.raises(ValueError, match="CPU only"):
        quantize_blocks(make_dit().to("meta"), full_ranges(dit))
    ranges = full_ranges(dit)
    del ranges["blocks.1.mlp.fc2"]
    with pytest.raises(ValueError, match=r"lack 1 layers, e.g. 'blocks.1.mlp.fc2'"):
        quantize_blocks(dit, ranges)


def test_int8_linear_rounds_on_the_grid_of_the_named_pass():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(2, 5, 16)
    # A grid that spans the input, and one 100 times wider (coarser steps) for pass 1.
    layer = Int8Linear(linear, {0: (-4.0, 4.0), 1: (-400.0, 400.0)})
    with torch.no_grad():
        exact = linear(x)
    with dit_pass(0):
        fine = layer(x)
    with dit_pass(1):
        coarse = layer(x)
    assert fine.shape == exact.shape == (2, 5, 8)
    assert float((fine - exact).abs().max()) < 0.02 * float(exact.abs().max())
    assert float((coarse - exact).abs().max()) > 5 * float((fine - exact).abs().max())
    # The grid is fixed: each world's output is what it would be alone.
    with dit_pass(0):
        assert torch.equal(layer(x[1:]), fine[1:])
        # A strided view of the same values (rows further apart) gives the same outputs.
        strided = torch.cat([x, torch.randn(2, 5, 16)], dim=-1)[..., :16]
        assert not strided.is_contiguous() and torch.equal(layer(strided), fine)
    with pytest.raises(RuntimeError, match=r"pass 2; it has grids for passes \[0, 1\]"), \
            dit_pass(2):
        layer(x)
    with pytest.raises(RuntimeError, match="pass None"):
        layer(x)


def test_int8_mlp_keeps_its_hidden_layer_in_int8():
    """The fused MLP computes what its two layers do one after the other, the hidden layer
    rounded onto the second layer's grid in the first layer's kernel."""
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
    x = torch.randn(2, 5, 16)
    first = Int8Linear(fc1, {0: (-4.0, 4.0), 1: (-3.0, 3.0)}, gelu=True)
    second = Int8Linear(fc2, {0: (-0.5, 2.0), 1: (-0.3, 1.0)})
    mlp = Int8Mlp(first, second)
    for step in (0, 1):
        with dit_pass(step):
            fused, apart = mlp(x), second(first(x))
        assert fused.shape == x.shape
        torch.testing.assert_close(fused, apart, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="GELU fused"):
        Int8Mlp(second, first)


def test_int8_linear_fuses_gelu_and_clips_beyond_its_grid():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad(), dit_pass(0):
        gelu = Int8Linear(linear, {0: (-4.0, 4.0)}, gelu=True)(x)
        torch.testing.assert_close(gelu, nn.functional.gelu(linear(x), approximate="tanh"),
                                   rtol=0, atol=0.05)
        # Inputs past the widened range land on its ends: 100 and 1,000 round alike.
        layer = Int8Linear(linear, {0: (-1.0, 1.0)})
        big = torch.zeros(1, 16)
        big[0, 0] = 100.0
        assert torch.equal(layer(big), layer(big * 10))


def test_record_ranges_per_pass_and_removes_its_hooks():
    dit = make_dit()
    x = torch.zeros(1, *dit.config.chunk_shape)
    t, action, speed = torch.ones(1), torch.zeros(1, 2), torch.zeros(1)
    with torch.no_grad(), record_ranges(dit) as ranges:
        with dit_pass(0):
            dit(x, t, action, speed)
        with dit_pass(1):
            dit(x + 3.0, t * 0.5, action, speed)
        with pytest.raises(RuntimeError, match="inside dit_pass"):
            dit(x, t, action, speed)
    assert set(ranges) == {f"blocks.{l}.{n}" for l in range(2) for n in QUANTIZED_LAYERS}  # noqa: E741
    for seen in ranges.values():
        assert set(seen) == {0, 1}
        assert all(lo <= hi for lo, hi in seen.values())
    assert ranges["blocks.0.mlp.fc1"][0] != ranges["blocks.0.mlp.fc1"][1]
    with torch.no_grad(), dit_pass(0):
        dit(x, t, action, speed)  # no hooks left: nothing recorded, no error outside a pass
        assert all(len(block.mlp.fc1._forward_pre_hooks) == 0 for block in dit.blocks)


def test_calibration_covers_every_pass_and_is_deterministic():
    bundle = WorldModelBundle(make_autoencoder(), make_dit(), make_heads())
    frames, acts, ego = context(2)
    first = calibrate_int8(INT8, bundle, frames, acts, ego)
    assert first == calibrate_int8(INT8, bundle, frames, acts, ego)
    steps = {KV_UPDATE_STEP, *range(INT8.sampler.num_steps)}
    # The KV-update pass stops at the last block's keys and values.
    last = len(bundle.dit.blocks) - 1
    for key, seen in first.items():
        skipped = key.startswith(f"blocks.{last}.") and not key.endswith("qkv")
        assert set(seen) == (steps - {KV_UPDATE_STEP} if skipped else steps), key
    with pytest.raises(ValueError, match="at least one chunk"):
        calibrate_int8(INT8, bundle, frames, acts, ego, chunks=0)
    # A DiT int8 cannot run on fails before any float32 run.
    off_cpu = WorldModelBundle(bundle.autoencoder, make_dit().to("meta"), bundle.heads)
    with pytest.raises(ValueError, match="CPU only"):
        calibrate_int8(INT8, off_cpu, frames, acts, ego)


def test_an_int8_engine_needs_calibrated_ranges():
    with pytest.raises(ValueError, match="needs the activation ranges"):
        WorldModelEngine(INT8, make_autoencoder(), make_dit(), make_heads())


def test_int8_engine_stays_close_to_float32_and_is_deterministic():
    from xworld_env.bench.metrics import psnr

    acts = actions(2, 3)
    outs = {}
    for dtype in ("float32", "int8", "int8"):
        engine = build_engine(dataclasses.replace(CONFIG, dtype=dtype))
        engine.start(*context(2), seeds=[0, 1])
        run = rollout(engine, acts)
        if dtype in outs:  # same seeds and actions, same int8 rollout
            for a, b in zip(outs[dtype], run, strict=True):
                assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
        outs[dtype] = run
        assert engine.decode_dtype in ("float32", "bfloat16")
    for a, b in zip(outs["float32"], outs["int8"], strict=True):
        assert b.latents.dtype == torch.float32 and b.frames.dtype == torch.uint8
        assert not torch.equal(a.latents, b.latents)  # the rounding is there ...
        error = (a.latents - b.latents).norm() / a.latents.norm()
        assert float(error) < 0.05  # ... and small
        assert float(psnr(a.frames.numpy(), b.frames.numpy())) > 30.0


def test_int8_worlds_of_a_batch_roll_out_as_they_would_alone():
    acts = actions(2, 3)
    frames, acts_ctx, ego = context(2)
    frames[1] = 255 - frames[1]  # the two worlds see different scenes
    batch = build_engine(INT8)
    batch.start(frames, acts_ctx, ego, seeds=[0, 1])
    together = rollout(batch, acts)
    # The grids do not depend on the input; float sums that differ in their last bit between a
    # batch and one world can still tip a rounding, by far less than int8's own error (~1e-2).
    for w in (0, 1):
        alone = build_engine(INT8)
        alone.start(frames[w:w + 1], acts_ctx[w:w + 1], ego[w:w + 1], seeds=[w])
        for a, b in zip(rollout(alone, acts[:, w:w + 1]), together, strict=True):
            torch.testing.assert_close(b.latents[w], a.latents[0], rtol=0, atol=1e-3)


def test_int8_is_a_dit_precision_only():
    assert EngineConfig(dtype="int8").dtype == "int8"
    with pytest.raises(ValueError, match="decode_dtype must be one of"):
        EngineConfig(decode_dtype="int8")
    cpu = torch.device("cpu")
    # The decoder of an int8 DiT runs as the float32 DiT's would.
    assert resolve_decode_dtype("auto", "int8", cpu, frozenset({"avx512_bf16"})) == "bfloat16"
    assert resolve_decode_dtype("auto", "int8", cpu, frozenset({"avx2"})) == "float32"


def test_thread_marks_nest_and_restore():
    assert not int8_active() and current_pass() is None
    with int8_blocks(), dit_pass(2):
        assert int8_active() and current_pass() == 2
        with int8_blocks(), dit_pass(KV_UPDATE_STEP):
            assert int8_active() and current_pass() == KV_UPDATE_STEP
        assert int8_active() and current_pass() == 2
    assert not int8_active() and current_pass() is None
