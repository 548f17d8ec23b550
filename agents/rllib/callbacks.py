"""RLlib callbacks: the world model's X-Cache statistics and episode outcomes as RLlib metrics."""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns

from agents.callbacks import action_figures, spaced_indices
from xworld_env.xcache.stats import skip_rate_between

#: Window (in samples or episodes) of the running means reported to RLlib.
WINDOW = 100
#: Observations of a sample the policy's deterministic actions are computed for.
SPREAD_SAMPLES = 256


def _stacked(observations) -> dict[str, np.ndarray]:
    """An episode's observations as one array per key (episodes hold them stacked once
    finalized, as a list of dicts before)."""
    if isinstance(observations, dict):
        return {k: np.asarray(v) for k, v in observations.items()}
    if not len(observations):
        return {}
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def deterministic_actions(module, episodes, samples: int = SPREAD_SAMPLES) -> np.ndarray | None:
    """The policy's mean actions, clipped to the action space, for (up to ``samples``, evenly
    spaced) observations of ``episodes``; None when they hold none."""
    parts = [_stacked(ep.get_observations()) for ep in episodes]
    parts = [p for p in parts if p and len(next(iter(p.values())))]
    if not parts:
        return None
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(next(iter(batch.values())))
    pick = spaced_indices(n, samples)
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: {k: torch.as_tensor(v[pick])
                                                      for k, v in batch.items()}})
    space = module.action_space
    mean = out[Columns.ACTION_DIST_INPUTS][:, : space.shape[0]].float().cpu().numpy()
    return np.clip(mean, space.low, space.high)


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

    - ``policy/action_spread``, ``policy/mean_throttle``, ``policy/mean_steer``: the policy's
      deterministic actions for up to ``SPREAD_SAMPLES`` observations of that sample (as
      ``agents.callbacks.ActionSpreadCallback`` logs for SB3; a spread near zero means the policy
      drives open loop);

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
        if metrics_logger is None:
            return
        module = getattr(env_runner, "module", None)
        actions = deterministic_actions(module, samples) if module and samples else None
        if actions is not None:
            for key, value in action_figures(actions).items():
                metrics_logger.log_value(f"policy/{key}", value, window=WINDOW)
        engine = _engine(env_runner)
        if engine is None:
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
