"""``gym.make_vec("XWorld-v0", num_envs=N)``: N worlds batched in one world-model forward.

Every step runs one chunk of all N worlds through the engine in one batch; X-Cache gates each
world on its own. Episodes end per world (predicted events or the step limit) and restart from
the scenario bank: on the next step (``NEXT_STEP``, the default) or within the same step
(``SAME_STEP``, with ``final_obs`` and ``final_info`` in the infos, as SB3 expects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from xworld_env.envs.rewards import RewardConfig, is_terminal, reward_terms
from xworld_env.envs.spaces import EGO_LIMITS, action_space, family_option, observation_space
from xworld_env.envs.xworld import check_env_arguments, load_runtime, reward_config
from xworld_env.mosaic import mosaic
from xworld_env.sim.rig import RigConfig
from xworld_env.types import CAMERA_NAMES, EGO_FIELDS
from xworld_env.xcache import make_executor


class XWorldVectorEnv(VectorEnv):
    """N independent XWorld-v0 worlds stepped in one batched forward.

    Args:
        num_envs: number of worlds ``N``.
        max_episode_steps: steps after which a world's episode is truncated (None: never).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP``.
        Others: as ``XWorldEnv`` (``cache``, ``family``, ``checkpoint``, ``scenario_bank``,
            ``device``, ``dtype``, ``decode_dtype``, ``attention_dtype``, ``num_steps``,
            ``window``, ``noise``, ``speed``, ``reward``, ``include_ego``, ``render_mode``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
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
        max_episode_steps: int | None = 80,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        check_env_arguments(family, render_mode)
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError("autoreset_mode must be NEXT_STEP or SAME_STEP")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.runtime = load_runtime(checkpoint, scenario_bank, device, dtype, num_steps, window,
                                    noise, decode_dtype, speed, attention_dtype)
        self.engine = self.runtime.engine
        self.engine.executor = make_executor(cache)
        self.num_envs = num_envs
        self.family = family
        self.include_ego = include_ego
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.reward_config = reward_config(reward)
        _, _, h, w, _ = self.engine.frame_shape
        self.single_observation_space = observation_space(RigConfig(height=h, width=w),
                                                          include_ego)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator] = []
        self._families = [""] * num_envs
        self._frames = np.zeros((num_envs, len(CAMERA_NAMES), h, w, 3), np.uint8)
        self._ego = np.zeros((num_envs, len(EGO_FIELDS)), np.float32)
        self._steps = np.zeros(num_envs, np.int64)
        self._pending_reset = np.zeros(num_envs, bool)
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------- Gymnasium API

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if self._closed:
            raise RuntimeError("the XWorld-v0 vector env was closed; make a new one")
        family = self.runtime.bank_family(family_option(options, self.family))
        if seed is None or isinstance(seed, int):
            base = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
            seeds = [base + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset needs one seed per world ({self.num_envs}), got {seeds}")
        self._rngs = [np.random.default_rng(s) for s in seeds]
        self._restart(np.arange(self.num_envs), family, fresh_batch=True)
        self._pending_reset[:] = False
        self._started = True
        infos: dict = {}
        for i in range(self.num_envs):
            infos = self._add_info(infos, self._world_info(i), i)
        return self._observations(), infos

    def step(self, actions):
        if self._closed:
            raise RuntimeError("the XWorld-v0 vector env was closed; make a new one")
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        out = self.engine.step_chunk(torch.from_numpy(actions), decode="last")
        self._frames = out.frames[:, -1].cpu().numpy()
        self._ego = out.ego.float().cpu().numpy()
        collision = out.collision_prob.float().cpu().numpy()
        off_road = out.off_road_prob.float().cpu().numpy()
        speed_read = out.speed_read.float().cpu().numpy()
        self._steps += 1
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: dict = {}
        cache = self._cache_counts()
        for i in range(self.num_envs):
            terms = reward_terms(self._ego[i], collision[i], off_road[i], self._families[i],
                                 self.reward_config)
            rewards[i] = sum(terms.values())
            terminated[i] = is_terminal(collision[i], off_road[i], self.reward_config)
            truncated[i] = (self.max_episode_steps is not None
                            and self._steps[i] >= self.max_episode_steps)
            info = {**self._world_info(i), "collision_prob": float(collision[i]),
                    "off_road_prob": float(off_road[i]), "speed_read": float(speed_read[i]),
                    "reward_terms": terms}
            if cache is not None:
                info["cache_reused"] = int(cache[i])
            infos = self._add_info(infos, info, i)

        mode = self.metadata["autoreset_mode"]
        if mode == AutoresetMode.NEXT_STEP:
            # Worlds that ended on the previous step start again; this step's chunk of theirs
            # is discarded and they report their first observation, as NEXT_STEP prescribes.
            restart = np.flatnonzero(self._pending_reset)
            if len(restart):
                self._restart(restart, self.family)
                rewards[restart] = 0.0
                terminated[restart] = truncated[restart] = False
            self._pending_reset = terminated | truncated
            return self._observations(), rewards, terminated, truncated, infos
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            final_obs = self._observations()
            for i in done:
                infos = self._add_info(
                    infos, {"final_obs": {k: v[i] for k, v in final_obs.items()},
                            "final_info": self._world_info(i)}, i
                )
            self._restart(done, self.family)
        return self._observations(), rewards, terminated, truncated, infos

    def render(self):
        if self.render_mode != "rgb_array" or not self._started:
            return None
        return [mosaic(self._frames[i], CAMERA_NAMES, title=f"world {i} | {self._families[i]}")
                for i in range(self.num_envs)]

    def close_extras(self, **kwargs: Any) -> None:
        self._closed = True

    # ---------------------------------------------------------------- helpers

    def _check_actions(self, actions) -> np.ndarray:
        try:
            arr = np.asarray(actions, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"actions must be a float array of shape ({self.num_envs}, 2)") \
                from None
        if arr.shape != (self.num_envs, 2):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, 2) = (worlds, (acceleration, "
                f"steering)), got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError("actions must be finite")
        if (np.abs(arr) > 1.0).any():
            raise ValueError("actions must lie in [-1, 1]")
        return arr

    def _restart(self, worlds: np.ndarray, family: str | None, fresh_batch: bool = False) -> None:
        starts = [self.runtime.bank.sample(family, self._rngs[i]) for i in worlds]
        frames = np.stack([s.frames for s in starts])
        actions = np.stack([s.actions for s in starts])
        ego = np.stack([s.ego for s in starts])
        seeds = [int(self._rngs[i].integers(2**63 - 1)) for i in worlds]
        self.engine.start(frames, actions, ego, seeds=seeds,
                          worlds=None if fresh_batch else worlds.tolist())
        for j, i in enumerate(worlds):
            self._families[i] = starts[j].family
            self._frames[i] = starts[j].frames[-1, -1]
            self._ego[i] = starts[j].ego[-1]
            self._steps[i] = 0

    def _observations(self) -> dict[str, np.ndarray]:
        obs = {name: self._frames[:, v].copy() for v, name in enumerate(CAMERA_NAMES)}
        if self.include_ego:
            obs["ego"] = np.clip(self._ego, -EGO_LIMITS, EGO_LIMITS).astype(np.float32)
        return obs

    def _world_info(self, i: int) -> dict:
        return {"family": self._families[i],
                "ego": dict(zip(EGO_FIELDS, self._ego[i].tolist()))}

    def _cache_counts(self) -> np.ndarray | None:
        stats = getattr(self.engine.executor, "stats", None)
        if stats is None or not stats.chunks:
            return None
        return np.asarray(stats.last_chunk_per_world(self.num_envs))
