"""SB3 callbacks: X-Cache statistics of the batched world model, logged with the episode stats."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

from xworld_env.xcache.stats import skip_rate_between


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
