"""Batched XWorld-v0: make_vec, autoreset modes, per-world independence, SB3 adapter."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import xworld_env  # noqa: F401
from agents.vec_env import XWorldSB3VecEnv
from xworld_env.envs.xworld_vector import XWorldVectorEnv
from xworld_env.types import CAMERA_NAMES

#: Random tiny heads predict events around 50%; tests of truncation keep them from terminating.
NO_EVENTS = {"reward": {"event_threshold": 0.999999}}


def test_make_vec_gives_the_batched_env(tiny_env_kwargs):
    envs = gym.make_vec("XWorld-v0", num_envs=3, **tiny_env_kwargs)
    assert isinstance(envs.unwrapped, XWorldVectorEnv)
    obs, infos = envs.reset(seed=0)
    assert obs["front_wide"].shape == (3, 64, 64, 3) and obs["ego"].shape == (3, 3)
    assert envs.observation_space.contains(obs)
    obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
    assert rewards.shape == (3,) and terminated.dtype == bool and "collision_prob" in infos
    np.testing.assert_array_equal(infos["speed_read"], obs["ego"][:, 0])  # speed="heads"


def test_kinematic_speed_per_world(tiny_env_kwargs):
    envs = XWorldVectorEnv(num_envs=2, speed="kinematic", **NO_EVENTS, **tiny_env_kwargs)
    obs, infos = envs.reset(seed=3)
    speed = np.array(infos["ego"]["speed"], np.float64)
    pedals = np.array([[1.0, 0.0], [-0.6, 0.2]], np.float32)
    for _ in range(2):
        obs, _, _, _, infos = envs.step(pedals)
        speed = np.maximum(speed + 2.5 * pedals[:, 0], 0.0)
        np.testing.assert_allclose(obs["ego"][:, 0], speed, atol=1e-5)
    assert not np.allclose(infos["speed_read"], speed)


def test_next_step_autoreset(tiny_env_kwargs):
    envs = XWorldVectorEnv(num_envs=2, max_episode_steps=2, **NO_EVENTS, **tiny_env_kwargs)
    envs.reset(seed=1)
    a = np.zeros((2, 2), np.float32)
    envs.step(a)
    _, _, terminated, truncated, _ = envs.step(a)
    assert truncated.all() and not terminated.any()
    obs, rewards, terminated, truncated, infos = envs.step(a)
    assert (rewards == 0).all() and not (terminated | truncated).any()
    # The restarted worlds show the last context frame of their new start.
    bank = envs.runtime.bank
    firsts = {s.frames[-1, -1, CAMERA_NAMES.index("rear")].tobytes() for s in bank}
    assert all(obs["rear"][i].tobytes() in firsts for i in range(2))
    envs.step(a)  # and they go on
    assert envs._steps.tolist() == [1, 1]


def test_same_step_autoreset_gives_final_obs(tiny_env_kwargs):
    envs = XWorldVectorEnv(num_envs=2, max_episode_steps=1, autoreset_mode="SameStep",
                           **NO_EVENTS, **tiny_env_kwargs)
    envs.reset(seed=2)
    obs, _, _, truncated, infos = envs.step(np.zeros((2, 2), np.float32))
    assert truncated.all() and infos["_final_obs"].all()
    assert infos["final_obs"][0]["front_wide"].shape == (64, 64, 3)


def test_one_world_does_not_depend_on_the_others(tiny_env_kwargs):
    def world0(second_seed):
        envs = XWorldVectorEnv(num_envs=2, **tiny_env_kwargs)
        envs.reset(seed=[7, second_seed])
        acts = np.array([[0.2, 0.1], [np.sign(second_seed - 5) * 0.9, 0.5]], np.float32)
        return [envs.step(acts)[0]["front_wide"][0] for _ in range(3)]

    for a, b in zip(world0(3), world0(11)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_bad_actions_rejected(tiny_env_kwargs):
    envs = XWorldVectorEnv(num_envs=2, **tiny_env_kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.zeros((2, 2), np.float32))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        envs.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        envs.step(np.full((2, 2), 3.0, np.float32))
    with pytest.raises(ValueError, match="num_envs"):
        XWorldVectorEnv(num_envs=0, **tiny_env_kwargs)


def test_sb3_adapter_terminal_observation(tiny_env_kwargs):
    venv = XWorldSB3VecEnv(num_envs=2, max_episode_steps=2, **NO_EVENTS, **tiny_env_kwargs)
    venv.seed(0)
    obs = venv.reset()
    assert obs["rear"].shape == (2, 64, 64, 3)
    venv.step(np.zeros((2, 2), np.float32))
    obs, rewards, dones, infos = venv.step(np.zeros((2, 2), np.float32))
    assert dones.all()
    assert infos[0]["terminal_observation"]["front_wide"].shape == (64, 64, 3)
    assert infos[0]["TimeLimit.truncated"] is True


def test_sb3_ppo_learns_on_batched_worlds(tiny_env_kwargs, tmp_path):
    from stable_baselines3 import PPO

    from agents.extractors import SevenViewExtractor

    venv = XWorldSB3VecEnv(num_envs=2, max_episode_steps=8, **tiny_env_kwargs)
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs={"features_extractor_class": SevenViewExtractor}, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    model.save(tmp_path / "ppo")
    assert (tmp_path / "ppo.zip").is_file()


def test_action_spread_callback_sees_an_open_loop_policy(tiny_env_kwargs):
    from stable_baselines3 import PPO

    from agents.callbacks import ActionSpreadCallback
    from agents.extractors import SevenViewExtractor

    with pytest.raises(ValueError, match="samples must be >= 2"):
        ActionSpreadCallback(samples=1)
    venv = XWorldSB3VecEnv(num_envs=2, max_episode_steps=8, **tiny_env_kwargs)
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0,
                policy_kwargs={"features_extractor_class": SevenViewExtractor,
                               "features_extractor_kwargs": {"features_dim": 32}},
                device="cpu")
    callback = ActionSpreadCallback(samples=16)
    model.learn(total_timesteps=16, callback=callback)
    # An untrained policy's mean action varies a little with what it sees.
    assert 0.0 < callback.last["action_spread"] < 1.0
    # An action head that ignores its features acts the same on every observation.
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(torch.tensor([0.25, -0.5]))
    callback.on_rollout_end()
    assert callback.last == {"action_spread": 0.0, "mean_throttle": 0.25, "mean_steer": -0.5}


def test_async_vector_env_pickles(tiny_env_kwargs):
    envs = gym.vector.AsyncVectorEnv(
        # "module:id" imports xworld_env (and so registers XWorld-v0) in each new process.
        [lambda: gym.make("xworld_env:XWorld-v0", **tiny_env_kwargs) for _ in range(2)],
        autoreset_mode=AutoresetMode.NEXT_STEP,
        context="spawn",  # forking a process that already runs torch threads can deadlock
    )
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(np.zeros((2, 2), np.float32))
    assert obs["front_wide"].shape == (2, 64, 64, 3)
    envs.close()
