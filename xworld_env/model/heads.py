"""Readout heads on the clean latents of a chunk: ego state and event logits.

As in learned-simulator environments, reward and termination come from small networks reading the
generated world, trained on the teacher simulator's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from xworld_env.types import CAMERA_NAMES, EGO_FIELDS


@dataclass(frozen=True)
class HeadsConfig:
    """Architecture of :class:`Heads`.

    Attributes:
        latent_channels: latent channels ``c``.
        latent_size: latent grid side ``h = w``.
        num_cameras: cameras ``v`` per chunk.
        frames_per_chunk: frames ``f`` per chunk.
        channels: width of the per-camera-frame conv trunk.
        features: feature size per camera-frame after the trunk.
        hidden: hidden width of the MLP over all camera-frames.
        ego_scale: typical magnitude of each ``EGO_FIELDS`` entry; the network predicts ego state
            divided by it, so the fields weigh alike in training.
        temporal: the trunk reads each camera's frames together (stacked along the channels),
            so that it can see how the image moved between them; False (the first heads): one
            trunk pass per camera-frame, the frames meeting only in the MLP.
    """

    latent_channels: int = 8
    latent_size: int = 8
    num_cameras: int = len(CAMERA_NAMES)
    frames_per_chunk: int = 2
    channels: int = 32
    features: int = 32
    hidden: int = 256
    ego_scale: tuple[float, ...] = (30.0, 1.0, 0.2)
    temporal: bool = False

    def __post_init__(self) -> None:
        if len(self.ego_scale) != len(EGO_FIELDS):
            raise ValueError(f"ego_scale needs one entry per field of {EGO_FIELDS}")

    @property
    def chunk_shape(self) -> tuple[int, int, int, int, int]:
        """Shape (v, f, h, w, c) of one world's chunk latents."""
        size = self.latent_size
        return (self.num_cameras, self.frames_per_chunk, size, size, self.latent_channels)


class HeadsOutput(NamedTuple):
    """Predictions for one chunk (state at its last frame, events during it).

    Attributes:
        ego: (b, 3) ego state ordered as ``EGO_FIELDS``, in m/s, m, rad.
        collision_logit: (b,) logit of a collision.
        off_road_logit: (b,) logit of leaving the road.
    """

    ego: Tensor
    collision_logit: Tensor
    off_road_logit: Tensor


class Heads(nn.Module):
    """Ego-state and event heads over all cameras and frames of a chunk.

    A conv trunk shared by every camera-frame (by every camera, its frames stacked, when
    ``temporal``) reduces each latent image to a feature vector; an MLP over the concatenation
    (ordered by camera and frame) makes the predictions.

    Args:
        config: architecture.
    """

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        pooled = config.latent_size // 2
        stacked = config.frames_per_chunk if config.temporal else 1
        self.trunk = nn.Sequential(
            nn.Conv2d(config.latent_channels * stacked, ch, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(ch * pooled * pooled, config.features),
            nn.SiLU(),
        )
        views = config.num_cameras * config.frames_per_chunk // stacked
        self.mlp = nn.Sequential(
            nn.Linear(views * config.features, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, len(EGO_FIELDS) + 2),
        )
        self.register_buffer("ego_scale", torch.tensor(config.ego_scale, dtype=torch.float32))

    def trunk_inputs(self, latents: Tensor) -> Tensor:
        """(b, v, f, h, w, c) latents -> the trunk's images, in (camera, frame) order: one per
        camera with its frames stacked along the channels (``temporal``), else one per
        camera-frame."""
        if self.config.temporal:
            return rearrange(latents, "b v f h w c -> (b v) (f c) h w")
        return rearrange(latents, "b v f h w c -> (b v f) c h w")

    def forward(self, latents: Tensor) -> HeadsOutput:
        """Predicts ego state and event logits.

        Args:
            latents: (b, v, f, h, w, c) clean latents of one chunk.
        """
        cfg = self.config
        expected = cfg.chunk_shape
        if latents.dim() != 6 or tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"Heads expects latents (b, v, f, h, w, c) with (v, f, h, w, c) = {expected}, "
                f"got {tuple(latents.shape)}"
            )
        features = self.trunk(self.trunk_inputs(latents)).reshape(latents.shape[0], -1)
        out = self.mlp(features)
        return HeadsOutput(
            ego=out[:, : len(EGO_FIELDS)] * self.ego_scale,
            collision_logit=out[:, -2],
            off_road_logit=out[:, -1],
        )
