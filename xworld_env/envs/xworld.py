"""``XWorld-v0``: driving in the learned world model.

The Gymnasium API over ``WorldModelEngine`` with one world: ``reset`` starts from a scenario
bank context, ``step`` generates one chunk under the chosen cache policy, reward and termination
come from the heads (the speed, optionally, from the pedals: ``speed="kinematic"``) through the
same terms as the simulator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from xworld_env.config import build_settings
from xworld_env.data.scenario_bank import ScenarioBank
from xworld_env.engine import EngineConfig, WorldModelEngine, calibrate_int8
from xworld_env.envs.rewards import RewardConfig, is_terminal, reward_terms
from xworld_env.envs.spaces import (
    EGO_LIMITS,
    action_space,
    check_action,
    family_option,
    observation_space,
)
from xworld_env.model.checkpoint import load_bundle
from xworld_env.model.kv_cache import KVCacheConfig
from xworld_env.model.sampler import SamplerConfig
from xworld_env.mosaic import mosaic
from xworld_env.sim.rig import RigConfig
from xworld_env.sim.scenarios import check_family
from xworld_env.types import CAMERA_NAMES, EGO_FIELDS, FAMILIES
from xworld_env.xcache import make_executor

ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: The world model that ships with the package.
DEFAULT_CHECKPOINT = ASSETS / "default"
#: Starting contexts cut from held-out simulator episodes.
DEFAULT_SCENARIO_BANK = ASSETS / "scenario_bank.npz"


@dataclass
class WorldModelRuntime:
    """What a world-model env loads once: the engine and the scenario bank."""

    engine: WorldModelEngine
    bank: ScenarioBank
    checkpoint: Path

    def bank_family(self, family: str | None) -> str | None:
        """``family`` if the scenario bank has starts of it (None: any family)."""
        if family is not None and family not in self.bank.families:
            raise ValueError(
                f"the scenario bank has no {family!r} starts; it has "
                f"{', '.join(self.bank.families)}"
            )
        return family


def reward_config(reward: RewardConfig | dict | None) -> RewardConfig:
    """A reward config from None (defaults), a config, or a dict of its settings."""
    return build_settings(RewardConfig, reward)


def check_env_arguments(family: str | None, render_mode: str | None) -> None:
    """Raises ``ValueError`` for an unknown family or render mode."""
    if family is not None:
        check_family(family)
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")


def load_runtime(
    checkpoint: str | Path | None,
    scenario_bank: str | Path | None,
    device: str,
    dtype: str,
    num_steps: int | None = None,
    window: int | None = None,
    noise: str | None = None,
    decode_dtype: str = "auto",
    speed: str = "heads",
    attention_dtype: str = "auto",
) -> WorldModelRuntime:
    """Loads the checkpoint (default: the shipped one) into an engine, and the scenario bank."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu'")
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    bundle = load_bundle(path, device=device)
    trained = bundle.metadata.get("engine", {})
    config = EngineConfig(
        sampler=SamplerConfig(num_steps=num_steps or trained.get("num_steps", 4),
                              shift=trained.get("shift", 3.0)),
        kv_cache=KVCacheConfig(window=window or trained.get("window", 4)),
        noise=noise or trained.get("noise", "fresh"),
        dtype=dtype,
        decode_dtype=decode_dtype,
        attention_dtype=attention_dtype,
        speed=speed,
    )
    bank = ScenarioBank.load(scenario_bank if scenario_bank is not None else DEFAULT_SCENARIO_BANK)
    ranges = None
    if dtype == "int8":
        # int8's input grids, from float32 runs of the first start of every family.
        starts = [bank.starts(family)[0] for family in bank.families]
        ranges = calibrate_int8(config, bundle, *(np.stack([getattr(s, name) for s in starts])
                                                  for name in ("frames", "actions", "ego")))
    engine = WorldModelEngine.from_bundle(config, bundle, ranges)
    return WorldModelRuntime(engine, bank, path)


class XWorldEnv(gym.Env):
    """Driving in a learned seven-camera world model.

    ## Description
    Each step generates the next 0.5 s chunk (2 frames) of all seven cameras with a causal DiT
    attending to a rolling KV cache of the past, in 4 denoising steps; an X-Cache controller
    decides, per denoising pass and world, which blocks' computations to reuse from the
    previous chunk.

    ## Action space
    ``Box(-1, 1, (2,), float32)``: acceleration and steering, as in ``XWorldSim-v0``.

    ## Observation space
    As ``XWorldSim-v0``: the seven camera names → ``Box(0, 255, (64, 64, 3), uint8)`` and
    ``"ego"`` (speed, lane offset, heading error) as predicted by the heads, the speed from
    ``speed``'s source.

    ## Rewards
    The simulator's terms (``xworld_env.envs.rewards``) on the predicted ego state, with the
    predicted collision and off-road probabilities weighting their penalties.

    ## Starting state
    A context of simulator chunks from the scenario bank (family ``family`` or
    ``options["family"]``, random otherwise) primes the KV cache.

    ## Episode end
    Terminates when the predicted collision or off-road probability exceeds
    ``reward.event_threshold``; truncates after ``max_episode_steps`` (80) when made with
    ``gym.make``.

    ## Arguments
    ``cache`` (``"xcache"``, ``"none"``, ``"fbcache"``, ``"static"``, a policy config or a dict),
    ``family``, ``checkpoint``, ``scenario_bank``, ``device``, ``dtype`` (compute precision:
    ``"float32"``, ``"bfloat16"``, ``"float16"``, or ``"int8"`` on the CPU; see
    ``EngineConfig``), ``decode_dtype`` (the decoder's precision, default ``"auto"``: bfloat16
    on CPUs with AMX or AVX512-BF16 when ``dtype`` is float32 or int8; see ``EngineConfig``),
    ``attention_dtype`` (the precision of attention's products, default ``"auto"``: bfloat16
    on such CPUs when ``dtype`` is int8; see ``EngineConfig``), ``num_steps``,
    ``window``, ``noise`` (``"fresh"`` or ``"fixed"``, see ``EngineConfig``; the shipped
    checkpoint's ``"fixed"`` lets X-Cache reuse, and its world stands still under steady
    actions), ``speed`` (where the ego speed comes from: ``"heads"`` reads it from each chunk,
    ``"kinematic"`` integrates the acceleration actions with the simulator's vehicle model; see
    ``EngineConfig``; ``info["speed_read"]`` is the heads' reading either way), ``reward``,
    ``include_ego``, ``render_mode``.

    ## Version history
    v0: first release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        cache: Any = "xcache",
        family: str | None = None,
        checkpoint: str | Path | None = None,
        scenario_bank: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        decode_dtype: str = "auto",
        attention_dtype: str = "auto",
        num_steps: int | None = None,
        window: int | None = None,
        noise: str | None = None,
        speed: str = "heads",
        reward: RewardConfig | dict | None = None,
        include_ego: bool = True,
        render_mode: str | None = None,
    ) -> None:
        check_env_arguments(family, render_mode)
        self.runtime = load_runtime(checkpoint, scenario_bank, device, dtype, num_steps, window,
                                    noise, decode_dtype, speed, attention_dtype)
        self.engine = self.runtime.engine
        self.engine.executor = make_executor(cache)
        self.cache_policy = getattr(self.engine.executor, "name", "none")
        self.reward_config = reward_config(reward)
        self.family = family
        self.include_ego = include_ego
        self.render_mode = render_mode
        f, v, h, w, _ = self.engine.frame_shape
        self.rig = RigConfig(height=h, width=w)
        self.observation_space = observation_space(self.rig, include_ego)
        self.action_space = action_space()
        self._family: str | None = None
        self._frame: np.ndarray | None = None
        self._ego: np.ndarray | None = None
        self._closed = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._closed:
            raise RuntimeError("XWorld-v0 was closed; make a new environment")
        family = self.runtime.bank_family(family_option(options, self.family))
        super().reset(seed=seed)
        start = self.runtime.bank.sample(family, self.np_random)
        noise_seed = int(self.np_random.integers(2**63 - 1))
        self.engine.start(
            start.frames[None], start.actions[None], start.ego[None], seeds=[noise_seed]
        )
        self._family = start.family
        self._frame = np.array(start.frames[-1, -1])  # a copy: users may keep observations
        self._ego = np.asarray(start.ego[-1], dtype=np.float32)
        info = {"family": start.family, "ego": dict(zip(EGO_FIELDS, self._ego.tolist()))}
        return self._observation(), info

    def step(self, action):
        if self._closed:
            raise RuntimeError("XWorld-v0 was closed; make a new environment")
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        action = check_action(action, self.action_space)
        out = self.engine.step_chunk(torch.from_numpy(action)[None], decode="last")
        self._frame = out.frames[0, -1].cpu().numpy()
        self._ego = out.ego[0].float().cpu().numpy()
        collision = float(out.collision_prob[0])
        off_road = float(out.off_road_prob[0])
        terms = reward_terms(self._ego, collision, off_road, self._family, self.reward_config)
        info = {
            "family": self._family,
            "ego": dict(zip(EGO_FIELDS, self._ego.tolist())),
            "collision_prob": collision,
            "off_road_prob": off_road,
            "speed_read": float(out.speed_read[0]),
            "reward_terms": terms,
            "cache": self.cache_info(),
        }
        terminated = is_terminal(collision, off_road, self.reward_config)
        return self._observation(), float(sum(terms.values())), terminated, False, info

    def cache_info(self) -> dict[str, int]:
        """Block evaluations of the last step: reuse-eligible, reused, and all (counts only)."""
        stats = getattr(self.engine.executor, "stats", None)
        if stats is None:
            depth, steps = self.engine.dit.config.depth, self.engine.sampler.num_steps
            return {"eligible": 0, "reused": 0, "evaluations": depth * (steps + 1)}
        return stats.last_chunk()

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        speed = float(self._ego[0]) * 3.6
        title = f"XWorld-v0 | {self._family} | {speed:5.1f} km/h | cache: {self.cache_policy}"
        return mosaic(self._frame, CAMERA_NAMES, title=title)

    def close(self) -> None:
        self._closed = True

    def _observation(self) -> dict:
        obs = {name: self._frame[i].copy() for i, name in enumerate(CAMERA_NAMES)}
        if self.include_ego:
            obs["ego"] = np.clip(self._ego, -EGO_LIMITS, EGO_LIMITS).astype(np.float32)
        return obs


__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_SCENARIO_BANK", "FAMILIES", "XWorldEnv"]
