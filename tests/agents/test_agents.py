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
    assert WorldSettings(world_dtype="int8").world_kwargs("cpu")["dtype"] == "int8"
    with pytest.raises(ValueError, match=r"world_decode_dtype must be one of \['auto'"):
        WorldSettings(world_decode_dtype="int8")


def test_world_noise_and_speed_reach_the_worlds(tiny_env_kwargs):
    from agents.train import AgentTrainConfig, make_training_env

    assert AgentTrainConfig().world_kwargs("cpu")["noise"] is None  # the checkpoint's
    cfg = AgentTrainConfig(num_envs=2, world_noise="fresh", world_speed="kinematic",
                           **tiny_env_kwargs)
    venv = make_training_env(cfg)
    config = venv.venv.venv.engine.config  # VecMonitor > adapter > worlds
    assert (config.noise, config.speed) == ("fresh", "kinematic")
    venv.close()
    with pytest.raises(ValueError, match=r"world_noise must be one of \('fresh', 'fixed'\)"):
        AgentTrainConfig(world_noise="frozen")
    with pytest.raises(ValueError, match=r"world_speed must be one of \('heads', 'kinematic'\)"):
        AgentTrainConfig(world_speed="gps")


def test_train_rejects_an_unknown_world_dtype(tiny_env_kwargs, tmp_path):
    overrides = ["agent=tiny", f"agent.run_dir={tmp_path}", "agent.world_dtype=int4",
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


def test_train_tiny_in_the_simulator(tmp_path):
    from agents.evaluate import make_envs

    assert train_main(["agent=tiny", f"agent.run_dir={tmp_path}", "agent.env=sim",
                       "agent.family=highway"]) == 0
    policy = tmp_path / "ppo_final.zip"
    assert policy.is_file()
    result = evaluate(str(policy), episodes=1, max_steps=2,
                      envs=make_envs(["sim"], family="highway"))
    assert set(result) == {"policy", "XWorldSim-v0"}
    assert result["XWorldSim-v0"]["mean_steps"] == 2


def test_train_rejects_an_unknown_training_env(tmp_path):
    with pytest.raises(ValueError, match=r"env must be one of \('world', 'sim'\)"):
        train_main(["agent=tiny", f"agent.run_dir={tmp_path}", "agent.env=carla"])
    assert not any(tmp_path.iterdir())


def test_reference_policies_in_both_envs(calm_checkpoint, tiny_bank):
    from agents.evaluate import make_envs

    envs = make_envs(checkpoint=str(calm_checkpoint), scenario_bank=str(tiny_bank),
                     family="highway")
    for name in ("idle", "lane-keeper", "random"):
        result = evaluate(name, episodes=2, max_steps=3, envs=envs)
        for env_id in ("XWorld-v0", "XWorldSim-v0"):
            r = result[env_id]
            assert r["episodes"] == 2 and 1 <= r["mean_steps"] <= 3
            assert np.isfinite(r["mean_return"]) and r["return_se"] is not None
        # The calm world's heads never fire; in the simulator, keeping the lane on the highway
        # (or not steering at all) goes on for the three steps, and the car moves forward.
        assert result["XWorld-v0"]["mean_steps"] == 3
        if name != "random":
            assert result["XWorldSim-v0"]["mean_steps"] == 3
        assert result["XWorldSim-v0"]["mean_distance_m"] > 0
        assert result["XWorld-v0"]["collision_rate"] == 0.0
        assert result["XWorld-v0"]["off_road_rate"] == 0.0
    # The actions each policy took: idle's are all zero, random's vary in both entries.
    idle = evaluate("idle", episodes=2, max_steps=3, envs=envs)["XWorldSim-v0"]
    assert idle["mean_action"] == [0.0, 0.0] and idle["action_std"] == [0.0, 0.0]
    random = evaluate("random", episodes=2, max_steps=3, envs=envs)["XWorld-v0"]
    assert min(random["action_std"]) > 0.05
    assert all(-1.0 <= a <= 1.0 for a in random["mean_action"])
    from agents.evaluate import format_table

    row = format_table([{"policy": "idle", "XWorldSim-v0": idle}]).splitlines()[1]
    assert row.split()[-3:] == ["0.00", "0.00", "0.000"]
    # The simulator's autopilot reads the simulator's state: it drives there only, and on the
    # highway it drives the three steps forward without an event.
    autopilot = evaluate("autopilot", episodes=2, max_steps=3, envs=envs)
    assert set(autopilot) == {"policy", "XWorldSim-v0"}
    drive = autopilot["XWorldSim-v0"]
    assert drive["mean_steps"] == 3 and drive["mean_distance_m"] > 0
    assert drive["collision_rate"] == 0.0 and drive["off_road_rate"] == 0.0
    assert max(drive["action_std"]) > 0.0
    world_only = {k: v for k, v in envs.items() if k == "XWorld-v0"}
    with pytest.raises(ValueError, match="drives in XWorldSim-v0 only"):
        evaluate("autopilot", episodes=1, max_steps=1, envs=world_only)


def test_world_events_come_from_the_heads(tiny_env_kwargs):
    from agents.evaluate import make_envs

    # The random heads of the tiny checkpoint put an event above 0.5 at the first step.
    envs = make_envs(["world"], family="highway", **tiny_env_kwargs)
    r = evaluate("idle", episodes=2, max_steps=4, envs=envs)["XWorld-v0"]
    assert r["mean_steps"] == 1
    assert max(r["collision_rate"], r["off_road_rate"]) == 1.0


def test_evaluate_cli_rejects_unknown_policies_and_families(tmp_path, capsys):
    from agents.evaluate import load_policy, main

    with pytest.raises(SystemExit):
        main(["no-such-policy"])
    assert "neither a file nor one of random, idle, lane-keeper" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["idle", "--family", "desert"])
    assert "--family must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["autopilot", "--envs", "world"])
    assert "autopilot reads the simulator's state and drives in XWorldSim-v0 only" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["idle", "--episodes", "0"])
    assert "episodes must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got 2.5"):
        evaluate("idle", max_steps=2.5)
    with pytest.raises(ValueError, match="a saved SB3 model"):
        load_policy(str(tmp_path / "missing.zip"))
