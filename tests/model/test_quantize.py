"""int8 DiT blocks: which layers quantize, the copy leaves the DiT alone, the engine's int8."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from xworld_env.engine import EngineConfig, resolve_decode_dtype
from xworld_env.model.quantize import (
    QUANTIZED_LAYERS,
    Int8Linear,
    int8_active,
    int8_blocks,
    quantize_blocks,
)

from .conftest import make_dit
from .test_engine import CONFIG, actions, context, make_engine, rollout


def test_quantize_blocks_copies_and_quantizes_the_token_layers_only():
    dit = make_dit()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    quantized = quantize_blocks(dit)
    assert quantized is not dit
    for block in quantized.blocks:
        for name in QUANTIZED_LAYERS:
            assert isinstance(block.get_submodule(name), Int8Linear), name
        # adaLN acts on one vector per chunk: left in float32, where it costs nothing.
        assert type(block.adaLN_modulation[1]) is nn.Linear
    assert type(quantized.final_layer.linear) is nn.Linear
    # The DiT it was given is untouched.
    after = dit.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(block.mlp.fc1) is nn.Linear for block in dit.blocks)


def test_quantize_blocks_refuses_a_dit_off_the_cpu():
    dit = make_dit().to("meta")
    with pytest.raises(ValueError, match="CPU only"):
        quantize_blocks(dit)


def test_int8_engine_stays_close_to_float32_and_is_deterministic():
    from xworld_env.bench.metrics import psnr

    acts = actions(2, 3)
    outs = {}
    for dtype in ("float32", "int8", "int8"):
        engine = make_engine(dataclasses.replace(CONFIG, dtype=dtype))
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


def test_int8_linear_quantizes_each_world_on_its_own():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = Int8Linear(linear)
    small = torch.randn(1, 5, 16)
    large = 50 * torch.randn(1, 5, 16)  # a world whose range would coarsen a shared scale
    together = layer(torch.cat([small, large]))
    assert together.shape == (2, 5, 8)
    assert torch.equal(together[0], layer(small)[0])
    assert torch.equal(together[1], layer(large)[0])
    with torch.no_grad():
        exact = linear(small)
    assert float((layer(small) - exact).abs().max()) < 0.05 * float(exact.abs().max())


def test_int8_worlds_of_a_batch_roll_out_as_they_would_alone():
    acts = actions(2, 3)
    config = dataclasses.replace(CONFIG, dtype="int8")
    frames, acts_ctx, ego = context(2)
    frames[1] = 255 - frames[1]  # the two worlds see different scenes
    batch = make_engine(config)
    batch.start(frames, acts_ctx, ego, seeds=[0, 1])
    together = rollout(batch, acts)
    # World 0's activations span less than world 1's: rounded with a scale shared by the batch
    # its latents would move by about 3e-3. Float sums that differ in their last bit between a
    # batch and one world can still tip an int8 rounding, which moves world 1 by up to 1e-3.
    for w, atol in ((0, 1e-5), (1, 2e-3)):
        alone = make_engine(config)
        alone.start(frames[w:w + 1], acts_ctx[w:w + 1], ego[w:w + 1], seeds=[w])
        for a, b in zip(rollout(alone, acts[:, w:w + 1]), together, strict=True):
            torch.testing.assert_close(b.latents[w], a.latents[0], rtol=0, atol=atol)


def test_int8_is_a_dit_precision_only():
    assert EngineConfig(dtype="int8").dtype == "int8"
    with pytest.raises(ValueError, match="decode_dtype must be one of"):
        EngineConfig(decode_dtype="int8")
    cpu = torch.device("cpu")
    # The decoder of an int8 DiT runs as the float32 DiT's would.
    assert resolve_decode_dtype("auto", "int8", cpu, frozenset({"avx512_bf16"})) == "bfloat16"
    assert resolve_decode_dtype("auto", "int8", cpu, frozenset({"avx2"})) == "float32"


def test_int8_blocks_marks_the_thread_and_restores_it():
    assert not int8_active()
    with int8_blocks():
        assert int8_active()
        with int8_blocks():
            assert int8_active()
        assert int8_active()
    assert not int8_active()
