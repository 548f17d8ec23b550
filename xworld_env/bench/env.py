"""``xworld bench env``: env steps per second, single and batched, X-Cache on and off."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xworld_env.bench.machine import machine_info
from xworld_env.envs.policies import LaneKeeper


def _single(cache: str, steps: int, seed: int, checkpoint: str | None) -> float:
    from xworld_env.envs.xworld import XWorldEnv

    env = XWorldEnv(cache=cache, family="highway", checkpoint=checkpoint)
    policy = LaneKeeper(seed=seed)
    obs, info = env.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(policy(obs, info["family"]))
        if terminated or truncated:
            obs, info = env.reset()
    return steps / (time.perf_counter() - started)


def _batched(cache: str, n: int, steps: int, seed: int, checkpoint: str | None) -> float:
    from xworld_env.envs.xworld_vector import XWorldVectorEnv

    envs = XWorldVectorEnv(num_envs=n, cache=cache, family="highway", checkpoint=checkpoint)
    policy = LaneKeeper(seed=seed)
    obs, _ = envs.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        actions = np.stack([policy({"ego": obs["ego"][i]}) for i in range(n)])
        obs, *_ = envs.step(actions)
    return n * steps / (time.perf_counter() - started)


def run(steps: int = 20, sizes: tuple[int, ...] = (1, 4, 8, 16), seed: int = 0,
        checkpoint: str | None = None) -> dict:
    """Env-steps per second (summed over worlds), X-Cache and full compute side by side.

    Each measurement starts from a reset, so it includes X-Cache's warmup chunk, as an RL
    rollout of that length would.
    """
    result = {"single": {}, "batched": {}, "steps": steps, "machine": machine_info()}
    for cache in ("xcache", "none"):
        result["single"][cache] = _single(cache, steps, seed, checkpoint)
    for n in sizes:
        result["batched"][str(n)] = {
            cache: _batched(cache, n, max(4, steps // max(1, n // 4)), seed, checkpoint)
            for cache in ("xcache", "none")
        }
    return result


def main(args) -> dict:
    result = run(steps=args.steps, sizes=tuple(args.sizes), checkpoint=args.checkpoint)
    print(f"{'env':<14}{'xcache steps/s':>16}{'full steps/s':>14}{'ratio':>8}")
    rows = [("single", result["single"])] + [
        (f"batched N={n}", r) for n, r in result["batched"].items()
    ]
    for name, r in rows:
        print(f"{name:<14}{r['xcache']:>16.1f}{r['none']:>14.1f}{r['xcache'] / r['none']:>8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result
