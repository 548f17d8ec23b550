"""Spaces and input checks shared by every environment of the package."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from xworld_env.sim.rig import RigConfig
from xworld_env.sim.scenarios import check_family
from xworld_env.types import EGO_FIELDS

#: Bounds of the ego vector: speed m/s, lane offset m, heading error rad (values are clipped).
EGO_LIMITS = np.array([40.0, 50.0, np.pi], dtype=np.float32)


def observation_space(rig: RigConfig, include_ego: bool) -> spaces.Dict:
    """The observation space shared by ``XWorldSim-v0`` and ``XWorld-v0``."""
    views = {
        name: spaces.Box(0, 255, (rig.height, rig.width, 3), np.uint8) for name in rig.names
    }
    if include_ego:
        views["ego"] = spaces.Box(-EGO_LIMITS, EGO_LIMITS, (len(EGO_FIELDS),), np.float32)
    return spaces.Dict(views)


def action_space() -> spaces.Box:
    """Normalised (acceleration, steering), positive steering to the left."""
    return spaces.Box(-1.0, 1.0, (2,), np.float32)


def check_action(action: Any, space: spaces.Box) -> np.ndarray:
    """Returns the action as float32 (2,), or raises ``ValueError`` saying what is accepted."""
    try:
        arr = np.asarray(action, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(
            f"action must be a float array of shape (2,) in [-1, 1], got {action!r}"
        ) from None
    if arr.shape != (2,):
        raise ValueError(
            f"action must have shape (2,) = (acceleration, steering), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action must be finite, got {arr.tolist()}")
    if np.any(arr < space.low) or np.any(arr > space.high):
        raise ValueError(f"action must lie in [-1, 1] on both axes, got {arr.tolist()}")
    return arr


def family_option(options: dict | None, default: str | None) -> str | None:
    """The scenario family asked for in reset ``options`` (else ``default``), checked."""
    options = dict(options or {})
    unknown = set(options) - {"family"}
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; accepted: family")
    family = options.get("family", default)
    if family is not None:
        check_family(family)
    return family
