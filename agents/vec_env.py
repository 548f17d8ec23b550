"""SB3 ``VecEnv`` over the batched ``XWorldVectorEnv``: N worlds in one forward, no subprocesses.

SB3 resets an environment in the step that ends it and passes the last observation as
``info["terminal_observation"]``; the vector env runs in ``SAME_STEP`` autoreset mode for that,
and this adapter turns its ``final_obs`` / ``final_info`` into SB3's per-world info dicts.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from xworld_env.envs.xworld_vector import XWorldVectorEnv


def _unbatch_info(infos: dict, i: int) -> dict:
    """World ``i``'s entries of a Gymnasium vector info dict (``_key`` masks honoured)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[i]:
            continue
        out[key] = _unbatch_info(value, i) if isinstance(value, dict) else value[i]
    return out


class XWorldSB3VecEnv(VecEnv):
    """SB3 adapter; ``**kwargs`` go to ``XWorldVectorEnv`` (``cache``, ``checkpoint``, ...).

    Args:
        num_envs: worlds stepped together.
    """

    def __init__(self, num_envs: int = 4, **kwargs: Any) -> None:
        kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP
        self.venv = XWorldVectorEnv(num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space,
                         self.venv.single_action_space)
        self.render_mode = self.venv.render_mode
        self._actions: np.ndarray | None = None

    def reset(self):
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        if seeds is not None and any(s is None for s in seeds):
            seeds = [s if s is not None else 0 for s in seeds]
        options = self._options[0] if self._options[0] else None
        obs, infos = self.venv.reset(seed=seeds, options=options)
        self.reset_infos = [_unbatch_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait called without step_async")
        obs, rewards, terminated, truncated, infos = self.venv.step(
            np.clip(self._actions, -1.0, 1.0)
        )
        self._actions = None
        dones = terminated | truncated
        out = []
        for i in range(self.num_envs):
            info = _unbatch_info(infos, i)
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            if dones[i]:
                info["terminal_observation"] = infos["final_obs"][i]
                info["episode_end"] = _unbatch_info(infos.get("final_info", {}), i)
            out.append(info)
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def get_images(self):
        return self.venv.render() or [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None,
                   **method_kwargs) -> list[Any]:
        method = getattr(self.venv, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
