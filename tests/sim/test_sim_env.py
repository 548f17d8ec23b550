"""XWorldSim-v0: Gymnasium and SB3 contracts, determinism, events and bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import xworld_env  # noqa: F401  (registers the ids)
from xworld_env.envs.rewards import RewardConfig, reward_terms
from xworld_env.sim.driver import PerturbedDriver
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.types import CAMERA_NAMES, FAMILIES


def test_gymnasium_check_env():
    env = gym.make("XWorldSim-v0", family="highway")
    check_env(env.unwrapped, skip_render_check=True)


def test_sb3_check_env():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(XWorldSimEnv(family="merge"), warn=True)


def test_spaces_and_observation():
    env = gym.make("XWorldSim-v0")
    obs, info = env.reset(seed=0, options={"family": "roundabout"})
    assert set(obs) == set(CAMERA_NAMES) | {"ego"}
    assert env.observation_space.contains(obs)
    assert env.action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    assert info["family"] == "roundabout"
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert env.observation_space.contains(obs)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    chunk = env.unwrapped.last_chunk
    assert chunk.shape == (2, 7, 64, 64, 3)
    np.testing.assert_array_equal(chunk[-1, 0], obs["front_wide"])
    assert abs(sum(info["reward_terms"].values()) - reward) < 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_rollout(family):
    def rollout():
        env = XWorldSimEnv()
        obs, _ = env.reset(seed=11, options={"family": family})
        driver = PerturbedDriver(11)
        driver.reset(env.scenario)
        frames = [obs["front_wide"]]
        for _ in range(4):
            obs, *_ = env.step(driver.act(env.scenario))
            frames.append(env.last_chunk.copy())
        return frames

    for a, b in zip(rollout(), rollout()):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_scenes():
    env = XWorldSimEnv(family="highway")
    a, _ = env.reset(seed=1)
    b, _ = env.reset(seed=2)
    assert not np.array_equal(a["front_wide"], b["front_wide"])


def test_views_move_when_driving():
    env = XWorldSimEnv(family="highway")
    env.reset(seed=4)
    env.step(np.array([0.0, 0.0], np.float32))
    first, second = env.last_chunk
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1.0


def test_hard_steering_leaves_the_road_and_terminates():
    env = XWorldSimEnv(family="highway")
    env.reset(seed=3)
    for _ in range(30):
        _, reward, terminated, _, info = env.step(np.array([0.5, 1.0], np.float32))
        if terminated:
            break
    assert terminated and (info["off_road"] or info["collision"])
    assert reward < 0.5


def test_braking_stops_the_ego_and_holds_it_without_reversing():
    env = XWorldSimEnv(family="highway")
    obs, _ = env.reset(seed=3)
    speeds, positions = [float(obs["ego"][0])], []
    for _ in range(14):
        obs, reward, terminated, truncated, info = env.step(np.array([-1.0, 0.0], np.float32))
        speeds.append(float(obs["ego"][0]))
        positions.append(env.scenario.ego.position.copy())
    assert speeds[0] > 15
    assert all(b <= a for a, b in zip(speeds, speeds[1:]))
    assert min(speeds) == 0.0 and speeds[-1] == 0.0
    np.testing.assert_array_equal(positions[-1], positions[-2])
    # Standing still earns nothing, however well centred in the lane.
    assert not (terminated or truncated) and reward == 0.0


def test_lane_keeping_is_paid_in_proportion_to_speed_up_to_the_familys_range():
    config = RewardConfig()
    lo = config.speed_ranges["highway"][0]

    def lane(speed, offset=0.0):
        ego = np.array([speed, offset, 0.0], np.float32)
        return reward_terms(ego, 0.0, 0.0, "highway", config)["lane"]

    assert lane(0.0) == 0.0
    assert lane(lo / 2) == pytest.approx(config.lane / 2)
    assert lane(lo) == lane(2 * lo) == pytest.approx(config.lane)
    assert lane(lo, offset=1.0) == pytest.approx(config.lane * np.exp(-1.0))


def test_steering_left_moves_the_ego_left():
    env = XWorldSimEnv(family="highway")
    obs, _ = env.reset(seed=5)
    obs, *_ = env.step(np.array([0.0, 0.3], np.float32))
    assert obs["ego"][2] > 0  # heading error grows to the left
    assert env.scenario.ego.heading < 0  # highway-env's heading grows to the right


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(3, np.float32), "shape"),
        (np.array([np.nan, 0.0], np.float32), "finite"),
        (np.array([1.5, 0.0], np.float32), r"\[-1, 1\]"),
        ("fast", "float array"),
    ],
)
def test_bad_action_is_rejected_and_state_unchanged(action, message):
    env = XWorldSimEnv(family="highway")
    env.reset(seed=0)
    before = (env.scenario.pose(), env.scenario.env.time, env.last_chunk.copy())
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.scenario.pose() == before[0] and env.scenario.env.time == before[1]
    np.testing.assert_array_equal(env.last_chunk, before[2])


def test_step_before_reset_and_after_close():
    env = XWorldSimEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(2, np.float32))


def test_unknown_family_and_option():
    with pytest.raises(ValueError, match="accepted: highway, merge, roundabout, intersection"):
        XWorldSimEnv(family="desert")
    env = XWorldSimEnv()
    with pytest.raises(ValueError, match="unknown scenario family"):
        env.reset(seed=0, options={"family": "desert"})
    with pytest.raises(ValueError, match="accepted: family"):
        env.reset(seed=0, options={"weather": "rain"})


def test_misspelled_settings_name_what_is_accepted():
    with pytest.raises(ValueError, match=r"unknown RewardConfig setting\(s\) \['sped'\]"):
        XWorldSimEnv(reward={"sped": 1.0})
    with pytest.raises(TypeError, match="expected a RewardConfig or a dict"):
        XWorldSimEnv(reward=1.0)


def test_render_mosaic():
    env = XWorldSimEnv(render_mode="rgb_array")
    env.reset(seed=0, options={"family": "intersection"})
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] > 2 * 64 and frame.shape[1] > 4 * 64


def test_dict_configs_are_accepted():
    env = XWorldSimEnv(rig={"height": 32, "width": 32}, scenario={"frames_per_chunk": 3})
    obs, _ = env.reset(seed=0, options={"family": "merge"})
    assert obs["front_wide"].shape == (32, 32, 3)
    env.step(np.zeros(2, np.float32))
    assert env.last_chunk.shape == (3, 7, 32, 32, 3)


def test_the_engines_kinematic_speed_is_the_simulators():
    """``EngineConfig(speed="kinematic")`` integrates the pedals as the simulator does."""
    from xworld_env.engine import EngineConfig, kinematic_speed

    config = EngineConfig()
    rng = np.random.default_rng(3)
    stopped = False
    for family in ("highway", "roundabout"):
        env = XWorldSimEnv(family=family)
        _, info = env.reset(seed=5)
        speed, compared = info["ego"]["speed"], 0
        for t in range(16):
            # full braking (the roundabout's ego stops and stands), then random pedals
            action = np.array([-1.0 if t < 6 else rng.uniform(-0.8, 0.8), 0.0], np.float32)
            _, _, terminated, truncated, info = env.step(action)
            expected = kinematic_speed(torch.tensor(speed), torch.tensor(float(action[0])),
                                       config.speed_gain, config.max_speed)
            assert info["ego"]["speed"] == pytest.approx(float(expected), abs=1e-3)
            speed, compared = info["ego"]["speed"], compared + 1
            stopped = stopped or speed < 1e-3
            if terminated or truncated:
                break
        env.close()
        assert compared == 16
    assert stopped
