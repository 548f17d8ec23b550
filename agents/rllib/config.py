"""The RLlib PPO setup of XWorld-v0: one dataclass of settings and the ``PPOConfig`` it builds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agents.world import WorldSettings

#: Gymnasium id RLlib's env runners pass to ``gym.make_vec``; the module prefix makes every
#: runner process import ``xworld_env`` (and so register the env) before looking it up.
ENV_ID = "xworld_env:XWorld-v0"

#: Exploration noises of the policy module (``agents.rllib.module.XWorldPPOModule``).
EXPLORATIONS = ("gsde", "gaussian")


def check_exploration(exploration: str, sde_sample_freq: int) -> None:
    """Raises ``ValueError`` for an exploration or gSDE draw interval the module does not take."""
    if exploration not in EXPLORATIONS:
        raise ValueError(f"exploration must be one of {list(EXPLORATIONS)}, got {exploration!r}")
    if int(sde_sample_freq) < 1:
        raise ValueError(f"sde_sample_freq must be a positive number of steps, got "
                         f"{sde_sample_freq}")


@dataclass(frozen=True)
class RLlibTrainConfig(WorldSettings):
    """PPO on XWorld-v0 with RLlib env runners (the ``rllib`` config group): the world settings
    of ``WorldSettings`` and these.

    Every env runner builds one ``XWorldVectorEnv`` of ``worlds_per_runner`` worlds through
    ``gym.make_vec`` and its ``vector_entry_point``, so each runner steps all its worlds in one
    batched world-model forward.

    Attributes:
        num_env_runners: remote env-runner processes (0: sample in the driver process).
        worlds_per_runner: worlds batched in each runner's env.
        runner_device: world model and policy inference device of each runner (``cpu``/``cuda``).
        cpus_per_runner, gpus_per_runner: Ray resources per runner (``gpus_per_runner`` None:
            1 when ``runner_device`` is ``cuda``, else 0).
        learner_device: where the PPO update runs (``cpu``/``cuda``).
        iterations: PPO training iterations.
        rollout_fragment_length: env steps per world in one runner ``sample()`` call (None:
            ``train_batch_size`` split evenly over runners and worlds).
        train_batch_size, minibatch_size, num_epochs, lr, gamma, lambda_, clip_param,
            entropy_coeff: PPO settings.
        exploration: ``gsde`` (default: noise weights on the policy's hidden layer, redrawn
            every ``sde_sample_freq`` steps, so actions stay smooth and X-Cache keeps reusing)
            or ``gaussian`` (independent noise every step); see ``agents.rllib.module``.
        sde_sample_freq: exploration steps between gSDE noise draws.
        initial_log_std: initial log standard deviation of the exploration noise (None: -2
            per gSDE weight, -0.5 per action for Gaussian).
        features_dim, view_dim, hidden: sizes of the seven-view encoder and the heads.
        run_dir: checkpoints and the metrics log.
        checkpoint_every: iterations between checkpoints (the last one is always saved).
        resume: an RLlib checkpoint folder to continue from (None: start fresh).
        address: Ray cluster address (None: start a local Ray; ``auto``: join the cluster of
            ``ray start``).
        num_cpus: CPUs of a local Ray (None: all of the machine's).
        seed: seeding of the runners' worlds and of the policy.
    """

    num_env_runners: int = 2
    worlds_per_runner: int = 4
    runner_device: str = "cpu"
    cpus_per_runner: float = 1.0
    gpus_per_runner: float | None = None
    learner_device: str = "cpu"
    iterations: int = 100
    rollout_fragment_length: int | None = None
    train_batch_size: int = 256
    minibatch_size: int = 64
    num_epochs: int = 4
    lr: float = 3e-4
    gamma: float = 0.98
    lambda_: float = 0.95
    clip_param: float = 0.2
    entropy_coeff: float = 0.0
    exploration: str = "gsde"
    sde_sample_freq: int = 8
    initial_log_std: float | None = None
    features_dim: int = 256
    view_dim: int = 64
    hidden: int = 256
    run_dir: str = "runs/rllib"
    checkpoint_every: int = 10
    resume: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = {
            "num_env_runners": self.num_env_runners >= 0,
            "worlds_per_runner": self.worlds_per_runner >= 1,
            "iterations": self.iterations >= 1,
            "rollout_fragment_length": (self.rollout_fragment_length is None
                                        or self.rollout_fragment_length >= 1),
            "train_batch_size": self.train_batch_size >= 1,
            "minibatch_size": 1 <= self.minibatch_size <= self.train_batch_size,
            "num_epochs": self.num_epochs >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "max_episode_steps": self.max_episode_steps >= 1,
            "cpus_per_runner": self.cpus_per_runner > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(
                f"invalid RLlib settings {values}: runners >= 0; worlds, iterations, fragment "
                "(or None), batch, epochs, checkpoint_every and max_episode_steps >= 1; "
                "1 <= minibatch_size <= train_batch_size; cpus_per_runner > 0"
            )
        check_exploration(self.exploration, self.sde_sample_freq)
        for name in ("runner_device", "learner_device"):
            if getattr(self, name) not in ("cpu", "cuda"):
                raise ValueError(f"{name} must be 'cpu' or 'cuda', got {getattr(self, name)!r}")

    def env_config(self) -> dict:
        """Keyword arguments of each runner's ``XWorldVectorEnv``."""
        return self.world_kwargs(self.runner_device)

    def to_dict(self) -> dict:
        return asdict(self)


def build_ppo_config(cfg: RLlibTrainConfig):
    """The ``PPOConfig`` of ``cfg`` (new API stack: RLModule, EnvRunners, Learners)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib.callbacks import XWorldMetricsCallback
    from agents.rllib.module import XWorldPPOModule

    gpus = cfg.gpus_per_runner
    if gpus is None:
        gpus = 1.0 if cfg.runner_device == "cuda" else 0.0
    return (
        PPOConfig()
        .environment(ENV_ID, env_config=cfg.env_config())
        .env_runners(
            num_env_runners=cfg.num_env_runners,
            num_envs_per_env_runner=cfg.worlds_per_runner,
            gym_env_vectorize_mode="vector_entry_point",
            rollout_fragment_length=cfg.rollout_fragment_length or "auto",
            num_cpus_per_env_runner=cfg.cpus_per_runner,
            num_gpus_per_env_runner=gpus,
        )
        .learners(num_learners=0, num_gpus_per_learner=1 if cfg.learner_device == "cuda" else 0)
        .training(
            train_batch_size_per_learner=cfg.train_batch_size,
            minibatch_size=cfg.minibatch_size,
            num_epochs=cfg.num_epochs,
            lr=cfg.lr,
            gamma=cfg.gamma,
            lambda_=cfg.lambda_,
            clip_param=cfg.clip_param,
            entropy_coeff=cfg.entropy_coeff,
        )
        .rl_module(rl_module_spec=RLModuleSpec(
            module_class=XWorldPPOModule,
            model_config={"features_dim": cfg.features_dim, "view_dim": cfg.view_dim,
                          "hidden": cfg.hidden, "exploration": cfg.exploration,
                          "sde_sample_freq": cfg.sde_sample_freq,
                          "initial_log_std": cfg.initial_log_std},
        ))
        .callbacks(XWorldMetricsCallback)
        .debugging(seed=cfg.seed)
    )
