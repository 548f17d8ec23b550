"""xworld-env: a Gymnasium driving environment simulated by a learned multi-camera world model."""

from gymnasium.envs.registration import register, registry

from xworld_env.types import CAMERA_NAMES, EGO_FIELDS, FAMILIES, VIEW_GROUPS

__version__ = "0.1.0"

__all__ = ["CAMERA_NAMES", "EGO_FIELDS", "FAMILIES", "VIEW_GROUPS", "__version__"]

if "XWorld-v0" not in registry:
    register(
        id="XWorld-v0",
        entry_point="xworld_env.envs.xworld:XWorldEnv",
        vector_entry_point="xworld_env.envs.xworld_vector:XWorldVectorEnv",
        max_episode_steps=80,
    )

if "XWorldSim-v0" not in registry:
    register(
        id="XWorldSim-v0",
        entry_point="xworld_env.sim.sim_env:XWorldSimEnv",
        max_episode_steps=80,
    )
