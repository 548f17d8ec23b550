"""``python -m agents.evaluate POLICY.zip``: a saved policy in the world model and in the
ground-truth simulator, side by side (mean return, collision rate, distance driven)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def evaluate_in(env, policy, episodes: int, seed: int, max_steps: int) -> dict:
    """Runs ``episodes`` episodes; ``policy(obs) -> action``."""
    returns, collisions, distances = [], 0, []
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        total, distance = 0.0, 0.0
        for _ in range(max_steps):
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += reward
            distance += float(info["ego"]["speed"]) * 0.5
            if terminated or truncated:
                break
        collided = info.get("collision", info.get("collision_prob", 0.0) > 0.5)
        collisions += bool(collided)
        returns.append(total)
        distances.append(distance)
    return {
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "collision_rate": collisions / episodes,
        "mean_distance_m": float(np.mean(distances)),
    }


def sb3_policy(path: str):
    """``obs -> action`` of a saved SB3 PPO model (deterministic)."""
    from stable_baselines3 import PPO

    model = PPO.load(path, device="cpu")
    return lambda obs: model.predict(obs, deterministic=True)[0]


def evaluate(policy_path: str, episodes: int = 5, seed: int = 100, max_steps: int = 80,
             checkpoint: str | None = None, scenario_bank: str | None = None,
             family: str | None = None) -> dict:
    """The same policy in ``XWorld-v0`` and ``XWorldSim-v0``."""
    from xworld_env.envs.xworld import XWorldEnv
    from xworld_env.sim.sim_env import XWorldSimEnv

    policy = sb3_policy(policy_path)
    world = XWorldEnv(checkpoint=checkpoint, scenario_bank=scenario_bank, family=family)
    sim = XWorldSimEnv(family=family)
    return {
        "policy": policy_path,
        "XWorld-v0": evaluate_in(world, policy, episodes, seed, max_steps),
        "XWorldSim-v0": evaluate_in(sim, policy, episodes, seed, max_steps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.evaluate", description=__doc__)
    parser.add_argument("policy", help="saved SB3 PPO model (.zip)")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--family", default=None)
    parser.add_argument("--checkpoint", default=None, help="world model (default: shipped)")
    parser.add_argument("--scenario-bank", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not Path(args.policy).is_file():
        parser.error(f"no policy file at {args.policy}")
    result = evaluate(args.policy, args.episodes, args.seed, args.max_steps, args.checkpoint,
                      args.scenario_bank, args.family)
    print(f"{'env':<14}{'mean return':>12}{'collisions':>12}{'distance m':>12}")
    for name in ("XWorld-v0", "XWorldSim-v0"):
        r = result[name]
        print(f"{name:<14}{r['mean_return']:>12.2f}{r['collision_rate']:>12.2f}"
              f"{r['mean_distance_m']:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
