"""Fixtures shared across test folders: a tiny world-model checkpoint and scenario bank."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xworld_env.config import build, compose
from xworld_env.data.generate import GenerateConfig, generate
from xworld_env.data.scenario_bank import build_scenario_bank
from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.checkpoint import WorldModelBundle, load_bundle, save_bundle
from xworld_env.model.dit import CausalDiT, dit_config
from xworld_env.model.heads import Heads, HeadsConfig


@pytest.fixture(scope="session")
def tiny_bank(tmp_path_factory):
    """A scenario bank of 1-chunk contexts cut from a tiny simulator dataset (all families)."""
    root = tmp_path_factory.mktemp("bank")
    cfg = compose("generate", ["data=tiny", f"data.out={root / 'data'}"])
    data = dataclasses.replace(build(GenerateConfig, cfg.data), chunks_per_episode=2)
    generate(data, cfg.sim, progress=False)
    out = root / "bank.npz"
    build_scenario_bank(root / "data", out, starts_per_family=1, context_chunks=1)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A world model of the real classes in their smallest configs, random weights."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=(8, 8, 8), latent_channels=4))
    dit = CausalDiT(dit_config("test", latent_channels=4))
    heads = Heads(HeadsConfig(latent_channels=4, channels=8, features=8, hidden=32))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    metadata = {"engine": {"num_steps": 2, "shift": 3.0, "window": 2}}
    save_bundle(path, WorldModelBundle(ae.eval(), dit.eval(), heads.eval(), metadata))
    return path


@pytest.fixture(scope="session")
def calm_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny world model with its event logits pushed far below zero, so that its episodes
    run on (the random heads of ``tiny_checkpoint`` end every episode at its first step)."""
    bundle = load_bundle(tiny_checkpoint)
    with torch.no_grad():
        bundle.heads.mlp[-1].bias[-2:] = -50.0
    path = tmp_path_factory.mktemp("calm") / "calm"
    save_bundle(path, bundle)
    return path


@pytest.fixture
def tiny_env_kwargs(tiny_checkpoint, tiny_bank):
    """Constructor kwargs of an XWorld-v0 on the tiny checkpoint and bank."""
    return {"checkpoint": str(tiny_checkpoint), "scenario_bank": str(tiny_bank)}
