"""Driving policies for the teacher simulator: a lane-following autopilot and the perturbed
driver that generates training data covering the whole action space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xworld_env.sim.scenarios import Scenario, onward_roads

#: Cruise speed range (m/s) of the autopilot, per family.
CRUISE_SPEEDS = {
    "highway": (20.0, 30.0),
    "merge": (18.0, 28.0),
    "roundabout": (7.0, 13.0),
    "intersection": (6.0, 11.0),
}


class Autopilot:
    """Pure-pursuit lane following with gap keeping; picks a random branch at junctions.

    Actions are normalised: (acceleration, steering) in [-1, 1], positive steering to the left.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.target_lane = None
        self.next_lane = None
        self.lateral = 0.0
        self.cruise = 20.0

    def reset(self, scenario: Scenario) -> None:
        self.target_lane = scenario.ego.lane_index
        self.next_lane = None
        self.lateral = 0.0
        lo, hi = CRUISE_SPEEDS[scenario.family]
        self.cruise = float(self.rng.uniform(lo, hi))

    def change_lane(self, scenario: Scenario) -> bool:
        """Targets a neighbouring lane of the same road, if there is one."""
        network = scenario.env.road.network
        if self.target_lane is None:
            return False
        sides = network.side_lanes(self.target_lane)
        if not sides:
            return False
        self.target_lane = sides[int(self.rng.integers(len(sides)))]
        self.next_lane = None
        return True

    def act(self, scenario: Scenario) -> np.ndarray:
        ego, network = scenario.ego, scenario.env.road.network
        if self.target_lane is None:
            self.reset(scenario)
        lane = network.get_lane(self.target_lane)
        s, _ = lane.local_coordinates(ego.position)
        speed = max(float(ego.speed), 1.0)
        lookahead = max(6.0, 0.7 * speed)
        if s + lookahead > lane.length and self.next_lane is None:
            self.next_lane = self._pick_next(network, ego.position)
        if s > lane.length and self.next_lane is not None:
            self.target_lane, self.next_lane = self.next_lane, None
            lane = network.get_lane(self.target_lane)
            s, _ = lane.local_coordinates(ego.position)
        ahead = s + lookahead
        if ahead > lane.length and self.next_lane is not None:
            target = network.get_lane(self.next_lane).position(ahead - lane.length, self.lateral)
        else:
            target = lane.position(ahead, self.lateral)
        bearing = np.arctan2(target[1] - ego.position[1], target[0] - ego.position[0])
        alpha = (bearing - ego.heading + np.pi) % (2 * np.pi) - np.pi
        steer_hw = np.arctan(2.0 * ego.LENGTH * np.sin(alpha) / lookahead)
        max_steer = scenario.config.max_steering
        steering = float(np.clip(-steer_hw / max_steer, -1.0, 1.0))
        return np.array([self._acceleration(scenario), steering], dtype=np.float32)

    def _pick_next(self, network, position):
        to = self.target_lane[1]
        options = onward_roads(network, self.target_lane)
        if not options:
            return None
        choice = options[int(self.rng.integers(len(options)))]
        return network.next_lane(self.target_lane, route=[(to, choice, None)], position=position)

    def _acceleration(self, scenario: Scenario) -> float:
        ego = scenario.ego
        front, _ = scenario.env.road.neighbour_vehicles(ego, self.target_lane)
        v, v0, a_max = float(ego.speed), self.cruise, scenario.config.max_acceleration
        acc = 1.5 * (1.0 - (v / v0) ** 4)
        if front is not None:
            gap = max(np.linalg.norm(front.position - ego.position) - ego.LENGTH, 0.5)
            desired = 4.0 + v * 1.2 + v * (v - front.speed) / (2 * np.sqrt(1.5 * 4.0))
            acc -= 1.5 * (max(desired, 0.0) / gap) ** 2
        return float(np.clip(acc / a_max, -1.0, 1.0))


@dataclass(frozen=True)
class DriverConfig:
    """Mix of behaviours of the data-collection driver (the ``driver`` config group).

    Attributes:
        follow, lane_change, brake, noisy, random, pedal: relative weights of the segment kinds
            (``>= 0``, positive sum; normalised to probabilities). ``pedal`` holds one uniform
            throttle / brake value for the whole segment while the autopilot steers, so the
            pedal input does not follow the speed as the autopilot's does.
        min_segment, max_segment: a segment lasts a uniform number of steps in this range.
        random_segment: the longest a ``random`` segment lasts (held uniform actions, each step
            redrawn with probability 0.5).
    """

    follow: float = 0.45
    lane_change: float = 0.15
    brake: float = 0.1
    noisy: float = 0.2
    random: float = 0.1
    pedal: float = 0.0
    min_segment: int = 3
    max_segment: int = 12
    random_segment: int = 3

    def __post_init__(self) -> None:
        weights = {k: getattr(self, k) for k in PerturbedDriver.KINDS}
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"driver weight {name} must be a number >= 0, got {value!r}")
        if sum(weights.values()) <= 0:
            raise ValueError(
                f"driver weights {', '.join(PerturbedDriver.KINDS)} must have a positive sum, "
                f"got {weights}"
            )
        for name in ("min_segment", "max_segment", "random_segment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"driver {name} must be an integer >= 1, got {value!r}")
        if self.max_segment < self.min_segment:
            raise ValueError(
                f"driver max_segment ({self.max_segment}) must be >= min_segment "
                f"({self.min_segment})"
            )


class PerturbedDriver:
    """The autopilot, interrupted by lane changes, braking, noisy, random and pedal segments.

    Each segment lasts a random number of steps; the mix covers the action space while most
    of the driving stays plausible.
    """

    KINDS = ("follow", "lane_change", "brake", "noisy", "random", "pedal")

    def __init__(self, seed: int, config: DriverConfig | None = None) -> None:
        self.config = config or DriverConfig()
        self.rng = np.random.default_rng([seed, 17])
        self.autopilot = Autopilot(self.rng)
        probs = np.array([getattr(self.config, k) for k in self.KINDS], dtype=np.float64)
        self.probs = probs / probs.sum()
        self.kind, self.left = "follow", 0
        self._held = np.zeros(2, dtype=np.float32)
        self._pedal = 0.0

    def reset(self, scenario: Scenario) -> None:
        self.autopilot.reset(scenario)
        self.kind, self.left = "follow", int(self.rng.integers(2, 6))

    def act(self, scenario: Scenario) -> np.ndarray:
        if self.left <= 0:
            self._new_segment(scenario)
        self.left -= 1
        action = self.autopilot.act(scenario)
        if self.kind == "brake":
            action[0] = self.rng.uniform(-1.0, -0.4)
        elif self.kind == "noisy":
            action = action + self.rng.normal(0.0, [0.4, 0.15]).astype(np.float32)
        elif self.kind == "random":
            if self.rng.random() < 0.5:
                self._held = self.rng.uniform(-1, 1, 2).astype(np.float32)
            action = self._held.copy()
        elif self.kind == "pedal":
            action[0] = self._pedal
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _new_segment(self, scenario: Scenario) -> None:
        cfg = self.config
        self.kind = self.KINDS[int(self.rng.choice(len(self.KINDS), p=self.probs))]
        self.left = int(self.rng.integers(cfg.min_segment, cfg.max_segment + 1))
        if self.kind == "random":
            self.left = min(self.left, cfg.random_segment)
        if self.kind == "pedal":
            self._pedal = float(self.rng.uniform(-1.0, 1.0))
        if self.kind == "lane_change" and not self.autopilot.change_lane(scenario):
            self.kind = "follow"
        lo, hi = CRUISE_SPEEDS[scenario.family]
        self.autopilot.cruise = float(self.rng.uniform(lo, hi))
