"""``python -m agents.train_rllib [key=value ...]``: PPO on XWorld-v0 with Ray RLlib env runners.

Configuration: ``configs/train_rllib.yaml`` and the ``rllib`` group (``rllib=tiny`` for a smoke
run). Each env runner steps its own batched ``XWorldVectorEnv``; checkpoints and a JSON-lines
metrics log go to ``run_dir``. Needs the ``distributed`` extra: ``pip install -e ".[distributed]"``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from agents.rllib.config import RLlibTrainConfig

#: Metrics of a training result kept in the log and the progress bar (RLlib's key, our name).
REPORTED = {
    ("env_runners", "episode_return_mean"): "episode_return_mean",
    ("env_runners", "episode_len_mean"): "episode_len_mean",
    ("env_runners", "num_env_steps_sampled_lifetime"): "env_steps",
    ("env_runners", "xcache/skip_rate"): "xcache_skip_rate",
    ("env_runners", "xworld/final_collision_prob"): "final_collision_prob",
    ("env_runners", "xworld/mean_speed"): "mean_speed",
    ("env_runners", "engine/dit_ms_per_chunk"): "dit_ms_per_chunk",
    ("env_runners", "policy/action_spread"): "action_spread",
    ("env_runners", "policy/mean_throttle"): "mean_throttle",
    ("env_runners", "policy/mean_steer"): "mean_steer",
    ("learners", "default_policy", "policy_loss"): "policy_loss",
    ("learners", "default_policy", "vf_loss"): "vf_loss",
}


def require_ray():
    """Imports ray, or says how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            'Ray RLlib is not installed; install the extra: pip install -e ".[distributed]"'
        ) from None
    return ray


def init_ray(cfg: RLlibTrainConfig) -> None:
    """Starts a local Ray (or joins ``cfg.address``) unless Ray is already running here."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if cfg.address is None:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, configure_logging=False)
    else:
        ray.init(address=cfg.address)


def summarize(result: dict) -> dict:
    """The reported metrics of one RLlib training result (missing ones left out)."""
    out = {"iteration": result.get("training_iteration")}
    for path, name in REPORTED.items():
        node = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            out[name] = float(node)
    return out


def _push_weights(algo, timeout_s: float = 60.0) -> None:
    """Sends the learner's weights to every env runner and waits until they have them."""
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group,
                                       inference_only=True, timeout_seconds=timeout_s)


def check_checkpoint(path: str | Path) -> Path:
    """``path`` if it is an RLlib algorithm checkpoint folder, else a clear error."""
    path = Path(path)
    if not (path.is_dir() and (path / "learner_group").is_dir()):
        raise FileNotFoundError(
            f"no RLlib algorithm checkpoint folder at {path} (expected a folder written by "
            "agents.train_rllib, e.g. runs/rllib/checkpoint_final)"
        )
    return path


def restore(algo, path: str | Path) -> None:
    """Loads an RLlib checkpoint folder into ``algo`` and pushes the restored weights to every
    env runner, so that sampling right after a restore uses the restored policy."""
    path = check_checkpoint(path)
    try:
        algo.restore_from_path(str(path.resolve()))
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise ValueError(
            f"{path} holds a policy built with other settings than this run's: resume with the "
            "rllib.exploration, rllib.hidden, rllib.features_dim and rllib.view_dim it was "
            f"trained with ({str(err).strip()})"
        ) from None
    _push_weights(algo)


def load_algorithm(path: str | Path):
    """The PPO algorithm saved in an RLlib checkpoint folder, its env runners in sync."""
    from ray.rllib.algorithms.algorithm import Algorithm

    path = check_checkpoint(path)
    algo = Algorithm.from_checkpoint(str(path.resolve()))
    _push_weights(algo)
    return algo


def train(cfg: RLlibTrainConfig, progress: bool = True) -> dict:
    """Trains PPO for ``cfg.iterations`` iterations; returns the final checkpoint and metrics."""
    from agents.rllib.config import build_ppo_config

    if cfg.resume is not None:
        check_checkpoint(cfg.resume)  # before any Ray process starts
    init_ray(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    algo = build_ppo_config(cfg).build_algo()
    try:
        if cfg.resume is not None:
            restore(algo, cfg.resume)
        log_path = run_dir / "metrics.jsonl"
        last: dict = {}
        started = time.perf_counter()
        bar = tqdm(range(cfg.iterations), desc="train rllib ppo", disable=not progress)
        with log_path.open("a") as log:
            for i in bar:
                last = summarize(algo.train())
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()
                                 if k in ("episode_return_mean", "xcache_skip_rate")})
                if (i + 1) % cfg.checkpoint_every == 0 and i + 1 < cfg.iterations:
                    algo.save(str((run_dir / f"checkpoint_{algo.iteration:06d}").resolve()))
        final = (run_dir / "checkpoint_final").resolve()
        algo.save(str(final))
        return {"checkpoint": str(final), "iterations": algo.iteration,
                "seconds": time.perf_counter() - started, "metrics": str(log_path), **last}
    finally:
        algo.stop()


def main(argv: list[str] | None = None) -> int:
    from xworld_env.config import build, compose

    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = build(RLlibTrainConfig, compose("train_rllib", overrides).rllib)
        result = train(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"agents.train_rllib: error: {err}", file=sys.stderr)
        return 2
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
