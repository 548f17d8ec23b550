"""``python -m agents.train [key=value ...]``: PPO on batched XWorld-v0 worlds.

Configuration: ``configs/agent/*.yaml`` (``agent=tiny`` for a smoke run). Episode statistics,
X-Cache statistics, the spread of the policy's actions over what it saw (``policy/action_spread``:
near zero, it drives open loop) and losses go to TensorBoard under ``run_dir``; checkpoints are
saved there.
``agent.env=sim`` trains the same policy in the teacher simulator ``XWorldSim-v0`` instead: the
ground-truth reference for what the same budget of steps learns (``python -m agents.evaluate``
compares both in both environments).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

from agents.callbacks import ActionSpreadCallback, XCacheStatsCallback
from agents.extractors import SevenViewExtractor
from agents.vec_env import XWorldSB3VecEnv
from agents.world import WorldSettings

#: What ``AgentTrainConfig.env`` accepts: the batched world model or the teacher simulator.
TRAIN_ENVS = ("world", "sim")


@dataclass(frozen=True)
class AgentTrainConfig(WorldSettings):
    """PPO on the batched world model (the ``agent`` config group): the world settings of
    ``WorldSettings`` and these.

    Attributes:
        env: ``world`` (default): the batched ``XWorld-v0`` worlds of ``WorldSettings``;
            ``sim``: ``num_envs`` copies of the teacher simulator ``XWorldSim-v0`` (stepped one
            after another in SB3's ``DummyVecEnv``; of the world settings only ``family`` and
            ``max_episode_steps`` apply), the ground-truth reference for the same budget.
        num_envs: worlds stepped in one batched forward.
        total_timesteps: env steps in all (summed over worlds).
        world_device: device of the world model (``cpu``, ``cuda``).
        n_steps, batch_size, n_epochs, learning_rate, gamma: PPO settings.
        use_sde: explore with generalized state-dependent exploration (gSDE, the default): the
            policy's noise is a linear function of its features whose weights are drawn every
            ``sde_sample_freq`` steps (-1: once per rollout), so actions change as smoothly as
            the scene does and X-Cache keeps reusing. False: SB3's default, independent Gaussian
            noise every step, whose abrupt action changes veto nearly all reuse
            (``python -m agents.sampling`` measures both).
        sde_sample_freq: steps between new gSDE noise weights (-1: once per rollout).
        log_std_init: initial log standard deviation of the exploration noise (of every gSDE
            weight with ``use_sde``; of the action noise itself without).
        features_dim: size of the seven-view features.
        run_dir: TensorBoard logs, checkpoints and the final policy.
        save_every: env steps between checkpoints.
        tensorboard: write TensorBoard logs.
        seed, device: seeding and the policy's device.
    """

    env: str = "world"
    num_envs: int = 8
    total_timesteps: int = 100_000
    world_device: str = "cpu"
    n_steps: int = 64
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.98
    use_sde: bool = True
    sde_sample_freq: int = 8
    log_std_init: float = -2.0
    features_dim: int = 256
    run_dir: str = "runs/agent"
    save_every: int = 10_000
    tensorboard: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.env not in TRAIN_ENVS:
            raise ValueError(f"env must be one of {TRAIN_ENVS}, got {self.env!r}")
        if self.num_envs < 1 or self.total_timesteps < 1:
            raise ValueError(f"num_envs and total_timesteps must be >= 1, got {self.num_envs} "
                             f"and {self.total_timesteps}")
        if self.sde_sample_freq == 0 or self.sde_sample_freq < -1:
            raise ValueError(f"sde_sample_freq must be -1 (once per rollout) or a positive "
                             f"number of steps, got {self.sde_sample_freq}")
        if not math.isfinite(self.log_std_init):
            raise ValueError(f"log_std_init must be finite, got {self.log_std_init}")

    def ppo_kwargs(self) -> dict:
        """SB3 ``PPO`` arguments of these settings: PPO's own, the exploration, and the policy's
        seven-view extractor and initial noise."""
        return {
            "n_steps": self.n_steps, "batch_size": self.batch_size, "n_epochs": self.n_epochs,
            "learning_rate": self.learning_rate, "gamma": self.gamma, "seed": self.seed,
            "use_sde": self.use_sde, "sde_sample_freq": self.sde_sample_freq,
            "device": self.device,
            "policy_kwargs": {"features_extractor_class": SevenViewExtractor,
                              "features_extractor_kwargs": {"features_dim": self.features_dim},
                              "log_std_init": self.log_std_init},
        }


def make_training_env(cfg: AgentTrainConfig) -> VecEnv:
    """The SB3 vector env ``cfg.env`` names, seeded, with episode statistics (``VecMonitor``)."""
    if cfg.env == "sim":
        import gymnasium as gym

        import xworld_env  # noqa: F401  (registers XWorldSim-v0)

        def make() -> gym.Env:
            return gym.make("XWorldSim-v0", family=cfg.family,
                            max_episode_steps=cfg.max_episode_steps)

        venv = DummyVecEnv([make] * cfg.num_envs)
    else:
        venv = XWorldSB3VecEnv(num_envs=cfg.num_envs, **cfg.world_kwargs(cfg.world_device))
    venv.seed(cfg.seed)
    return VecMonitor(venv)


def train(cfg: AgentTrainConfig) -> Path:
    """Trains a PPO policy; returns the path of the saved model."""
    run_dir = Path(cfg.run_dir)
    venv = make_training_env(cfg)
    tensorboard = str(run_dir / "tensorboard") if cfg.tensorboard else None
    model = PPO("MultiInputPolicy", venv, tensorboard_log=tensorboard, verbose=1,
                **cfg.ppo_kwargs())
    callbacks = [
        CheckpointCallback(max(1, cfg.save_every // cfg.num_envs), str(run_dir / "checkpoints"),
                           name_prefix="ppo"),
        ActionSpreadCallback(),
    ]
    if cfg.env == "world":
        callbacks.append(XCacheStatsCallback())
    model.learn(total_timesteps=cfg.total_timesteps, callback=callbacks, progress_bar=False)
    path = run_dir / "ppo_final.zip"
    model.save(path)
    venv.close()
    return path


def main(argv: list[str] | None = None) -> int:
    from xworld_env.config import build, compose

    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = build(AgentTrainConfig, compose("train_agent", overrides).agent)
    print(f"saved {train(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
