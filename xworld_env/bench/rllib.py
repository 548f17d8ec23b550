"""``xworld bench rllib``: env steps per second sampled by Ray RLlib env runners.

Each env runner is a Ray process stepping one batched ``XWorldVectorEnv`` (``--worlds`` worlds
in one world-model forward) with the PPO RLModule choosing the actions, once per exploration
noise of the policy (gSDE, the default, and independent Gaussian noise: X-Cache reuses little
under the latter); the figure is env steps summed over runners and worlds per second of wall
time, after a warm-up sample. Beside it, the same batched env stepped in this process with one
torch thread and a lane-keeping policy.
Needs the ``distributed`` extra.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xworld_env.bench.env import engine_skip_rate
from xworld_env.bench.machine import machine_info, write_json


def _sampled_steps(algo, timesteps: int) -> int:
    """Samples ``timesteps`` env steps on every remote runner at once; returns the steps taken."""
    counts = algo.env_runner_group.foreach_env_runner(
        lambda runner: sum(len(ep) for ep in runner.sample(num_timesteps=timesteps)),
        local_env_runner=False,
    )
    return int(sum(counts))


def rllib_throughput(runners: int, worlds: int, steps: int, repeats: int, cache: str,
                     checkpoint: str | None, device: str, family: str,
                     exploration: str = "gsde") -> dict:
    """Env-steps/s of ``runners`` RLlib env runners x ``worlds`` worlds (median of repeats),
    the policy exploring with ``exploration`` (``agents.rllib.config.EXPLORATIONS``)."""
    from agents.rllib.config import RLlibTrainConfig, build_ppo_config

    cfg = RLlibTrainConfig(
        num_env_runners=runners, worlds_per_runner=worlds, cache=cache, checkpoint=checkpoint,
        family=family, runner_device=device, exploration=exploration,
        gpus_per_runner=(1.0 / runners) if device == "cuda" else 0.0,
        rollout_fragment_length=steps, train_batch_size=steps * worlds * runners,
        minibatch_size=1,
    )
    algo = build_ppo_config(cfg).build_algo()
    try:
        _sampled_steps(algo, worlds * 2)  # warm-up: first reset and X-Cache's warm-up chunk
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            taken = _sampled_steps(algo, steps * worlds)
            rates.append(taken / (time.perf_counter() - started))
        skip = algo.env_runner_group.foreach_env_runner(
            lambda runner: engine_skip_rate(runner.env.unwrapped.engine) or 0.0,
            local_env_runner=False,
        )
    finally:
        algo.stop()
    return {"steps_per_s": float(np.median(rates)), "repeats": rates,
            "skip_rate": float(np.mean(skip))}


def in_process_throughput(worlds: int, steps: int, cache: str, checkpoint: str | None,
                          device: str, family: str) -> dict:
    """Env-steps/s of the same batched env stepped here with one torch thread, actions from the
    lane-keeping policy of ``xworld bench env`` (smooth, as the RLlib policy's gSDE actions), and
    X-Cache's skip rate."""
    import torch

    from xworld_env.envs.policies import LaneKeeper
    from xworld_env.envs.xworld_vector import XWorldVectorEnv

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        envs = XWorldVectorEnv(num_envs=worlds, cache=cache, family=family,
                               checkpoint=checkpoint, device=device)
        policy = LaneKeeper(seed=0)
        obs, _ = envs.reset(seed=0)
        for _ in range(2):
            obs, *_ = envs.step(policy.batch(obs, family))
        started = time.perf_counter()
        for _ in range(steps):
            obs, *_ = envs.step(policy.batch(obs, family))
        rate = worlds * steps / (time.perf_counter() - started)
        skip = engine_skip_rate(envs.engine) or 0.0
        envs.close()
    finally:
        torch.set_num_threads(threads)
    return {"steps_per_s": rate, "skip_rate": skip}


def run(runners: tuple[int, ...] = (1, 2), worlds: int = 4, steps: int = 16, repeats: int = 2,
        cache: str = "xcache", checkpoint: str | None = None, device: str = "cpu",
        family: str = "highway", num_cpus: int | None = None,
        explorations: tuple[str, ...] = ("gsde", "gaussian")) -> dict:
    """Sampling throughput for each exploration and runner count, measured one after another
    in one run (``explorations[name]``: ``runners``, ``skip_rate`` and ``detail`` per runner
    count)."""
    from agents.rllib.config import EXPLORATIONS
    from agents.train_rllib import require_ray

    ray = require_ray()
    if any(n < 1 for n in runners) or worlds < 1 or steps < 1 or repeats < 1:
        raise ValueError("runners, worlds, steps and repeats must all be >= 1")
    if not explorations or set(explorations) - set(EXPLORATIONS):
        raise ValueError(f"explorations must be among {list(EXPLORATIONS)}, got "
                         f"{list(explorations)}")
    result: dict = {
        "explorations": {}, "worlds_per_runner": worlds, "steps_per_world": steps,
        "cache": cache, "device": device, "family": family, "machine": machine_info(),
    }
    started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    try:
        result["ray"] = ray.__version__
        result["ray_cpus"] = ray.cluster_resources().get("CPU")
        for name in explorations:
            row = result["explorations"][name] = {"runners": {}, "skip_rate": {}, "detail": {}}
            for n in runners:
                measured = rllib_throughput(n, worlds, steps, repeats, cache, checkpoint,
                                            device, family, name)
                row["runners"][str(n)] = measured["steps_per_s"]
                row["skip_rate"][str(n)] = measured["skip_rate"]
                row["detail"][str(n)] = measured
    finally:
        if started_here:
            ray.shutdown()
    result["in_process_1_thread"] = in_process_throughput(worlds, steps, cache, checkpoint,
                                                          device, family)
    result["wall_s"] = time.perf_counter() - started
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``xworld bench rllib`` to ``parser``."""
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2],
                        help="env-runner counts to measure (default 1 2)")
    parser.add_argument("--worlds", type=int, default=4, help="worlds per runner (default 4)")
    parser.add_argument("--steps", type=int, default=16,
                        help="env steps per world in each timed sample (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed samples (default 2)")
    parser.add_argument("--explorations", nargs="+", default=["gsde", "gaussian"],
                        choices=["gsde", "gaussian"],
                        help="the policy's exploration noises, measured one after another "
                             "(default gsde gaussian)")
    parser.add_argument("--cache", default="xcache", help="cache policy (default xcache)")
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: shipped)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device of every runner's world model and policy (default cpu)")
    parser.add_argument("--family", default="highway", help="scenario family (default highway)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray (default: all of the machine's)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")


def main(args: argparse.Namespace) -> dict:
    result = run(runners=tuple(args.runners), worlds=args.worlds, steps=args.steps,
                 repeats=args.repeats, cache=args.cache, checkpoint=args.checkpoint,
                 device=args.device, family=args.family, num_cpus=args.num_cpus,
                 explorations=tuple(args.explorations))
    print(f"RLlib sampling, {result['worlds_per_runner']} worlds per runner, cache "
          f"{result['cache']}, {result['device']} (env-steps/s)")
    for name, row in result["explorations"].items():
        base = None
        for n, rate in row["runners"].items():
            base = base or rate
            print(f"  {name:8s} {n} runner(s): {rate:8.2f}   x{rate / base:.2f}   "
                  f"skip rate {row['skip_rate'][n]:.2f}")
    here = result["in_process_1_thread"]
    print(f"  in process, 1 thread, same batch: {here['steps_per_s']:.2f}   "
          f"skip rate {here['skip_rate']:.2f}")
    if args.json:
        print(f"wrote {write_json(args.json, result)}")
    return result
