"""The checkpoint and scenario bank shipped in the package: present, small, and working."""

from __future__ import annotations

import numpy as np

from xworld_env.envs.xworld import DEFAULT_CHECKPOINT, DEFAULT_SCENARIO_BANK, XWorldEnv
from xworld_env.model.checkpoint import load_bundle

SIZE_LIMIT = 40 * 2**20


def test_shipped_assets_fit_the_package_budget():
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()] + [DEFAULT_SCENARIO_BANK]
    assert (DEFAULT_CHECKPOINT / "model.safetensors").is_file()
    assert sum(p.stat().st_size for p in files) <= SIZE_LIMIT


def test_shipped_checkpoint_is_trained_and_records_its_training():
    bundle = load_bundle(DEFAULT_CHECKPOINT)
    assert bundle.metadata["engine"]["num_steps"] == 4
    assert bundle.metadata["engine"]["noise"] in ("fresh", "fixed")
    for stage in ("autoencoder", "world_model", "heads"):
        assert bundle.metadata[stage]["step"] > 0, stage
    assert bundle.metadata["autoencoder"]["val_psnr"] > 20


def test_default_env_steps_on_the_shipped_model():
    env = XWorldEnv()  # every default: shipped checkpoint and bank, X-Cache, CPU
    obs, info = env.reset(seed=0, options={"family": "highway"})
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([0.2, 0.0], np.float32))
    assert env.observation_space.contains(obs)
    assert np.isfinite(reward) and 0.0 <= info["collision_prob"] <= 1.0
    # A trained model draws a scene, not a flat image.
    assert float(np.std(obs["front_wide"].astype(np.float32))) > 5.0
    env.close()
