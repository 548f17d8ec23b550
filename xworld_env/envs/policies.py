"""Simple driving policies on the ``ego`` observation, for demos, benchmarks and baselines."""

from __future__ import annotations

import numpy as np

from xworld_env.sim.driver import CRUISE_SPEEDS


class LaneKeeper:
    """Proportional lane keeping and cruise control on the ego vector.

    Steers back toward the lane centre (positive lane offset and heading error are to the left,
    so both call for steering right) and holds a cruise speed.

    Args:
        cruise: target speed in m/s (default: the middle of the family's speed range).
        steer_gain: steering per metre of lane offset; the heading error counts 4x more.
        noise: std of Gaussian noise added to both action entries.
        seed: seeds the noise.
    """

    def __init__(self, cruise: float | None = None, steer_gain: float = 0.15, noise: float = 0.0,
                 seed: int = 0) -> None:
        self.cruise = cruise
        self.steer_gain = steer_gain
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict, family: str = "highway") -> np.ndarray:
        speed, offset, heading = (float(x) for x in obs["ego"][:3])
        cruise = self.cruise if self.cruise is not None else float(np.mean(CRUISE_SPEEDS[family]))
        steer = -self.steer_gain * (offset + 4.0 * heading)
        throttle = 0.3 * (cruise - speed)
        action = np.array([throttle, steer], dtype=np.float64)
        if self.noise:
            action += self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def batch(self, obs: dict, family: str = "highway") -> np.ndarray:
        """Actions (n, 2) for every world of a batched observation (``obs["ego"]`` (n, 3))."""
        return np.stack([self({"ego": ego}, family) for ego in obs["ego"]])
