"""``xworld bench env``: env steps per second, single and batched, X-Cache on and off (and,
optionally, the baseline caches beside them)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from xworld_env.bench.machine import machine_info, write_json
from xworld_env.bench.metrics import frame_motion, observed_views
from xworld_env.engine import (
    NOISE_MODES,
    EngineConfig,
    resolve_attention_dtype,
    resolve_decode_dtype,
)
from xworld_env.envs.policies import LaneKeeper


def engine_skip_rate(engine) -> float | None:
    """Skip rate of the engine's cache policy so far (None for full compute)."""
    stats = getattr(engine.executor, "stats", None)
    return None if stats is None else stats.summary()["skip_rate"]


#: A measurement's precisions: the DiT's, the decoder's and attention's (env kwargs ``dtype``,
#: ``decode_dtype`` and ``attention_dtype``, in ``PRECISION_KWARGS`` order).
Precision = tuple[str, str, str]
PRECISION_KWARGS = ("dtype", "decode_dtype", "attention_dtype")


def _precision_kwargs(precision: Precision) -> dict[str, str]:
    """The env (and ``EngineConfig``) kwargs of a measurement's precisions."""
    return dict(zip(PRECISION_KWARGS, precision, strict=True))


def _single(cache: str, steps: int, seed: int, checkpoint: str | None,
            precision: Precision,
            noise: str | None = None) -> tuple[float, float | None, float]:
    """Steps/s, skip rate, and the views' frame-to-frame change over the second half of the
    steps (``frame_motion`` of each step's observation against the one before, within an
    episode, pixel levels; taken outside the timed steps' own work; nan with no such pair)."""
    from xworld_env.envs.xworld import XWorldEnv

    env = XWorldEnv(cache=cache, family="highway", checkpoint=checkpoint, noise=noise,
                    **_precision_kwargs(precision))
    policy = LaneKeeper(seed=seed)
    obs, info = env.reset(seed=seed)
    # views[k] is the observation after step k (views[0] the reset's); starts: new episodes.
    views, starts, elapsed = [observed_views(obs)], [], 0.0
    for _ in range(steps):
        started = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(policy(obs, info["family"]))
        if terminated or truncated:
            obs, info = env.reset()
            starts.append(len(views))
        elapsed += time.perf_counter() - started
        views.append(observed_views(obs))
    # The changes into steps steps // 2 + 1 .. steps.
    motion = frame_motion(np.stack(views), starts, first=steps // 2)
    return steps / elapsed, engine_skip_rate(env.engine), motion


#: Cache policies of the batched measurements: X-Cache computing only the worlds that need a
#: block ("gather"), X-Cache reusing only when every world agrees ("all"), and full compute.
BATCHED_POLICIES = {
    "xcache": "xcache",
    "xcache_all": {"policy": "xcache", "batch_mode": "all"},
    "none": "none",
}


def _batched(cache, n: int, steps: int, seed: int, checkpoint: str | None,
             precision: Precision, noise: str | None = None) -> tuple[float, float | None]:
    from xworld_env.envs.xworld_vector import XWorldVectorEnv

    envs = XWorldVectorEnv(num_envs=n, cache=cache, family="highway", checkpoint=checkpoint,
                           noise=noise, **_precision_kwargs(precision))
    policy = LaneKeeper(seed=seed)
    obs, _ = envs.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        obs, *_ = envs.step(policy.batch(obs))
    return n * steps / (time.perf_counter() - started), engine_skip_rate(envs.engine)


#: Baseline cache policies ``run`` can time beside X-Cache, at their default settings.
BASELINES = ("fbcache", "static")


def run(steps: int = 40, sizes: tuple[int, ...] = (1, 4, 8, 16), seed: int = 0,
        checkpoint: str | None = None, dtypes: tuple[str, ...] = ("float32",),
        baselines: tuple[str, ...] = (), decode_dtypes: tuple[str, ...] = ("auto",),
        repeats: int = 1, progress: bool = True, noise: str | None = None,
        attention_dtypes: tuple[str, ...] = ("auto",)) -> dict:
    """Env-steps per second (summed over worlds), X-Cache and full compute side by side.

    Batched rows also time X-Cache's ``batch_mode="all"`` against the default ``"gather"``;
    ``baselines`` (names from :data:`BASELINES`) are timed beside them, single and batched.

    Each measurement is ``steps`` steps of every world from a reset, so it includes X-Cache's
    warmup chunk, as an RL rollout of that length would. ``skip_rate`` holds the cache
    policies' skip rates of the same measurements. With ``repeats`` > 1 every measurement is
    taken that many times, one round of all of them after another, and the rates are medians
    (the rollouts are deterministic, so skip rates do not change between rounds).

    ``dtypes`` are world-model compute precisions (the envs' ``dtype`` kwarg),
    ``decode_dtypes`` decoder precisions (``decode_dtype``) and ``attention_dtypes`` those of
    attention's products (``attention_dtype``); every combination of them is measured,
    labelled by the DiT's precision, followed by ``+decode:<decoder's>`` when more than one
    decoder precision is asked and ``+attention:<attention's>`` when more than one attention
    precision is. The top-level figures are the first combination's. With more than one, every
    measurement is taken in each right after another, ``precisions`` holds every
    combination's figures and ``speedup`` each one's rates over the first's. ``decode_dtype``
    and ``attention_dtype`` map each label to the precisions it resolved to. ``progress`` shows
    a bar over the measurements.

    ``noise`` is the envs' noise mode (``fixed`` or ``fresh``; None: the checkpoint's). How
    much a cache can reuse depends on how much the world moves, so the single env's rows carry
    ``motion``: the views' mean frame-to-frame change (pixel levels 0-255) over the second half
    of the steps, for each policy.
    """
    if noise is not None and noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES} or None (the checkpoint's), "
                         f"got {noise!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not all(isinstance(n, int) and n >= 1 for n in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct ints >= 1 (worlds per batch), got {sizes}")
    for name, values in (("dtypes", dtypes), ("decode_dtypes", decode_dtypes),
                         ("attention_dtypes", attention_dtypes)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name} must be distinct and at least one, got {values}")
    labels = {
        dt + (f"+decode:{dd}" if len(decode_dtypes) > 1 else "")
        + (f"+attention:{ad}" if len(attention_dtypes) > 1 else ""): (dt, dd, ad)
        for dt in dtypes for dd in decode_dtypes for ad in attention_dtypes
    }
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown or len(set(baselines)) != len(baselines):
        raise ValueError(f"baselines must be distinct names from {BASELINES}, got {baselines}")
    for precision in labels.values():
        # Rejects unknown names and combinations before anything runs.
        EngineConfig(**_precision_kwargs(precision))
    # Every measurement: (row, policy name, cache, label, precision); row "single" or N.
    jobs = [("single", cache, cache, label, precision)
            for cache in ("xcache", "none", *baselines) for label, precision in labels.items()]
    jobs += [(str(n), name, cache, label, precision) for n in sizes
             for name, cache in (*BATCHED_POLICIES.items(), *((b, b) for b in baselines))
             for label, precision in labels.items()]
    rates: dict[tuple[str, str, str], list[float]] = {}
    skips: dict[tuple[str, str, str], float | None] = {}
    motion: dict[tuple[str, str], float] = {}
    bar = tqdm(total=repeats * len(jobs), desc="env measurements", disable=not progress,
               leave=False)
    for _ in range(repeats):
        for row, name, cache, label, precision in jobs:
            bar.set_postfix_str(f"{row} {name} {label}")
            if row == "single":
                rate, skip, motion[name, label] = _single(cache, steps, seed, checkpoint,
                                                          precision, noise)
            else:
                rate, skip = _batched(cache, int(row), steps, seed, checkpoint, precision, noise)
            rates.setdefault((row, name, label), []).append(rate)
            skips[row, name, label] = skip
            bar.update()
    bar.close()
    per = {label: {"single": {}, "batched": {}, "skip_rate": {"single": {}, "batched": {}},
                   "motion": {name: m for (name, lab), m in motion.items() if lab == label}}
           for label in labels}
    for (row, name, label), values in rates.items():
        figures = per[label]
        if row == "single":
            target, skip_target = figures["single"], figures["skip_rate"]["single"]
        else:
            target = figures["batched"].setdefault(row, {})
            skip_target = figures["skip_rate"]["batched"].setdefault(row, {})
        target[name] = float(np.median(values))
        if skips[row, name, label] is not None:
            skip_target[name] = skips[row, name, label]
    first = next(iter(labels))
    cpu = torch.device("cpu")
    result = {**per[first], "steps": steps, "repeats": repeats, "dtype": dtypes[0],
              "noise": noise or "checkpoint",
              "decode_dtype": {label: resolve_decode_dtype(dd, dt, cpu)
                               for label, (dt, dd, _) in labels.items()},
              "attention_dtype": {label: resolve_attention_dtype(ad, dt, cpu)
                                  for label, (dt, _, ad) in labels.items()},
              "machine": machine_info()}
    if len(labels) > 1:
        base = per[first]
        result["precisions"] = per
        result["speedup"] = {
            label: {"single": {k: v / base["single"][k] for k, v in per[label]["single"].items()},
                    "batched": {n: {k: v / base["batched"][n][k] for k, v in rates.items()}
                                for n, rates in per[label]["batched"].items()}}
            for label in list(labels)[1:]
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
    result = run(steps=args.steps, sizes=tuple(args.sizes), checkpoint=args.checkpoint,
                 dtypes=tuple(args.dtype), baselines=tuple(args.baselines),
                 decode_dtypes=tuple(args.decode_dtype), repeats=args.repeats,
                 noise=args.noise, attention_dtypes=tuple(args.attention_dtype))
    labels = list(result["decode_dtype"])
    for label in labels:
        figures = result["precisions"][label] if len(labels) > 1 else result
        print(f"{label} (decoder in {result['decode_dtype'][label]}, attention in "
              f"{result['attention_dtype'][label]}):")
        print("\n".join(_table(figures)))
        moves = ", ".join(f"{k} {v:.2f}" for k, v in figures["motion"].items())
        last = result["steps"] - result["steps"] // 2
        print(f"single env, frame-to-frame change of the views over the last {last} steps "
              f"(pixel levels 0-255; {result['noise']} noise): {moves}")
    for label, ratios in result.get("speedup", {}).items():
        rows = [("single", ratios["single"])] + [(f"batched N={n}", r)
                                                 for n, r in ratios["batched"].items()]
        print(f"{label} over {labels[0]} (same run, measurements interleaved):")
        for name, r in rows:
            print(f"  {name:<14}" + "  ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    if args.json:
        print(f"wrote {write_json(args.json, result)}")
    return result
