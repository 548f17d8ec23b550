"""``XWorldSim-v0``: the teacher simulator as a Gymnasium environment."""

from __future__ import annotations

from dataclasses import asdict

import gymnasium as gym
import numpy as np

from xworld_env.config import build_settings
from xworld_env.envs.rewards import RewardConfig, is_terminal, reward_terms
from xworld_env.envs.spaces import (
    EGO_LIMITS,
    action_space,
    check_action,
    family_option,
    observation_space,
)
from xworld_env.mosaic import mosaic
from xworld_env.sim.renderer import Renderer, RendererConfig
from xworld_env.sim.rig import RigConfig
from xworld_env.sim.scenarios import Scenario, ScenarioConfig, check_family
from xworld_env.types import EGO_FIELDS, FAMILIES


class XWorldSimEnv(gym.Env):
    """Ground-truth driving simulator with seven cameras.

    ## Description
    highway-env traffic (families ``highway``, ``merge``, ``roundabout``, ``intersection``)
    rendered by our seven-camera renderer. One step is one chunk: ``control_period`` seconds
    (0.5 s) under a constant action, with ``frames_per_chunk`` frames (2) rendered; the last
    frame is the observation and ``last_chunk`` holds them all.

    ## Action space
    ``Box(-1, 1, (2,), float32)``: acceleration (±1 = ±5 m/s²) and steering (±1 = ±0.5 rad,
    positive to the left).

    ## Observation space
    ``Dict`` of the camera names (``CAMERA_NAMES``) → ``Box(0, 255, (64, 64, 3), uint8)`` and,
    unless ``include_ego=False``, ``"ego"`` → (speed m/s, lane offset m, heading error rad).

    ## Rewards
    ``xworld_env.envs.rewards``: speed, lane keeping, collision and off-road terms.

    ## Starting state
    A new road and traffic from the seed; the family is ``family`` (random per reset if None)
    or ``options["family"]``.

    ## Episode end
    Terminates on a collision or leaving the road; truncates at the end of the map and, when
    made with ``gym.make``, after ``max_episode_steps`` (80 steps = 40 s).

    ## Arguments
    ``family``, ``rig`` (``RigConfig`` or dict), ``scenario`` (``ScenarioConfig`` or dict),
    ``renderer`` (``RendererConfig`` or dict), ``reward`` (``RewardConfig`` or dict),
    ``include_ego`` (bool), ``render_mode`` (``"rgb_array"`` or None).

    ## Version history
    v0: first release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        family: str | None = None,
        rig: RigConfig | dict | None = None,
        scenario: ScenarioConfig | dict | None = None,
        renderer: RendererConfig | dict | None = None,
        reward: RewardConfig | dict | None = None,
        include_ego: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if family is not None:
            check_family(family)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.family = family
        self.rig = build_settings(RigConfig, rig)
        self.scenario_config = build_settings(ScenarioConfig, scenario)
        self.reward_config = build_settings(RewardConfig, reward)
        self.renderer = Renderer(self.rig, build_settings(RendererConfig, renderer))
        self.include_ego = include_ego
        self.render_mode = render_mode
        self.observation_space = observation_space(self.rig, include_ego)
        self.action_space = action_space()
        self._scenarios: dict[str, Scenario] = {}
        self.scenario: Scenario | None = None
        self.last_chunk: np.ndarray | None = None
        self._last_obs: dict | None = None
        self._closed = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._closed:
            raise RuntimeError("XWorldSim-v0 was closed; make a new environment")
        family = family_option(options, self.family)
        super().reset(seed=seed)
        if family is None:
            family = FAMILIES[int(self.np_random.integers(len(FAMILIES)))]
        scene_seed = int(self.np_random.integers(2**31 - 1))
        scenario = self._scenarios.get(family)
        if scenario is None:
            scenario = self._scenarios[family] = Scenario(family, self.scenario_config)
        scenario.reset(scene_seed)
        self.scenario = scenario
        self.renderer.set_scene(scenario.lanes(), scene_seed)
        frame = self._render_views()
        self.last_chunk = np.repeat(frame[None], self.scenario_config.frames_per_chunk, axis=0)
        obs = self._observation(frame)
        return obs, {"family": family, "scene_seed": scene_seed, **self._ego_info()}

    def step(self, action):
        if self._closed:
            raise RuntimeError("XWorldSim-v0 was closed; make a new environment")
        if self.scenario is None:
            raise RuntimeError("call reset() before step()")
        action = check_action(action, self.action_space)
        frames, collision, off_road = [], False, False
        for _ in range(self.scenario_config.frames_per_chunk):
            self.scenario.advance(action)
            frames.append(self._render_views())
            collision |= self.scenario.collided()
            off_road |= self.scenario.off_road()
        self.last_chunk = np.stack(frames)
        ego = self.scenario.ego_state()
        terms = reward_terms(ego, collision, off_road, self.scenario.family, self.reward_config)
        terminated = is_terminal(collision, off_road, self.reward_config)
        truncated = bool(not terminated and self.scenario.at_road_end())
        info = {
            "family": self.scenario.family,
            "collision": bool(collision),
            "off_road": bool(off_road),
            "road_end": truncated,
            "reward_terms": terms,
            **self._ego_info(),
        }
        obs = self._observation(frames[-1])
        return obs, float(sum(terms.values())), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self.last_chunk is None:
            raise RuntimeError("call reset() before render()")
        return mosaic(self.last_chunk[-1], self.rig.names, title=self._title())

    def close(self) -> None:
        self._closed = True
        self._scenarios.clear()
        self.scenario = None

    # Hooks -----------------------------------------------------------------------------------

    def _render_views(self) -> np.ndarray:
        return self.renderer.render(self.scenario.pose(), self.scenario.vehicle_boxes())

    def _observation(self, frame: np.ndarray) -> dict:
        obs = {name: frame[i] for i, name in enumerate(self.rig.names)}
        if self.include_ego:
            obs["ego"] = np.clip(self.scenario.ego_state(), -EGO_LIMITS, EGO_LIMITS)
        return obs

    def _ego_info(self) -> dict:
        return {"ego": dict(zip(EGO_FIELDS, self.scenario.ego_state().tolist()))}

    def _title(self) -> str:
        speed = self.scenario.ego_state()[0]
        return f"XWorldSim-v0 | {self.scenario.family} | {speed * 3.6:5.1f} km/h"

    def config_dict(self) -> dict:
        """The settings of this env, as plain values (for dataset manifests)."""
        return {
            "rig": asdict(self.rig),
            "scenario": asdict(self.scenario_config),
            "renderer": asdict(self.renderer.config),
            "reward": asdict(self.reward_config),
        }
