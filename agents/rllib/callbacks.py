"""RLlib callbacks: the world model's X-Cache statistics and episode outcomes as RLlib metrics."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from xworld_env.xcache.stats import skip_rate_between

#: Window (in samples or episodes) of the running means reported to RLlib.
WINDOW = 100


def _engine(env_runner):
    """The world-model engine of an env runner's ``XWorldVectorEnv``."""
    env = getattr(env_runner, "env", None)
    return getattr(getattr(env, "unwrapped", env), "engine", None)


class XWorldMetricsCallback(RLlibCallback):
    """Reports, from every env runner, after each ``sample()``:

    - ``xcache/skip_rate``: reused / eligible block evaluations of the denoising passes in that
      sample (the cache policy's stats are cumulative; this callback takes differences);
    - ``xcache/reused_evaluations`` and ``xcache/eligible_evaluations`` (lifetime sums);
    - ``engine/<stage>_ms_per_chunk``: DiT, KV-update, decode and heads time per chunk;

    and after each episode: ``xworld/final_collision_prob``, ``xworld/final_off_road_prob``
    and ``xworld/mean_speed`` (m/s, the envs' ego speed: the heads' reading, or the kinematic
    speed under ``world_speed: kinematic``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_counts: tuple[int, int] = (0, 0)
        self._last_engine: dict[str, float] = {}

    def on_sample_end(self, *, env_runner=None, metrics_logger=None, samples=None,
                      **kwargs) -> None:
        engine = _engine(env_runner)
        if engine is None or metrics_logger is None:
            return
        stats = getattr(engine.executor, "stats", None)
        if stats is not None:
            counts = stats.counts()
            if counts[0] < self._last_counts[0]:  # the stats were reset since the last sample
                self._last_counts = (0, 0)
            rate = skip_rate_between(self._last_counts, counts)
            d_eligible = counts[0] - self._last_counts[0]
            d_reused = counts[1] - self._last_counts[1]
            self._last_counts = counts
            if rate is not None:
                metrics_logger.log_value("xcache/skip_rate", rate, window=WINDOW)
            metrics_logger.log_value("xcache/eligible_evaluations", d_eligible,
                                     reduce="lifetime_sum")
            metrics_logger.log_value("xcache/reused_evaluations", d_reused,
                                     reduce="lifetime_sum")
        if engine.stats["chunks"] < self._last_engine.get("chunks", 0):
            self._last_engine = {}
        chunks = engine.stats["chunks"] - self._last_engine.get("chunks", 0)
        if chunks > 0:
            for key in ("dit_s", "kv_update_s", "decode_s", "heads_s"):
                spent = engine.stats[key] - self._last_engine.get(key, 0.0)
                metrics_logger.log_value(f"engine/{key[:-2]}_ms_per_chunk",
                                         1000.0 * spent / chunks, window=WINDOW)
        self._last_engine = dict(engine.stats)

    def on_episode_end(self, *, episode=None, metrics_logger=None, **kwargs) -> None:
        if episode is None or metrics_logger is None:
            return
        infos = episode.get_infos()
        last = infos[-1] if len(infos) else {}
        for key in ("collision_prob", "off_road_prob"):
            if key in last:
                metrics_logger.log_value(f"xworld/final_{key}", float(last[key]), window=WINDOW)
        speeds = [info["ego"]["speed"] for info in infos if "ego" in info]
        if speeds:
            metrics_logger.log_value("xworld/mean_speed", sum(speeds) / len(speeds),
                                     window=WINDOW)
