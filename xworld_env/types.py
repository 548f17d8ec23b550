"""Shared names and small value types.

Shape legend, used in every einops pattern and shape comment of the package:

    b  batch of worlds            v  cameras (views), ordered as CAMERA_NAMES
    f  frames in a chunk          h w  spatial grid (pixels or latent tokens)
    c  channels                   d  model width
    s  denoising step             l  DiT block
    t  time (chunks of an episode)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The seven cameras of the rig, in the order used by every tensor axis ``v``.
CAMERA_NAMES: tuple[str, ...] = (
    "front_wide",
    "front_narrow",
    "front_left",
    "front_right",
    "rear_left",
    "rear_right",
    "rear",
)

#: View groups used by X-Cache fingerprints: cameras that share a sampling grid.
VIEW_GROUPS: dict[str, tuple[str, ...]] = {
    "front": ("front_wide", "front_narrow"),
    "side": ("front_left", "front_right", "rear_left", "rear_right"),
    "rear": ("rear",),
}

#: Scenario families of the teacher simulator.
FAMILIES: tuple[str, ...] = ("highway", "merge", "roundabout", "intersection")

#: Fields of the ego-state vector, in order (``ego`` observation, dataset, heads).
EGO_FIELDS: tuple[str, ...] = ("speed", "lane_offset", "heading_error")


@dataclass(frozen=True)
class EgoState:
    """Ego state in the units the reward uses.

    Attributes:
        speed: forward speed in m/s.
        lane_offset: signed lateral offset from the current lane centre in m (positive = left).
        heading_error: ego heading minus lane heading in rad, in (-pi, pi] (positive = left).
    """

    speed: float
    lane_offset: float
    heading_error: float

    def as_array(self) -> np.ndarray:
        """The state as a float32 vector ordered as ``EGO_FIELDS``."""
        return np.array([self.speed, self.lane_offset, self.heading_error], dtype=np.float32)


@dataclass(frozen=True)
class Events:
    """Discrete events of one step."""

    collision: bool
    off_road: bool
