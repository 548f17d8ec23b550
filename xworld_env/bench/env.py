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


#: Cache policies of the batched measurements: X-Cache computing only the worlds that need a
#: block ("gather"), X-Cache reusing only when every world agrees ("all"), and full compute.
BATCHED_POLICIES = {
    "xcache": "xcache",
    "xcache_all": {"policy": "xcache", "batch_mode": "all"},
    "none": "none",
}


def _batched(cache, n: int, steps: int, seed: int, checkpoint: str | None) -> float:
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

    Batched rows also time X-Cache's ``batch_mode="all"`` against the default ``"gather"``.

    Each measurement starts from a reset, so it includes X-Cache's warmup chunk, as an RL
    rollout of that length would.
    """
    result = {"single": {}, "batched": {}, "steps": steps, "machine": machine_info()}
    for cache in ("xcache", "none"):
        result["single"][cache] = _single(cache, steps, seed, checkpoint)
    for n in sizes:
        result["batched"][str(n)] = {
            name: _batched(cache, n, max(4, steps // max(1, n // 4)), seed, checkpoint)
            for name, cache in BATCHED_POLICIES.items()
        }
    return result


def main(args) -> dict:
    result = run(steps=args.steps, sizes=tuple(args.sizes), checkpoint=args.checkpoint)
    print(f"{'env':<14}{'xcache':>10}{'xcache_all':>12}{'full':>10}{'xcache/full':>13}"
          "   (env-steps/s)")
    rows = [("single", result["single"])] + [
        (f"batched N={n}", r) for n, r in result["batched"].items()
    ]
    for name, r in rows:
        all_mode = f"{r['xcache_all']:>12.1f}" if "xcache_all" in r else f"{'-':>12}"
        print(f"{name:<14}{r['xcache']:>10.1f}{all_mode}{r['none']:>10.1f}"
              f"{r['xcache'] / r['none']:>13.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result
