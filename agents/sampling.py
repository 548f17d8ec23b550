"""``python -m agents.sampling``: how fast an SB3 PPO policy samples batched XWorld-v0 worlds.

X-Cache reuses a block only while consecutive chunks are alike, and an abrupt change of action
vetoes reuse. How a policy explores therefore sets how much X-Cache saves while it trains:
SB3's default Gaussian exploration draws independent noise every step, gSDE (``use_sde``)
draws noise weights every ``sde_sample_freq`` steps (or once per rollout) and applies them to
the policy's features, so between draws the actions change only as the scene does.

For each exploration setting, an untrained PPO policy of ``agents.train``'s architecture
(seeded, so every setting starts from the same network) drives the same batched worlds from the
same reset for ``steps`` steps, choosing actions as PPO's rollout collection does (a
stochastic ``predict``; gSDE noise weights drawn at the start and every ``sde_sample_freq``
steps). Every setting runs with
X-Cache and with full compute, in one process, the order rotating between repeats; rates are
medians over repeats and include the policy's own forward passes, as a training run's
collection does.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.train import AgentTrainConfig
from agents.vec_env import XWorldSB3VecEnv
from xworld_env.bench.machine import machine_info, write_json
from xworld_env.xcache.stats import skip_rate_between

#: Exploration settings compared, as ``AgentTrainConfig`` fields: SB3's default (independent
#: Gaussian noise every step), gSDE as ``agents.train`` runs it by default (new noise weights
#: every 8 steps) and gSDE with one draw per rollout.
EXPLORATIONS = {
    "gaussian": {"use_sde": False, "log_std_init": 0.0},
    "gsde": {"use_sde": True, "sde_sample_freq": 8, "log_std_init": -2.0},
    "gsde_rollout": {"use_sde": True, "sde_sample_freq": -1, "log_std_init": -2.0},
}
CACHES = ("xcache", "none")


def _counts(venv: XWorldSB3VecEnv) -> tuple[int, int]:
    stats = getattr(venv.venv.engine.executor, "stats", None)
    if stats is None:
        return 0, 0
    return stats.counts()


def _rollout(venv: XWorldSB3VecEnv, cfg: AgentTrainConfig, steps: int) -> dict:
    """One rollout of an untrained PPO policy of ``cfg`` (its exploration, seeded by its seed)
    from a reset; rate and skip rate."""
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", venv, **cfg.ppo_kwargs())
    venv.seed(cfg.seed)
    obs = venv.reset()
    if model.use_sde:
        model.policy.reset_noise(venv.num_envs)
    before = _counts(venv)
    actions = []
    started = time.perf_counter()
    for step in range(steps):
        if model.use_sde and cfg.sde_sample_freq > 0 and step % cfg.sde_sample_freq == 0:
            model.policy.reset_noise(venv.num_envs)
        with torch.no_grad():
            action, _ = model.predict(obs, deterministic=False)
        obs, _, _, _ = venv.step(action)
        actions.append(action)
    elapsed = time.perf_counter() - started
    steps_taken = np.stack(actions)
    return {
        "steps_per_s": venv.num_envs * steps / elapsed,
        "skip_rate": skip_rate_between(before, _counts(venv)),
        "mean_action_change": float(np.abs(np.diff(steps_taken, axis=0)).mean()),
        "saturated": float((np.abs(steps_taken) >= 0.999).mean()),
    }


def run(explorations: tuple[str, ...] = tuple(EXPLORATIONS), worlds: int = 8, steps: int = 48,
        repeats: int = 1, seed: int = 0, checkpoint: str | None = None,
        scenario_bank: str | None = None, env_kwargs: dict | None = None,
        progress: bool = True) -> dict:
    """Env steps/s and X-Cache skip rate of PPO rollouts per exploration, X-Cache and full
    compute side by side (see the module docstring); ``env_kwargs``: further
    ``XWorldVectorEnv`` arguments (e.g. ``reward``)."""
    unknown = sorted(set(explorations) - set(EXPLORATIONS))
    if not explorations:
        raise ValueError(f"no exploration given; accepted: {list(EXPLORATIONS)}")
    if unknown:
        raise ValueError(f"unknown exploration(s) {unknown}; accepted: {list(EXPLORATIONS)}")
    if worlds < 1 or steps < 2 or repeats < 1:
        raise ValueError(f"worlds and repeats must be >= 1 and steps >= 2, got worlds={worlds}, "
                         f"steps={steps}, repeats={repeats}")
    started = time.perf_counter()
    world = {"checkpoint": checkpoint, "scenario_bank": scenario_bank, "family": "highway"}
    cfgs = {name: AgentTrainConfig(num_envs=worlds, seed=seed, **world, **EXPLORATIONS[name])
            for name in explorations}
    venvs = {cache: XWorldSB3VecEnv(
        num_envs=worlds, **AgentTrainConfig(cache=cache, **world).world_kwargs("cpu"),
        **(env_kwargs or {})) for cache in CACHES}
    runs = [(name, cache) for name in explorations for cache in CACHES]
    samples: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
    bar = tqdm(total=len(runs) * repeats, desc="rollouts", disable=not progress, leave=False)
    for r in range(repeats):
        for name, cache in runs[r % len(runs):] + runs[:r % len(runs)]:
            samples[name, cache].append(_rollout(venvs[cache], cfgs[name], steps))
            bar.update()
    bar.close()
    for venv in venvs.values():
        venv.close()
    result: dict = {"worlds": worlds, "steps": steps, "repeats": repeats, "family": "highway",
                    "explorations": {}, "machine": machine_info(),
                    "wall_s": time.perf_counter() - started}
    for name in explorations:
        row = {"settings": EXPLORATIONS[name]}
        for cache in CACHES:
            got = samples[name, cache]
            row[cache] = {
                "steps_per_s": float(np.median([g["steps_per_s"] for g in got])),
                "steps_per_s_repeats": [g["steps_per_s"] for g in got],
                "skip_rate": got[0]["skip_rate"],
                "mean_action_change": got[0]["mean_action_change"],
                "saturated": got[0]["saturated"],
            }
        row["speedup"] = row["xcache"]["steps_per_s"] / row["none"]["steps_per_s"]
        result["explorations"][name] = row
    return result


def format_table(result: dict) -> str:
    lines = [f"PPO rollouts, {result['worlds']} worlds x {result['steps']} steps, highway, "
             f"medians of {result['repeats']}",
             f"{'exploration':12s} {'X-Cache':>8s} {'full':>8s} {'ratio':>6s} {'skip':>6s} "
             f"{'|da|':>6s} {'at ±1':>6s}"]
    for name, row in result["explorations"].items():
        x, n = row["xcache"], row["none"]
        skip = "-" if x["skip_rate"] is None else f"{x['skip_rate']:.2f}"
        lines.append(f"{name:12s} {x['steps_per_s']:8.2f} {n['steps_per_s']:8.2f} "
                     f"{row['speedup']:6.2f} {skip:>6s} "
                     f"{x['mean_action_change']:6.3f} {x['saturated']:6.2f}")
    lines.append("(env steps/s summed over worlds; skip: X-Cache skip rate; |da|: mean change "
                 "of an action entry from one step to the next; at ±1: share of action entries "
                 "clipped to the bounds)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.sampling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explorations", nargs="+", default=list(EXPLORATIONS),
                        choices=list(EXPLORATIONS), help="settings to compare (default: all)")
    parser.add_argument("--worlds", type=int, default=8, help="batched worlds (default 8)")
    parser.add_argument("--steps", type=int, default=48, help="steps per rollout (default 48)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rollouts per setting and cache; rates are medians (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: shipped)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = run(tuple(args.explorations), args.worlds, args.steps, args.repeats, args.seed,
                     args.checkpoint)
    except ValueError as err:
        print(f"python -m agents.sampling: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
