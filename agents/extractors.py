"""Policy features from the seven camera views: one CNN shared by all cameras.

``SevenViewEncoder`` is a plain ``nn.Module`` used by every agent stack: SB3 through
``SevenViewExtractor`` and Ray RLlib through ``agents.rllib.module.XWorldPPOModule``.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from xworld_env.types import CAMERA_NAMES

#: Scale of the ego vector (speed m/s, lane offset m, heading error rad) fed to the mixer.
EGO_SCALE = (30.0, 2.0, 0.5)


class SevenViewEncoder(nn.Module):
    """Encodes every camera with the same CNN, adds a learned camera embedding, and mixes the
    views (and the ego vector, if observed) into one feature vector.

    Sharing the CNN keeps the parameter count of one camera while every view trains it; the
    camera embedding tells the mixer which view a feature came from. Images may come
    channel-first (SB3 transposes them) or channel-last (the env's layout), uint8 or float.

    Args:
        observation_space: ``Dict`` of camera images and optionally ``"ego"``.
        features_dim: output size.
        view_dim: feature size per camera.
    """

    def __init__(
        self, observation_space: gym.spaces.Dict, features_dim: int = 256, view_dim: int = 64
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Dict):
            raise TypeError(f"expected a Dict observation space, got {observation_space}")
        self.cameras = [name for name in CAMERA_NAMES if name in observation_space.spaces]
        if not self.cameras:
            raise ValueError(f"observation space has none of the cameras {CAMERA_NAMES}")
        self.features_dim = features_dim
        shape = observation_space.spaces[self.cameras[0]].shape
        channels = shape[0] if shape[0] in (1, 3) else shape[-1]
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, view_dim), nn.ReLU(),
        )
        self.camera_embed = nn.Parameter(torch.zeros(len(self.cameras), view_dim))
        self.has_ego = "ego" in observation_space.spaces
        ego_dim = observation_space.spaces["ego"].shape[0] if self.has_ego else 0
        self.register_buffer("ego_scale", torch.tensor(EGO_SCALE[:ego_dim]), persistent=False)
        self.mix = nn.Sequential(
            nn.Linear(len(self.cameras) * view_dim + ego_dim, features_dim), nn.ReLU()
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        views = torch.stack([observations[name] for name in self.cameras], dim=1)
        b, v = views.shape[:2]
        if views.shape[-1] in (1, 3) and views.shape[2] not in (1, 3):
            views = views.permute(0, 1, 4, 2, 3)  # channel-last input
        feats = self.cnn(views.flatten(0, 1).float()).view(b, v, -1) + self.camera_embed
        parts = [feats.flatten(1)]
        if self.has_ego:
            parts.append(observations["ego"].float() / self.ego_scale)
        return self.mix(torch.cat(parts, dim=1))


class SevenViewExtractor(BaseFeaturesExtractor):
    """SB3 features extractor around ``SevenViewEncoder`` (same arguments)."""

    def __init__(
        self, observation_space: gym.spaces.Dict, features_dim: int = 256, view_dim: int = 64
    ) -> None:
        super().__init__(observation_space, features_dim)
        self.encoder = SevenViewEncoder(observation_space, features_dim, view_dim)

    @property
    def cnn(self) -> nn.Module:
        """The CNN every camera shares."""
        return self.encoder.cnn

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(observations)
