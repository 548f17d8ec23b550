"""``xworld bench env``: env steps per second, single and batched, X-Cache on and off (and,
optionally, the baseline caches beside them)."""

from __future__ import annotations

import time

import numpy as np

from xworld_env.bench.machine import machine_info, write_json
from xworld_env.envs.policies import LaneKeeper


def engine_skip_rate(engine) -> float | None:
    """Skip rate of the engine's cache policy so far (None for full compute)."""
    stats = getattr(engine.executor, "stats", None)
    return None if stats is None else stats.summary()["skip_rate"]


def _single(cache: str, steps: int, seed: int, checkpoint: str | None,
            dtype: str) -> tuple[float, float | None]:
    from xworld_env.envs.xworld import XWorldEnv

    env = XWorldEnv(cache=cache, family="highway", checkpoint=checkpoint, dtype=dtype)
    policy = LaneKeeper(seed=seed)
    obs, info = env.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(policy(obs, info["family"]))
        if terminated or truncated:
            obs, info = env.reset()
    return steps / (time.perf_counter() - started), engine_skip_rate(env.engine)


#: Cache policies of the batched measurements: X-Cache computing only the worlds that need a
#: block ("gather"), X-Cache reusing only when every world agrees ("all"), and full compute.
BATCHED_POLICIES = {
    "xcache": "xcache",
    "xcache_all": {"policy": "xcache", "batch_mode": "all"},
    "none": "none",
}


def _batched(cache, n: int, steps: int, seed: int, checkpoint: str | None,
             dtype: str) -> tuple[float, float | None]:
    from xworld_env.envs.xworld_vector import XWorldVectorEnv

    envs = XWorldVectorEnv(num_envs=n, cache=cache, family="highway", checkpoint=checkpoint,
                           dtype=dtype)
    policy = LaneKeeper(seed=seed)
    obs, _ = envs.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        actions = np.stack([policy({"ego": obs["ego"][i]}) for i in range(n)])
        obs, *_ = envs.step(actions)
    return n * steps / (time.perf_counter() - started), engine_skip_rate(envs.engine)


#: Baseline cache policies ``run`` can time beside X-Cache, at their default settings.
BASELINES = ("fbcache", "static")


def run(steps: int = 20, sizes: tuple[int, ...] = (1, 4, 8, 16), seed: int = 0,
        checkpoint: str | None = None, dtypes: tuple[str, ...] = ("float32",),
        baselines: tuple[str, ...] = ()) -> dict:
    """Env-steps per second (summed over worlds), X-Cache and full compute side by side.

    Batched rows also time X-Cache's ``batch_mode="all"`` against the default ``"gather"``;
    ``baselines`` (names from :data:`BASELINES`) are timed beside them, single and batched.

    Each measurement is ``steps`` steps of every world from a reset, so it includes X-Cache's
    warmup chunk, as an RL rollout of that length would. ``skip_rate`` holds the cache
    policies' skip rates of the same measurements.

    ``dtypes`` are world-model compute precisions (the envs' ``dtype`` kwarg); the top-level
    figures are the first one's. With more than one, every measurement is taken in each
    precision right after another, ``precisions`` holds every precision's figures and
    ``speedup`` each one's rates over the first's.
    """
    if not dtypes or len(set(dtypes)) != len(dtypes):
        raise ValueError(f"dtypes must be distinct and at least one, got {dtypes}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown or len(set(baselines)) != len(baselines):
        raise ValueError(f"baselines must be distinct names from {BASELINES}, got {baselines}")
    per = {dt: {"single": {}, "batched": {}, "skip_rate": {"single": {}, "batched": {}}}
           for dt in dtypes}
    for cache in ("xcache", "none", *baselines):
        for dt in dtypes:
            rate, skip = _single(cache, steps, seed, checkpoint, dt)
            per[dt]["single"][cache] = rate
            if skip is not None:
                per[dt]["skip_rate"]["single"][cache] = skip
    for n in sizes:
        for name, cache in (*BATCHED_POLICIES.items(), *((b, b) for b in baselines)):
            for dt in dtypes:
                rate, skip = _batched(cache, n, steps, seed, checkpoint, dt)
                per[dt]["batched"].setdefault(str(n), {})[name] = rate
                skips = per[dt]["skip_rate"]["batched"].setdefault(str(n), {})
                if skip is not None:
                    skips[name] = skip
    result = {**per[dtypes[0]], "steps": steps, "dtype": dtypes[0], "machine": machine_info()}
    if len(dtypes) > 1:
        base = per[dtypes[0]]
        result["precisions"] = per
        result["speedup"] = {
            dt: {"single": {k: v / base["single"][k] for k, v in per[dt]["single"].items()},
                 "batched": {n: {k: v / base["batched"][n][k] for k, v in rates.items()}
                             for n, rates in per[dt]["batched"].items()}}
            for dt in dtypes[1:]
        }
    return result


def _table(figures: dict) -> list[str]:
    extra = [k for k in figures["single"] if k not in ("xcache", "none")]
    lines = [f"{'env':<14}{'xcache':>10}{'xcache_all':>12}{'full':>10}{'xcache/full':>13}"
             f"{'skip rate':>11}" + "".join(f"{k:>10}{'skip':>6}" for k in extra)
             + "   (env-steps/s)"]
    skips = figures["skip_rate"]
    rows = [("single", figures["single"], skips["single"])] + [
        (f"batched N={n}", r, skips["batched"][n]) for n, r in figures["batched"].items()
    ]
    for name, r, skip in rows:
        all_mode = f"{r['xcache_all']:>12.1f}" if "xcache_all" in r else f"{'-':>12}"
        lines.append(f"{name:<14}{r['xcache']:>10.1f}{all_mode}{r['none']:>10.1f}"
                     f"{r['xcache'] / r['none']:>13.2f}{skip.get('xcache', 0.0):>11.2f}"
                     + "".join(f"{r[k]:>10.1f}{skip.get(k, 0.0):>6.2f}" for k in extra))
    return lines


def main(args) -> dict:
    dtypes = tuple(args.dtype)
    result = run(steps=args.steps, sizes=tuple(args.sizes), checkpoint=args.checkpoint,
                 dtypes=dtypes, baselines=tuple(args.baselines))
    for dt in dtypes:
        figures = result["precisions"][dt] if len(dtypes) > 1 else result
        print(f"{dt}:")
        print("\n".join(_table(figures)))
    for dt, ratios in result.get("speedup", {}).items():
        rows = [("single", ratios["single"])] + [(f"batched N={n}", r)
                                                 for n, r in ratios["batched"].items()]
        print(f"{dt} over {dtypes[0]} (same run, measurements interleaved):")
        for name, r in rows:
            print(f"  {name:<14}" + "  ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    if args.json:
        print(f"wrote {write_json(args.json, result)}")
    return result
