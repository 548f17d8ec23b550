"""The demo's driver: it keeps going across episode ends, and its replay resets where it did."""

from __future__ import annotations

import numpy as np
from gymnasium.wrappers import TimeLimit

from xworld_env.demo import drive
from xworld_env.envs.xworld import XWorldEnv


def test_drive_runs_all_steps_across_episodes_and_replays_exactly(tiny_env_kwargs):
    env = TimeLimit(XWorldEnv(cache="none", render_mode="rgb_array", **tiny_env_kwargs), 2)
    first = drive(env, 5, seed=3, family="merge")
    # The random heads end episodes early; the time limit ends them after 2 steps at the latest.
    ends = first["ends"]
    assert len(first["actions"]) == 5 and ends
    assert all(b - a <= 2 for a, b in zip([-1, *ends], ends, strict=False))
    assert len(first["frames"]) == 1 + 5 + len(ends)  # the reset frame of each episode is kept
    replay_env = TimeLimit(XWorldEnv(cache="none", render_mode="rgb_array", **tiny_env_kwargs), 50)
    again = drive(replay_env, 5, seed=3, family="merge", actions=first["actions"],
                  ends=set(first["ends"]))
    assert again["ends"] == first["ends"]
    for a, b in zip(first["views"], again["views"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_run_demo_writes_the_video_and_reports_speed_fidelity_and_motion(calm_checkpoint,
                                                                         tmp_path):
    from xworld_env.demo import run_demo

    # Episodes that run on: motion is taken within an episode.
    result = run_demo(tmp_path / "demo.gif", steps=4, checkpoint=str(calm_checkpoint),
                      speed="kinematic")
    assert (tmp_path / "demo.gif").stat().st_size > 0
    assert result["steps"] == 4 and result["speedup"] > 0
    assert 0.0 <= result["skip_rate"] <= 1.0
    assert result["psnr_vs_full_min_db"] <= result["psnr_vs_full_mean_db"]
    assert result["motion"] >= 0.0 and result["full_compute_motion"] >= 0.0
    assert result["speed"] == "kinematic" and -1.0 <= result["mean_throttle"] <= 1.0


def test_run_demo_motion_leaves_out_the_jumps_of_resets(tiny_checkpoint, tmp_path):
    from xworld_env.demo import run_demo

    # The random heads end every episode at its first step: no two views within one episode.
    result = run_demo(tmp_path / "demo.gif", steps=4, checkpoint=str(tiny_checkpoint))
    assert result["episodes"] == 4
    assert np.isnan(result["motion"]) and np.isnan(result["full_compute_motion"])


def test_demo_video_path_and_steps_are_checked_before_driving(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    import xworld_env.demo as demo

    with pytest.raises(ValueError, match=r"\.gif or \.mp4.*demo\.avi"):
        demo.run_demo(tmp_path / "demo.avi")  # raises before any env is built
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        demo.run_demo(tmp_path / "demo.gif", steps=0)
    assert not list(tmp_path.iterdir())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "imageio_ffmpeg" else real(name))
    with pytest.raises(ValueError, match="imageio-ffmpeg"):
        demo.check_video_path(tmp_path / "demo.mp4")
    assert demo.check_video_path(tmp_path / "demo.GIF").suffix == ".GIF"


def test_demo_writes_gif_and_mp4_videos_of_the_frames(tmp_path):
    import imageio.v2 as imageio
    import pytest

    from xworld_env.demo import check_video_path, write_video

    pytest.importorskip("imageio_ffmpeg")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    for name in ("a/demo.gif", "b/demo.mp4"):
        out = check_video_path(tmp_path / name)
        write_video(out, frames, fps=4)
        read = imageio.mimread(out)
        assert len(read) == 3
        # MP4 pads to even sizes for the codec.
        assert read[0].shape[:2] == ((5, 7) if out.suffix == ".gif" else (6, 8))
    np.testing.assert_array_equal(imageio.mimread(tmp_path / "a/demo.gif")[1][..., :3],
                                  frames[1])
