"""The camera rig: where each of the seven cameras sits on the ego car and what it sees."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xworld_env.types import CAMERA_NAMES


@dataclass(frozen=True)
class CameraSpec:
    """One pinhole camera mounted on the ego car.

    Angles are in degrees. ``yaw`` is measured from the car's forward axis, positive to the
    left (counter-clockwise seen from above); ``pitch`` is positive looking up. ``forward`` and
    ``left`` place the camera in metres from the car's centre, ``height`` above the ground.
    """

    name: str
    yaw: float
    fov: float
    height: float = 1.6
    pitch: float = -4.0
    forward: float = 0.0
    left: float = 0.0


def _default_cameras() -> tuple[CameraSpec, ...]:
    return (
        CameraSpec("front_wide", yaw=0.0, fov=120.0, forward=1.0),
        CameraSpec("front_narrow", yaw=0.0, fov=40.0, forward=1.0, pitch=-2.0),
        CameraSpec("front_left", yaw=60.0, fov=90.0, forward=0.8, left=0.9),
        CameraSpec("front_right", yaw=-60.0, fov=90.0, forward=0.8, left=-0.9),
        CameraSpec("rear_left", yaw=130.0, fov=90.0, forward=-0.8, left=0.9),
        CameraSpec("rear_right", yaw=-130.0, fov=90.0, forward=-0.8, left=-0.9),
        CameraSpec("rear", yaw=180.0, fov=90.0, forward=-2.2),
    )


@dataclass(frozen=True)
class RigConfig:
    """The whole rig: cameras in observation order and the image size shared by all of them.

    The default is the seven-camera rig of ``CAMERA_NAMES`` at 64×64 pixels.
    """

    cameras: tuple[CameraSpec, ...] = field(default_factory=_default_cameras)
    height: int = 64
    width: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(_as_spec(c) for c in self.cameras))
        validate_rig(self)

    @property
    def names(self) -> tuple[str, ...]:
        """Camera names in observation order."""
        return tuple(c.name for c in self.cameras)

    @classmethod
    def from_dict(cls, cfg: dict) -> RigConfig:
        """Builds a rig from plain config values (as hydra gives them)."""
        cfg = dict(cfg)
        cameras = cfg.pop("cameras", None)
        unknown = set(cfg) - {"height", "width"}
        if unknown:
            raise ValueError(
                f"unknown rig setting(s) {sorted(unknown)}; accepted: cameras, height, width"
            )
        if cameras is None:
            return cls(**cfg)
        return cls(cameras=tuple(cameras), **cfg)


def _as_spec(camera: CameraSpec | dict) -> CameraSpec:
    if isinstance(camera, CameraSpec):
        return camera
    try:
        return CameraSpec(**dict(camera))
    except TypeError as err:
        raise ValueError(
            f"bad camera entry {dict(camera)!r}: {err}; accepted keys: name, yaw, fov, height, "
            "pitch, forward, left"
        ) from None


def validate_rig(rig: RigConfig) -> None:
    """Raises ``ValueError`` naming the first setting of ``rig`` that cannot be rendered."""
    if not rig.cameras:
        raise ValueError("the rig has no cameras; give at least one camera")
    for size_name in ("height", "width"):
        size = getattr(rig, size_name)
        if not isinstance(size, int) or size < 8 or size % 8:
            raise ValueError(
                f"rig image {size_name} must be a positive multiple of 8 (the autoencoder "
                f"downsamples 8x), got {size!r}"
            )
    seen: set[str] = set()
    for cam in rig.cameras:
        if cam.name in seen:
            raise ValueError(f"camera name {cam.name!r} appears twice in the rig; names are unique")
        seen.add(cam.name)
        if not 1.0 <= cam.fov <= 170.0:
            raise ValueError(
                f"camera {cam.name!r}: fov must be in [1, 170] degrees, got {cam.fov}"
            )
        if not 0.2 <= cam.height <= 10.0:
            raise ValueError(
                f"camera {cam.name!r}: height must be in [0.2, 10] metres, got {cam.height}"
            )
        if not -60.0 <= cam.pitch <= 60.0:
            raise ValueError(
                f"camera {cam.name!r}: pitch must be in [-60, 60] degrees, got {cam.pitch}"
            )


def default_rig() -> RigConfig:
    """The seven-camera rig every shipped model is trained on."""
    rig = RigConfig()
    assert rig.names == CAMERA_NAMES
    return rig


def camera_rays(cam: CameraSpec, height: int, width: int) -> np.ndarray:
    """Unit ray directions of every pixel in the car frame.

    The car frame has x forward, y to the right and z up, matching highway-env's ground plane
    (whose y axis points to the right of a car heading along +x).

    Returns:
        float64 array (h, w, 3).
    """
    focal = 0.5 * width / np.tan(np.radians(cam.fov) / 2.0)
    u = (np.arange(width) + 0.5 - width / 2.0) / focal  # right in the image
    v = (np.arange(height) + 0.5 - height / 2.0) / focal  # down in the image
    uu, vv = np.meshgrid(u, v)
    # Yaw to the left turns toward -y in this frame.
    yaw, pitch = np.radians(-cam.yaw), np.radians(cam.pitch)
    fwd_xy = np.array([np.cos(yaw), np.sin(yaw)])
    right_xy = np.array([-np.sin(yaw), np.cos(yaw)])
    forward = np.array([fwd_xy[0] * np.cos(pitch), fwd_xy[1] * np.cos(pitch), np.sin(pitch)])
    up = np.array([-fwd_xy[0] * np.sin(pitch), -fwd_xy[1] * np.sin(pitch), np.cos(pitch)])
    right = np.array([right_xy[0], right_xy[1], 0.0])
    rays = forward + uu[..., None] * right - vv[..., None] * up
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def camera_offset(cam: CameraSpec) -> np.ndarray:
    """Camera position in the car frame (x forward, y right, z up), metres."""
    return np.array([cam.forward, -cam.left, cam.height])
