"""Scenario families of the teacher simulator, each a configured highway-env environment."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from xworld_env.types import FAMILIES

# highway-env registers its ids on import.
import highway_env  # noqa: F401  isort: skip
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402  isort: skip

#: highway-env's own values of the traffic constants that its intersection env overwrites on
#: the IDMVehicle class at every reset.
_IDM_DEFAULTS = {
    name: getattr(IDMVehicle, name)
    for name in ("COMFORT_ACC_MAX", "COMFORT_ACC_MIN", "DISTANCE_WANTED")
}

_BASE = {
    "observation": {"type": "Kinematics", "vehicles_count": 5},
    "offroad_terminal": False,
    "render_agent": False,
    "show_trajectories": False,
    "normalize_reward": False,
}

#: highway-env id and settings of each family.
FAMILY_SPECS: dict[str, tuple[str, dict]] = {
    "highway": ("highway-v0", {"lanes_count": 3, "vehicles_count": 18, "vehicles_density": 1.2,
                               "duration": 10_000, "ego_spacing": 1.5}),
    "merge": ("merge-v0", {}),
    "roundabout": ("roundabout-v0", {"duration": 10_000}),
    "intersection": ("intersection-v0", {"duration": 10_000, "initial_vehicle_count": 8,
                                         "spawn_probability": 0.5, "destination": None}),
}


@dataclass(frozen=True)
class ScenarioConfig:
    """Physics settings shared by all families.

    Attributes:
        control_period: seconds of simulated time per env step (one chunk).
        frames_per_chunk: frames rendered per chunk, evenly spaced; the last ends the step.
        substeps_per_frame: highway-env integration steps between two frames.
        max_acceleration: |acceleration| in m/s² that an action of ±1 maps to.
        max_steering: |steering angle| in rad that an action of ±1 maps to.
    """

    control_period: float = 0.5
    frames_per_chunk: int = 2
    substeps_per_frame: int = 3
    max_acceleration: float = 5.0
    max_steering: float = 0.5
    family_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.control_period <= 0:
            raise ValueError(f"control_period must be positive, got {self.control_period}")
        if not isinstance(self.frames_per_chunk, int) or self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be an int >= 1, got {self.frames_per_chunk!r}")
        if not isinstance(self.substeps_per_frame, int) or self.substeps_per_frame < 1:
            raise ValueError(
                f"substeps_per_frame must be an int >= 1, got {self.substeps_per_frame!r}"
            )
        if self.max_acceleration <= 0 or not 0 < self.max_steering < np.pi / 2:
            raise ValueError("max_acceleration must be > 0 and max_steering in (0, pi/2) rad")

    @property
    def frame_period(self) -> float:
        return self.control_period / self.frames_per_chunk


def check_family(family: str) -> str:
    """Returns ``family`` if known, else raises ``ValueError`` listing the accepted ones."""
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown scenario family {family!r}; accepted: {', '.join(FAMILIES)}")
    return family


def make_highway_env(family: str, config: ScenarioConfig) -> gym.Env:
    """The raw highway-env environment of a family, driven at one highway-env step per frame."""
    env_id, extra = FAMILY_SPECS[check_family(family)]
    frame_hz = int(round(1.0 / config.frame_period))
    settings = {
        **_BASE,
        **extra,
        **config.family_overrides.get(family, {}),
        "action": {
            "type": "ContinuousAction",
            "acceleration_range": [-config.max_acceleration, config.max_acceleration],
            "steering_range": [-config.max_steering, config.max_steering],
        },
        "policy_frequency": frame_hz,
        "simulation_frequency": frame_hz * config.substeps_per_frame,
    }
    env_class = _quiet_class(gym.spec(env_id).entry_point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return env_class(config=settings)


def _quiet_class(entry_point: str) -> type:
    """The highway-env class without its info hook.

    Reward and observations are ours; highway-env's info hook computes its own rewards, which
    for some families only accept discrete actions.
    """
    module, name = entry_point.split(":")
    base = getattr(importlib.import_module(module), name)
    return type(name, (base,), {"_info": lambda self, obs, action=None: {}})


#: Body colours of other vehicles: distinct, saturated, and none close to the sky or the road.
VEHICLE_PALETTE = np.array(
    [[0.85, 0.1, 0.1], [0.1, 0.35, 0.85], [0.95, 0.85, 0.1], [0.95, 0.95, 0.95],
     [0.1, 0.7, 0.25], [0.6, 0.15, 0.7], [0.95, 0.5, 0.05], [0.05, 0.05, 0.08],
     [0.1, 0.75, 0.8], [0.7, 0.45, 0.25]]
)


#: Metres beyond a lane's edge that the ego's centre may go before it counts as off-road.
OFF_ROAD_MARGIN = 1.0


class Scenario:
    """One running highway-env world of a family, advanced frame by frame.

    highway-env supplies roads, traffic and the ego's kinematics; this class turns its state
    into what the renderer, the reward and the dataset need.
    """

    def __init__(self, family: str, config: ScenarioConfig) -> None:
        self.family = check_family(family)
        self.config = config
        self.env = make_highway_env(family, config)
        self._colours: dict[int, np.ndarray] = {}

    def reset(self, seed: int) -> None:
        """Builds a new road and traffic from ``seed``."""
        # Without this, traffic would depend on whether an intersection was reset before in
        # the same process, and the same seed would not give the same episode.
        for name, value in _IDM_DEFAULTS.items():
            setattr(IDMVehicle, name, value)
        self.env.reset(seed=int(seed))
        self._colours = {}
        self._palette_offset = int(np.random.default_rng([seed, 3]).integers(len(VEHICLE_PALETTE)))

    @property
    def ego(self):
        return self.env.vehicle

    def advance(self, action: np.ndarray) -> None:
        """Simulates one frame period with a normalised action (acceleration, steering).

        Positive steering turns left; highway-env's steering angle turns right when positive.
        Braking stops the ego and holds it still rather than driving it backwards (highway-env
        lets speeds go negative): a braking action is eased so that the speed reaches zero at
        the end of the frame.
        """
        config = self.config
        stop = -max(float(self.ego.speed), 0.0) / (config.frame_period * config.max_acceleration)
        hw_action = np.array([max(float(action[0]), stop), -action[1]], dtype=np.float64)
        env = self.env
        env.time += 1.0 / env.config["policy_frequency"]
        env._simulate(hw_action)
        self.ego.speed = max(float(self.ego.speed), 0.0)  # rounding of the eased braking
        if self.family == "intersection":
            env._clear_vehicles()
            env._spawn_vehicle(spawn_probability=env.config["spawn_probability"] / 4.0)

    def lanes(self) -> list:
        return self.env.road.network.lanes_list()

    def pose(self) -> tuple[float, float, float]:
        x, y = self.ego.position
        return float(x), float(y), float(self.ego.heading)

    def vehicle_boxes(self) -> np.ndarray:
        """Other vehicles and static obstacles as renderer boxes (n, 10)."""
        boxes = []
        for obj in list(self.env.road.vehicles) + list(self.env.road.objects):
            if obj is self.ego:
                continue
            key = id(obj)
            colour = self._colours.get(key)
            if colour is None:
                index = (len(self._colours) + self._palette_offset) % len(VEHICLE_PALETTE)
                colour = VEHICLE_PALETTE[index]
                self._colours[key] = colour
            x, y = obj.position
            length, width = float(obj.LENGTH), float(obj.WIDTH)
            if type(obj).__name__ == "Obstacle":
                colour = np.array([0.9, 0.45, 0.1])
            boxes.append((x, y, obj.heading, length / 2, width / 2, 0.15, 1.5, *colour))
        return np.array(boxes, dtype=np.float64).reshape(-1, 10)

    def ego_state(self) -> np.ndarray:
        """Ego (speed, lane_offset, heading_error) as in ``EGO_FIELDS``; left is positive."""
        ego = self.ego
        lane = ego.lane
        s, r = lane.local_coordinates(ego.position)
        heading_error = (ego.heading - lane.heading_at(s) + np.pi) % (2 * np.pi) - np.pi
        # highway-env's lateral and heading grow to the right; ours grow to the left.
        return np.array([ego.speed, -r, -heading_error], dtype=np.float32)

    def collided(self) -> bool:
        return bool(self.ego.crashed)

    def off_road(self) -> bool:
        """True when the ego's centre is more than ``OFF_ROAD_MARGIN`` off every lane surface.

        Every lane counts, not only the closest one, and the margin bridges the small gaps that
        highway-env's lane geometry leaves where lanes join (a car cutting a corner there is
        still on the road).
        """
        ego = self.ego
        if ego.on_road:
            return False
        return not any(
            lane.on_lane(ego.position, margin=OFF_ROAD_MARGIN) for lane in self.lanes()
        )

    def at_road_end(self) -> bool:
        """True when the ego is about to leave a lane that leads nowhere (end of the map)."""
        ego, network = self.ego, self.env.road.network
        lane_index = ego.lane_index
        s, _ = ego.lane.local_coordinates(ego.position)
        if s < ego.lane.length - 8.0:
            return False
        return not onward_roads(network, lane_index)


def onward_roads(network, lane_index) -> list[str]:
    """The roads a car can drive on to at the end of a lane, leaving out U-turns.

    highway-env joins the end of an exit road to the start of the opposite entry road; a turn
    of more than 120 degrees there is not a way forward.
    """
    _from, to, _id = lane_index
    lane = network.get_lane(lane_index)
    heading = lane.heading_at(lane.length)
    onward = []
    for next_to, lanes in network.graph.get(to, {}).items():
        start = lanes[min(_id, len(lanes) - 1)].heading_at(0.0)
        if abs((start - heading + np.pi) % (2 * np.pi) - np.pi) < np.radians(120):
            onward.append(next_to)
    return onward
