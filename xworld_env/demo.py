"""``xworld demo``: drive the shipped world model with X-Cache on, write a video, and compare
with full compute on the same rollout."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

from xworld_env.bench.machine import machine_info
from xworld_env.bench.metrics import frame_motion, observed_views
from xworld_env.envs.policies import LaneKeeper
from xworld_env.envs.xworld import XWorldEnv

#: Video formats ``xworld demo`` writes, by file suffix.
VIDEO_SUFFIXES = (".gif", ".mp4")


def check_video_path(out: str | Path) -> Path:
    """The demo's video path, checked before any driving: a ``.gif`` (always) or ``.mp4``
    (with the ``imageio-ffmpeg`` package, which ``.[dev]`` installs) file.

    Raises:
        ValueError: another suffix, or ``.mp4`` without an MP4 writer.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"the demo writes {' or '.join(VIDEO_SUFFIXES)} videos; got {str(out)!r}")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(f"writing {str(out)!r} needs the imageio-ffmpeg package "
                         "(pip install imageio-ffmpeg); a .gif path needs nothing more")
    return out


def write_video(out: Path, frames: list[np.ndarray], fps: int) -> None:
    """Writes (h, w, 3) uint8 ``frames`` to ``out`` (``check_video_path``): a looping GIF, or
    an H.264 MP4 whose frames are padded with black to even sizes (what the codec needs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        imageio.mimsave(out, frames, duration=1000 / fps, loop=0)
        return
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with imageio.get_writer(out, fps=fps, codec="libx264", macro_block_size=2) as writer:
        for frame in frames:
            writer.append_data(np.pad(frame, pad))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def drive(env: XWorldEnv, steps: int, seed: int, family: str | None, actions=None,
          ends=None, desc: str = "") -> dict:
    """``steps`` env steps from the lane keeper (or the given ``actions``); when an episode ends,
    the next starts with the next seed. A replay passes the first run's ``actions`` and ``ends``
    (the steps after which an episode ended) and so resets exactly where it did."""
    options = {"family": family} if family else None
    policy = LaneKeeper(seed=seed)
    obs, info = env.reset(seed=seed, options=options)
    frames, views, taken, step_times, ended = [env.render()], [], [], [], []
    reused = evaluated = 0
    for i in tqdm(range(steps), desc=desc, leave=False):
        action = policy(obs, info["family"]) if actions is None else actions[i]
        started = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(action)
        step_times.append(time.perf_counter() - started)
        taken.append(action)
        views.append(observed_views(obs))
        frames.append(env.render())
        reused += info["cache"]["reused"]
        evaluated += info["cache"]["eligible"]
        done = (terminated or truncated) if ends is None else i in ends
        if done and i < steps - 1:
            ended.append(i)
            obs, info = env.reset(seed=seed + len(ended), options=options)
            frames.append(env.render())
    return {"frames": frames, "views": views, "actions": taken, "step_times": step_times,
            "ends": ended, "skip_rate": reused / evaluated if evaluated else 0.0,
            "family": info["family"]}


def _late_motion(run: dict) -> float:
    """``frame_motion`` of a drive's views over its second half, leaving out the jump after
    each episode end (``views[i]`` follows step ``i``; an episode ended after step ``i`` in
    ``ends``)."""
    return frame_motion(np.stack(run["views"]), [i + 1 for i in run["ends"]],
                        first=len(run["views"]) // 2)


def run_demo(out: str | Path = "xworld_demo.gif", steps: int = 40, seed: int = 0,
             family: str | None = "highway", checkpoint: str | None = None,
             cache: str = "xcache", fps: int = 4, dtype: str = "float32",
             decode_dtype: str = "auto", speed: str = "heads") -> dict:
    """Drives with ``cache``, replays the same actions with full compute, writes the video
    (``out``: a ``.gif`` or ``.mp4`` path, checked first: ``check_video_path``). Both runs
    compute in precision ``dtype``, decode in ``decode_dtype`` and take the ego speed from
    ``speed`` (the envs' ``speed``)."""
    out = check_video_path(out)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    env = XWorldEnv(cache=cache, family=family, checkpoint=checkpoint, render_mode="rgb_array",
                    dtype=dtype, decode_dtype=decode_dtype, speed=speed)
    fast = drive(env, steps, seed, family, desc=f"drive ({cache})")
    full_env = XWorldEnv(cache="none", family=family, checkpoint=checkpoint,
                         render_mode="rgb_array", dtype=dtype, decode_dtype=decode_dtype,
                         speed=speed)
    full = drive(full_env, len(fast["actions"]), seed, family, actions=fast["actions"],
                 ends=set(fast["ends"]), desc="replay (full compute)")
    write_video(out, fast["frames"], fps)
    psnrs = [_psnr(a, b) for a, b in zip(fast["views"], full["views"])]
    finite = [p for p in psnrs if np.isfinite(p)]
    result = {
        "video": str(out),
        "family": fast["family"],
        "steps": len(fast["actions"]),
        "episodes": len(fast["ends"]) + 1,
        "steps_per_s": len(fast["step_times"]) / sum(fast["step_times"]),
        "full_compute_steps_per_s": len(full["step_times"]) / sum(full["step_times"]),
        "skip_rate": fast["skip_rate"],
        "dtype": dtype,
        "decode_dtype": env.engine.decode_dtype,
        "speed": speed,
        "mean_throttle": float(np.mean([a[0] for a in fast["actions"]])),
        "psnr_vs_full_mean_db": float(np.mean(finite)) if finite else float("inf"),
        "psnr_vs_full_min_db": float(np.min(finite)) if finite else float("inf"),
        # How much the world still moves: the views' change from one step to the next over the
        # second half of the drive (within episodes), the cached run's and the replay's.
        "motion": _late_motion(fast),
        "full_compute_motion": _late_motion(full),
        "machine": machine_info(),
    }
    result["speedup"] = result["steps_per_s"] / result["full_compute_steps_per_s"]
    return result


def main(args) -> dict:
    result = run_demo(args.out, steps=args.steps, seed=args.seed, family=args.family,
                      checkpoint=args.checkpoint, cache=args.cache,
                      dtype=args.dtype, decode_dtype=args.decode_dtype, speed=args.speed)
    print(f"wrote {result['video']} ({result['steps']} steps in {result['episodes']} "
          f"episode(s), family {result['family']}; DiT in {result['dtype']}, decoder in "
          f"{result['decode_dtype']}; ego speed from {result['speed']}, mean throttle "
          f"{result['mean_throttle']:+.2f})")
    print(f"steps/s with {args.cache}: {result['steps_per_s']:.1f}   "
          f"full compute: {result['full_compute_steps_per_s']:.1f}   "
          f"speedup: {result['speedup']:.2f}x")
    if np.isfinite(result["psnr_vs_full_min_db"]):
        fidelity = (f"mean {result['psnr_vs_full_mean_db']:.1f} dB, "
                    f"min {result['psnr_vs_full_min_db']:.1f} dB")
    else:
        fidelity = "identical frames"
    print(f"skip rate: {result['skip_rate']:.2f}   PSNR vs full compute: {fidelity}")
    print(f"views' change from one step to the next over the second half (pixel levels 0-255): "
          f"{result['motion']:.2f} with {args.cache}, {result['full_compute_motion']:.2f} with "
          "full compute")
    return result
