"""Shared fixtures of the model tests: tiny networks with every weight non-zero."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from xworld_env.engine import EngineConfig, WorldModelEngine, calibrate_int8
from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.checkpoint import WorldModelBundle
from xworld_env.model.dit import PRESETS, CausalDiT
from xworld_env.model.heads import Heads, HeadsConfig

#: Small autoencoder for fast tests (same 8x compression as the default).
AE_TEST = AutoencoderConfig(channels=(8, 8, 8))


def randomize_zero_init(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Gives the zero-initialised (adaLN-Zero) weights random values, so that every block does
    something and equivalence tests are not trivially true."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return module


def make_dit(seed: int = 0, **overrides: object) -> CausalDiT:
    """The "test" preset DiT (with some fields replaced) with random weights, in eval mode."""
    torch.manual_seed(seed)
    return randomize_zero_init(CausalDiT(replace(PRESETS["test"], **overrides)), seed).eval()


def make_autoencoder(seed: int = 0) -> Autoencoder:
    """A small autoencoder with random weights, in eval mode."""
    torch.manual_seed(seed)
    return Autoencoder(AE_TEST).eval()


def make_heads(seed: int = 0, **config) -> Heads:
    """Heads with random weights, in eval mode (``config``: ``HeadsConfig`` fields)."""
    torch.manual_seed(seed)
    return Heads(HeadsConfig(**config)).eval()


def context(b: int, chunks: int = 2, seed: int = 0):
    """Random uint8 context frames, actions and ego states of b worlds."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, chunks, 2, 7, 64, 64, 3), generator=g, dtype=torch.uint8)
    actions = torch.rand(b, chunks, 2, generator=g) * 2 - 1
    ego = torch.rand(b, chunks, 3, generator=g) * torch.tensor([30.0, 1.0, 0.1])
    return frames, actions, ego


def build_engine(config: EngineConfig, **dit_overrides: object) -> WorldModelEngine:
    """An engine over the tiny random networks (DiT fields ``dit_overrides``); for
    ``dtype="int8"``, calibrated on two random contexts."""
    bundle = WorldModelBundle(make_autoencoder(), make_dit(**dit_overrides), make_heads())
    ranges = None
    if config.dtype == "int8":
        ranges = calibrate_int8(config, bundle, *context(2, chunks=1, seed=99))
    return WorldModelEngine.from_bundle(config, bundle, ranges)


@pytest.fixture(params=[False, True], ids=["adaln", "action_field"])
def dit64(request: pytest.FixtureRequest) -> CausalDiT:
    """The test-preset DiT in float64, for tight equivalence checks; with and without the
    per-token action input."""
    return make_dit(action_field=request.param).double()
