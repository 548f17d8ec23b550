"""The agents entry points on the tiny world model."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.evaluate import evaluate
from agents.extractors import SevenViewExtractor
from agents.train import main as train_main
from xworld_env.types import CAMERA_NAMES


def test_extractor_shares_one_cnn_across_cameras():
    space = spaces.Dict({
        **{n: spaces.Box(0, 255, (3, 64, 64), np.uint8) for n in CAMERA_NAMES},
        "ego": spaces.Box(-1, 1, (3,), np.float32),
    })
    extractor = SevenViewExtractor(space, features_dim=32, view_dim=16)
    obs = {n: torch.rand(2, 3, 64, 64) for n in CAMERA_NAMES} | {"ego": torch.zeros(2, 3)}
    assert extractor(obs).shape == (2, 32)
    # One CNN: its parameters do not grow with the number of cameras.
    single = SevenViewExtractor(spaces.Dict({"rear": space["rear"]}), 32, 16)
    assert sum(p.numel() for p in extractor.cnn.parameters()) == sum(
        p.numel() for p in single.cnn.parameters()
    )


def test_train_tiny_then_evaluate(tiny_env_kwargs, tmp_path):
    overrides = ["agent=tiny", f"agent.run_dir={tmp_path}",
                 f"agent.checkpoint={tiny_env_kwargs['checkpoint']}",
                 f"agent.scenario_bank={tiny_env_kwargs['scenario_bank']}"]
    assert train_main(overrides) == 0
    policy = tmp_path / "ppo_final.zip"
    assert policy.is_file()
    from stable_baselines3 import PPO

    saved = PPO.load(policy, device="cpu")  # explores with gSDE unless told otherwise
    assert saved.use_sde and saved.sde_sample_freq == 8
    result = evaluate(str(policy), episodes=1, max_steps=2, family="highway",
                      **tiny_env_kwargs)
    for name in ("XWorld-v0", "XWorldSim-v0"):
        assert result[name]["episodes"] == 1 and np.isfinite(result[name]["mean_return"])


def test_world_settings_pass_both_precisions_to_the_envs():
    from agents.world import WorldSettings

    kwargs = WorldSettings(world_dtype="bfloat16", world_decode_dtype="float32").world_kwargs("cpu")
    assert (kwargs["dtype"], kwargs["decode_dtype"]) == ("bfloat16", "float32")
    assert WorldSettings().world_kwargs("cpu")["decode_dtype"] == "auto"
    with pytest.raises(ValueError, match=r"world_decode_dtype must be one of \['auto'"):
        WorldSettings(world_decode_dtype="int8")


def test_train_rejects_an_unknown_world_dtype(tiny_env_kwargs, tmp_path):
    overrides = ["agent=tiny", f"agent.run_dir={tmp_path}", "agent.world_dtype=int8",
                 f"agent.checkpoint={tiny_env_kwargs['checkpoint']}",
                 f"agent.scenario_bank={tiny_env_kwargs['scenario_bank']}"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        train_main(overrides)
    assert not (tmp_path / "ppo_final.zip").exists()


def test_the_xcache_group_sets_the_trainers_cache_policy():
    from agents.train import AgentTrainConfig
    from xworld_env.config import build, compose

    cfg = build(AgentTrainConfig, compose("train_agent", ["+xcache@agent.cache=fbcache"]).agent)
    assert cfg.cache == {"policy": "fbcache", "threshold": 0.002, "warmup_chunks": 1}
    assert cfg.world_kwargs("cpu")["cache"] == cfg.cache
    cfg = build(AgentTrainConfig, compose(
        "train_agent", ["+xcache@agent.cache=xcache", "agent.cache.max_error=0.01"]).agent)
    assert cfg.cache["policy"] == "xcache" and cfg.cache["max_error"] == 0.01
    cfg = build(AgentTrainConfig, compose("train_agent", ["agent.cache={policy:static}"]).agent)
    assert cfg.cache == {"policy": "static"}
    with pytest.raises(ValueError, match="bad xcache setting.*accepted: .*'max_error'"):
        build(AgentTrainConfig, compose("train_agent", ["agent.cache={max_eror:0.01}"]).agent)


def test_exploration_settings_reach_ppo_and_bad_ones_are_rejected():
    from agents.train import AgentTrainConfig
    from xworld_env.config import build, compose

    cfg = build(AgentTrainConfig, compose(
        "train_agent", ["agent.use_sde=false", "agent.log_std_init=0"]).agent)
    assert not cfg.use_sde and cfg.ppo_kwargs()["policy_kwargs"]["log_std_init"] == 0.0
    with pytest.raises(ValueError, match="sde_sample_freq must be -1 .* or a positive"):
        AgentTrainConfig(sde_sample_freq=0)
    with pytest.raises(ValueError, match="log_std_init must be finite"):
        AgentTrainConfig(log_std_init=float("nan"))
