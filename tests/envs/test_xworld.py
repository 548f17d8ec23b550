"""XWorld-v0 on a tiny real world model: Gymnasium and SB3 contracts, determinism, bad input."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import xworld_env  # noqa: F401
from xworld_env.envs.xworld import XWorldEnv
from xworld_env.types import CAMERA_NAMES


def test_gymnasium_check_env(tiny_env_kwargs):
    check_env(gym.make("XWorld-v0", **tiny_env_kwargs).unwrapped, skip_render_check=True)


def test_sb3_check_env(tiny_env_kwargs):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(XWorldEnv(**tiny_env_kwargs), warn=True)


def test_spaces_step_and_info(tiny_env_kwargs):
    env = gym.make("XWorld-v0", **tiny_env_kwargs)
    obs, info = env.reset(seed=0, options={"family": "merge"})
    assert set(obs) == set(CAMERA_NAMES) | {"ego"} and env.observation_space.contains(obs)
    assert info["family"] == "merge"
    obs, reward, terminated, truncated, info = env.step(np.array([0.1, 0.0], np.float32))
    assert env.observation_space.contains(obs)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert set(info["cache"]) == {"eligible", "reused", "evaluations"}
    assert 0.0 <= info["collision_prob"] <= 1.0 and "speed" in info["ego"]
    assert abs(sum(info["reward_terms"].values()) - reward) < 1e-9
    assert info["speed_read"] == info["ego"]["speed"]  # speed="heads", the default


def test_kinematic_speed_follows_the_pedals(tiny_env_kwargs):
    env = XWorldEnv(speed="kinematic", **tiny_env_kwargs)
    _, info = env.reset(seed=0, options={"family": "merge"})
    speed = info["ego"]["speed"]
    for throttle in (1.0, 0.4, -1.0):
        obs, _, _, _, info = env.step(np.array([throttle, 0.0], np.float32))
        speed = max(speed + 2.5 * throttle, 0.0)
        assert info["ego"]["speed"] == pytest.approx(speed, abs=1e-5)
        assert obs["ego"][0] == pytest.approx(speed, abs=1e-5)
        assert info["speed_read"] != pytest.approx(speed)  # the tiny heads read something else


@pytest.mark.parametrize("cache", ["xcache", "none", "fbcache", "static"])
def test_same_seed_same_rollout(tiny_env_kwargs, cache):
    def rollout():
        env = XWorldEnv(cache=cache, **tiny_env_kwargs)
        frames = [env.reset(seed=3)[0]["front_wide"]]
        for i in range(3):
            frames.append(env.step(np.array([0.2, 0.1 * i], np.float32))[0]["front_wide"])
        return frames

    for a, b in zip(rollout(), rollout()):
        np.testing.assert_array_equal(a, b)


def test_floor_above_one_matches_full_compute(tiny_env_kwargs):
    runs = []
    for cache in ("none", {"policy": "xcache", "floor": 1.5}):
        env = XWorldEnv(cache=cache, **tiny_env_kwargs)
        obs = [env.reset(seed=1)[0]]
        obs += [env.step(np.array([0.3, -0.1], np.float32))[0] for _ in range(3)]
        runs.append(obs)
    for a, b in zip(*runs):
        for name in CAMERA_NAMES:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize(
    ("action", "message"),
    [(np.zeros(3, np.float32), "shape"), (np.array([np.inf, 0.0], np.float32), "finite"),
     (np.array([0.0, -2.0], np.float32), r"\[-1, 1\]")],
)
def test_bad_action_leaves_the_world_unchanged(tiny_env_kwargs, action, message):
    env = XWorldEnv(**tiny_env_kwargs)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    kv_before = env.engine.kv.view(0).k.clone()
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert (env.engine.kv.view(0).k == kv_before).all()
    # The next good step gives what it would have given without the bad call.
    good = env.step(np.zeros(2, np.float32))[0]
    ref = XWorldEnv(**tiny_env_kwargs)
    ref.reset(seed=0)
    ref.step(np.zeros(2, np.float32))
    np.testing.assert_array_equal(good["rear"], ref.step(np.zeros(2, np.float32))[0]["rear"])


def test_lifecycle_errors(tiny_env_kwargs):
    env = XWorldEnv(**tiny_env_kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="accepted: highway, merge"):
        env.reset(seed=0, options={"family": "moon"})
    with pytest.raises(ValueError, match="accepted: family"):
        env.reset(seed=0, options={"weather": 1})
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(2, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cache": "turbo"}, ValueError, "accepted: xcache, none"),
        ({"dtype": "int4"}, ValueError, "dtype"),
        ({"decode_dtype": "int4"}, ValueError, "decode_dtype must be one of"),
        ({"speed": "gps"}, ValueError, r"speed must be one of \('heads', 'kinematic'\)"),
        ({"family": "moon"}, ValueError, "accepted"),
        ({"render_mode": "human"}, ValueError, "render_mode"),
        ({"checkpoint": "/nonexistent/ckpt"}, Exception, "/nonexistent/ckpt"),
        ({"reward": {"sped": 1.0}}, ValueError, r"unknown RewardConfig setting\(s\) \['sped'\]; "
                                               r"accepted: \['collision'"),
        ({"reward": 0.5}, TypeError, "expected a RewardConfig or a dict of its settings"),
    ],
)
def test_bad_constructor_arguments(tiny_env_kwargs, kwargs, error, message):
    with pytest.raises(error, match=message):
        XWorldEnv(**{**tiny_env_kwargs, **kwargs})


def test_render_mosaic(tiny_env_kwargs):
    env = XWorldEnv(render_mode="rgb_array", **tiny_env_kwargs)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape[0] > 128 and frame.shape[1] > 256


def test_record_video(tiny_env_kwargs, tmp_path):
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(gym.make("XWorld-v0", render_mode="rgb_array", **tiny_env_kwargs),
                      video_folder=str(tmp_path / "videos"), episode_trigger=lambda e: True)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(2, np.float32))
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 0


def test_bfloat16_env_steps(tiny_env_kwargs):
    env = XWorldEnv(dtype="bfloat16", **tiny_env_kwargs)
    obs, _ = env.reset(seed=0)
    for _ in range(2):
        obs, reward, *_ = env.step(np.array([0.2, -0.1], np.float32))
    assert env.observation_space.contains(obs) and np.isfinite(reward)
    assert env.unwrapped.engine.config.dtype == "bfloat16"
