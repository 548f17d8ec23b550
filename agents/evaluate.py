"""``python -m agents.evaluate POLICY [POLICY ...]``: policies in the world model and in the
ground-truth simulator, side by side.

A policy is a saved SB3 model (``.zip``, run deterministically) or one of the reference
policies: ``random`` (uniform actions), ``idle`` (zero action: no throttle, no steering),
``lane-keeper`` (``xworld_env.envs.policies.LaneKeeper``) and ``autopilot`` (the simulator's
data-collection autopilot, ``xworld_env.sim.driver.Autopilot``: lane following with gap keeping
on the simulator's own state, so it drives in ``XWorldSim-v0`` only, as the reference of a
competent driver). Every policy drives the same episodes
(seeds ``seed``, ``seed + 1``, ...) in ``XWorld-v0`` and in ``XWorldSim-v0``; the table gives the
mean return, its standard error, the collision and off-road rates, the mean episode length, the
distance driven (speed x 0.5 s per step; in ``XWorld-v0`` the speed the heads read), the mean
action and how much the action varies over all steps (``act sd``: the larger of the two entries'
standard deviations). A policy whose actions do not vary drives open loop: whatever it sees, it
does the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xworld_env.cli import NOISES, SPEEDS

#: Policies evaluated by name rather than from a file.
REFERENCE_POLICIES = ("random", "idle", "lane-keeper", "autopilot")
#: Reference policies that read the simulator's state rather than the observation: they drive
#: in ``XWorldSim-v0`` only.
SIM_ONLY_POLICIES = ("autopilot",)
#: Environments a policy is evaluated in, by the name ``--envs`` takes.
ENV_IDS = {"world": "XWorld-v0", "sim": "XWorldSim-v0"}
#: Seconds of driving per env step (one chunk).
STEP_SECONDS = 0.5

#: ``policy(obs, family) -> action``.
Policy = Callable[[dict, str], np.ndarray]


def sb3_policy(path: str) -> Policy:
    """``(obs, family) -> action`` of a saved SB3 PPO model (deterministic)."""
    from stable_baselines3 import PPO

    model = PPO.load(path, device="cpu")
    return lambda obs, family: model.predict(obs, deterministic=True)[0]


def reference_policy(name: str, seed: int = 0) -> Policy:
    """One of :data:`REFERENCE_POLICIES` as ``(obs, family) -> action`` (the simulator-only
    ones need their env: :class:`SimAutopilot`)."""
    if name in SIM_ONLY_POLICIES:
        raise ValueError(f"{name} reads the simulator's state: make it with SimAutopilot(env)")
    if name == "random":
        rng = np.random.default_rng(seed)
        return lambda obs, family: rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    if name == "idle":
        return lambda obs, family: np.zeros(2, np.float32)
    if name == "lane-keeper":
        from xworld_env.envs.policies import LaneKeeper

        keeper = LaneKeeper()
        return lambda obs, family: keeper(obs, family)
    raise ValueError(f"unknown reference policy {name!r}; accepted: {REFERENCE_POLICIES} "
                     f"or a saved SB3 model (.zip)")


class SimAutopilot:
    """The simulator's data-collection autopilot as a policy of one ``XWorldSim-v0`` env.

    Reads the simulator's state (privileged), not the observation; ``reset`` after every reset
    of the env picks the episode's lane and cruise speed.
    """

    def __init__(self, env, seed: int = 0) -> None:
        from xworld_env.sim.driver import Autopilot

        self.env = env.unwrapped
        self.autopilot = Autopilot(np.random.default_rng(seed))

    def reset(self) -> None:
        self.autopilot.reset(self.env.scenario)

    def __call__(self, obs: dict, family: str) -> np.ndarray:
        return self.autopilot.act(self.env.scenario)


def check_envs_for(spec: str, env_ids: Sequence[str]) -> None:
    """Raises ``ValueError`` when a simulator-only policy is to drive without the simulator
    (``env_ids``: the env ids it would drive in)."""
    if spec in SIM_ONLY_POLICIES and ENV_IDS["sim"] not in env_ids:
        raise ValueError(f"{spec} reads the simulator's state and drives in "
                         f"{ENV_IDS['sim']} only; evaluate it with the sim env")


def check_policy(spec: str) -> None:
    """Raises ``ValueError`` unless ``spec`` names a reference policy or an existing file."""
    if spec not in REFERENCE_POLICIES and not Path(spec).is_file():
        raise ValueError(f"policy {spec!r} is neither a file nor one of "
                         f"{', '.join(REFERENCE_POLICIES)}; accepted: a saved SB3 model (.zip) "
                         f"or a reference policy")


def load_policy(spec: str, seed: int = 0) -> Policy:
    """A policy from a saved model's path or a reference policy's name."""
    check_policy(spec)
    if spec in REFERENCE_POLICIES:
        return reference_policy(spec, seed)
    return sb3_policy(spec)


def _events(info: dict, threshold: float) -> tuple[bool, bool]:
    """(collision, off road) of a step: the simulator's flags, or the world model's event
    probabilities above the env's termination threshold."""
    if "collision" in info:
        return bool(info["collision"]), bool(info["off_road"])
    return info["collision_prob"] > threshold, info["off_road_prob"] > threshold


def evaluate_in(env, policy: Policy, episodes: int, seed: int, max_steps: int,
                progress: str | None = None) -> dict:
    """Runs ``episodes`` episodes of ``policy`` in ``env`` (seeds ``seed``, ``seed + 1``, ...).

    Args:
        env: an ``XWorld-v0`` or ``XWorldSim-v0`` env (unwrapped or not).
        policy: ``(obs, family) -> action``; its ``reset()``, where it has one, is called after
            every reset of the env.
        episodes: episodes to run.
        seed: seed of the first episode's reset.
        max_steps: steps after which an episode is cut.
        progress: label of a progress bar over the episodes (None: no bar).
    """
    threshold = getattr(getattr(env.unwrapped, "reward_config", None), "event_threshold", 0.5)
    returns, lengths, distances, actions = [], [], [], []
    collisions = off_roads = 0
    for e in tqdm(range(episodes), desc=progress, disable=progress is None, leave=False):
        obs, info = env.reset(seed=seed + e)
        if hasattr(policy, "reset"):
            policy.reset()
        family = info["family"]
        total, distance, steps = 0.0, 0.0, 0
        collided = off_road = False
        for _ in range(max_steps):
            action = policy(obs, family)
            actions.append(np.asarray(action, dtype=np.float64))
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            steps += 1
            distance += float(info["ego"]["speed"]) * STEP_SECONDS
            collided, off_road = _events(info, threshold)
            if terminated or truncated:
                break
        collisions += collided
        off_roads += off_road
        returns.append(total)
        lengths.append(steps)
        distances.append(distance)
    return {
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "return_se": float(np.std(returns, ddof=1) / np.sqrt(episodes)) if episodes > 1 else None,
        "collision_rate": collisions / episodes,
        "off_road_rate": off_roads / episodes,
        "mean_steps": float(np.mean(lengths)),
        "mean_distance_m": float(np.mean(distances)),
        # Over every step of every episode: (throttle, steering).
        "mean_action": np.mean(actions, axis=0).tolist(),
        "action_std": np.std(actions, axis=0).tolist(),
    }


def make_envs(envs: Sequence[str] = tuple(ENV_IDS), checkpoint: str | None = None,
              scenario_bank: str | None = None, family: str | None = None,
              noise: str | None = None, speed: str = "heads") -> dict:
    """The environments to evaluate in, by env id (``--envs`` names: ``world``, ``sim``);
    ``noise`` (None: the checkpoint's) and ``speed`` are the world model's (``EngineConfig``)."""
    from xworld_env.envs.xworld import XWorldEnv
    from xworld_env.sim.sim_env import XWorldSimEnv

    unknown = [e for e in envs if e not in ENV_IDS]
    if unknown or not envs:
        raise ValueError(f"envs must be a non-empty subset of {tuple(ENV_IDS)}, got {list(envs)}")
    made = {}
    if "world" in envs:
        made[ENV_IDS["world"]] = XWorldEnv(checkpoint=checkpoint, scenario_bank=scenario_bank,
                                           family=family, noise=noise, speed=speed)
    if "sim" in envs:
        made[ENV_IDS["sim"]] = XWorldSimEnv(family=family)
    return made


def check_run_length(episodes: int, max_steps: int) -> None:
    """Raises ``ValueError`` unless both counts are integers >= 1."""
    for name, value in (("episodes", episodes), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def evaluate(policy: str, episodes: int = 5, seed: int = 100, max_steps: int = 80,
             checkpoint: str | None = None, scenario_bank: str | None = None,
             family: str | None = None, envs: dict | None = None,
             progress: bool = False) -> dict:
    """One policy (a saved model's path or a reference policy's name) in every env.

    Args:
        envs: env id -> env, from :func:`make_envs` (default: both envs, made here).
        progress: show a progress bar per env.

    Returns:
        ``{"policy": policy, "<env id>": evaluate_in(...) for each env}`` (a simulator-only
        policy: the simulator's entry alone).
    """
    check_run_length(episodes, max_steps)
    if envs is not None:
        check_envs_for(policy, list(envs))
    sim_only = policy in SIM_ONLY_POLICIES
    act = None if sim_only else load_policy(policy, seed)
    envs = envs if envs is not None else make_envs(checkpoint=checkpoint,
                                                   scenario_bank=scenario_bank, family=family)
    result: dict = {"policy": policy}
    for env_id, env in envs.items():
        if sim_only and env_id != ENV_IDS["sim"]:
            continue
        label = f"{Path(policy).name} in {env_id}" if progress else None
        result[env_id] = evaluate_in(env, act or SimAutopilot(env, seed), episodes, seed,
                                     max_steps, label)
    return result


def format_table(results: Sequence[dict]) -> str:
    """One row per policy and env."""
    lines = [f"{'policy':<28}{'env':<14}{'return':>9}{'± se':>7}{'collide':>9}{'off road':>9}"
             f"{'steps':>7}{'dist m':>8}{'throttle':>9}{'steer':>7}{'act sd':>8}"]
    for result in results:
        for env_id, r in result.items():
            if env_id == "policy":
                continue
            se = "" if r["return_se"] is None else f"{r['return_se']:.2f}"
            lines.append(f"{Path(result['policy']).name:<28}{env_id:<14}{r['mean_return']:>9.2f}"
                         f"{se:>7}{r['collision_rate']:>9.2f}{r['off_road_rate']:>9.2f}"
                         f"{r['mean_steps']:>7.1f}{r['mean_distance_m']:>8.1f}"
                         f"{r['mean_action'][0]:>9.2f}{r['mean_action'][1]:>7.2f}"
                         f"{max(r['action_std']):>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+", metavar="POLICY",
                        help=f"saved SB3 model (.zip) or one of {', '.join(REFERENCE_POLICIES)}")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per policy and env")
    parser.add_argument("--seed", type=int, default=100, help="seed of the first episode")
    parser.add_argument("--max-steps", type=int, default=80, help="steps per episode at most")
    parser.add_argument("--family", default=None, help="scenario family (default: random)")
    parser.add_argument("--envs", nargs="+", default=list(ENV_IDS), choices=list(ENV_IDS),
                        help="world (XWorld-v0) and/or sim (XWorldSim-v0)")
    parser.add_argument("--checkpoint", default=None, help="world model (default: shipped)")
    parser.add_argument("--scenario-bank", default=None)
    parser.add_argument("--noise", default=None, choices=list(NOISES),
                        help="the world model's noise (default: the checkpoint's)")
    parser.add_argument("--speed", default="heads", choices=list(SPEEDS),
                        help="where the world model's ego speed comes from (EngineConfig.speed)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:  # before any env is built
        for spec in args.policies:
            check_policy(spec)
            check_envs_for(spec, [ENV_IDS[name] for name in args.envs])
        check_run_length(args.episodes, args.max_steps)
    except ValueError as error:
        parser.error(str(error))
    from xworld_env.types import FAMILIES

    if args.family is not None and args.family not in FAMILIES:
        parser.error(f"--family must be one of {', '.join(FAMILIES)}, got {args.family!r}")
    envs = make_envs(args.envs, args.checkpoint, args.scenario_bank, args.family, args.noise,
                     args.speed)
    results = [evaluate(spec, args.episodes, args.seed, args.max_steps, envs=envs, progress=True)
               for spec in args.policies]
    print(format_table(results))
    if args.json:
        settings = {"episodes": args.episodes, "seed": args.seed, "max_steps": args.max_steps,
                    "family": args.family, "checkpoint": args.checkpoint,
                    "noise": args.noise, "speed": args.speed}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
