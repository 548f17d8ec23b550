"""SB3 callbacks: X-Cache statistics of the batched world model and the spread of the policy's
actions over what it saw, logged with the episode stats."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from xworld_env.xcache.stats import skip_rate_between


def spaced_indices(n: int, samples: int) -> np.ndarray:
    """Up to ``samples`` evenly spaced indices of ``n`` items, first and last included."""
    return np.unique(np.linspace(0, n - 1, samples).round().astype(int))


def action_figures(actions: np.ndarray) -> dict[str, float]:
    """What a policy's deterministic actions (n, 2) for n observations say: ``action_spread``,
    the larger of the two entries' standard deviations over the observations (near zero: the
    policy drives open loop), and their means ``mean_throttle`` and ``mean_steer``."""
    return {
        "action_spread": float(actions.std(axis=0).max()),
        "mean_throttle": float(actions[:, 0].mean()),
        "mean_steer": float(actions[:, 1].mean()),
    }


class XCacheStatsCallback(BaseCallback):
    """Logs the cache policy's skip rates and the engine's stage timings after every rollout.

    Reads the executor of the ``XWorldVectorEnv`` under the SB3 adapter; stats are cumulative
    since the start of training, and ``xcache/rollout_skip_rate`` covers the last rollout only.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._last = (0, 0)

    def _engine(self):
        venv = self.training_env
        while not hasattr(venv, "venv") or not hasattr(venv.venv, "engine"):
            venv = venv.venv
        return venv.venv.engine

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        engine = self._engine()
        stats = getattr(engine.executor, "stats", None)
        if stats is not None:
            summary = stats.summary()
            self.logger.record("xcache/skip_rate", summary["skip_rate"])
            self.logger.record("xcache/skip_rate_all", summary["skip_rate_all"])
            counts = stats.counts()
            rollout_rate = skip_rate_between(self._last, counts)
            if rollout_rate is not None:
                self.logger.record("xcache/rollout_skip_rate", rollout_rate)
            self._last = counts
        chunks = max(1, engine.stats["chunks"])
        for key in ("dit_s", "kv_update_s", "decode_s", "heads_s"):
            self.logger.record(f"engine/{key}_per_chunk", engine.stats[key] / chunks)


class ActionSpreadCallback(BaseCallback):
    """Logs how much the policy's deterministic action depends on what it sees, after every
    rollout.

    The policy's mean action for (up to ``samples``, evenly spaced) observations of the last
    rollout: ``policy/action_spread`` is the larger of the two action entries' standard
    deviations over those observations, ``policy/mean_throttle`` and ``policy/mean_steer`` their
    means. A spread near zero means the policy drives open loop: whatever it sees, it does the
    same (what PPO learned in the shipped world model, docs/performance.md, "Policies").

    Args:
        samples: observations of the rollout the actions are computed for.
    """

    def __init__(self, samples: int = 256, verbose: int = 0) -> None:
        super().__init__(verbose)
        if samples < 2:
            raise ValueError(f"samples must be >= 2 (a spread needs two actions), got {samples}")
        self.samples = samples
        #: The figures of the last rollout, as logged.
        self.last: dict[str, float] = {}

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        pick = spaced_indices(buffer.buffer_size * buffer.n_envs, self.samples)

        def chosen(x: np.ndarray) -> np.ndarray:
            # (steps, envs, ...) as collected; (steps * envs, ...) once training has read it.
            return (x if buffer.generator_ready else x.reshape(-1, *x.shape[2:]))[pick]

        observations = buffer.observations
        observations = ({k: chosen(v) for k, v in observations.items()}
                        if isinstance(observations, dict) else chosen(observations))
        actions, _ = self.model.policy.predict(observations, deterministic=True)
        self.last = action_figures(actions)
        for key, value in self.last.items():
            self.logger.record(f"policy/{key}", value)
