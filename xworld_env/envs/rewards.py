"""Reward and termination terms shared by the simulator and the world-model environment.

Both environments score a step from the same quantities, the ego state (speed, lane offset,
heading error) and the two events (collision, off-road), so their returns compare directly.
The world model gives event probabilities; the simulator gives 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xworld_env.sim.driver import CRUISE_SPEEDS


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms, in highway-env's spirit.

    Attributes:
        speed: weight of the speed term, 0 at the low end of the family's speed range, 1 at
            the high end and above.
        lane: weight of lane keeping, ``exp(-(offset / lane_scale)^2)``, paid in proportion to
            the speed up to the low end of the family's speed range: a car that stands still
            in its lane earns nothing (otherwise stopping would beat driving among traffic).
        lane_scale: metres of lane offset at which lane keeping falls to 1/e.
        collision: weight (negative) of a collision.
        off_road: weight (negative) of leaving the road.
        event_threshold: event probability above which the episode terminates.
        speed_ranges: (low, high) m/s per family for the speed term.
    """

    speed: float = 0.4
    lane: float = 0.3
    lane_scale: float = 1.0
    collision: float = -1.0
    off_road: float = -1.0
    event_threshold: float = 0.5
    speed_ranges: dict = field(default_factory=lambda: dict(CRUISE_SPEEDS))

    def __post_init__(self) -> None:
        if self.lane_scale <= 0:
            raise ValueError(f"lane_scale must be positive, got {self.lane_scale}")
        if not 0 < self.event_threshold < 1:
            raise ValueError(f"event_threshold must be in (0, 1), got {self.event_threshold}")


def reward_terms(
    ego: np.ndarray, collision: float, off_road: float, family: str, config: RewardConfig
) -> dict[str, float]:
    """Each weighted term of the reward for one step (they sum to the reward)."""
    lo, hi = config.speed_ranges[family]
    speed = float(np.clip((float(ego[0]) - lo) / (hi - lo), 0.0, 1.0))
    moving = float(np.clip(float(ego[0]) / lo, 0.0, 1.0))
    lane = moving * float(np.exp(-((float(ego[1]) / config.lane_scale) ** 2)))
    return {
        "speed": config.speed * speed,
        "lane": config.lane * lane,
        "collision": config.collision * float(collision),
        "off_road": config.off_road * float(off_road),
    }


def is_terminal(collision: float, off_road: float, config: RewardConfig) -> bool:
    """A step ends the episode when either event is (probably) happening."""
    return bool(max(float(collision), float(off_road)) > config.event_threshold)
