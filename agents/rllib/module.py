"""The RLlib RLModule of XWorld-v0 policies: the shared seven-view CNN, a policy and a value head.

The encoder is ``agents.extractors.SevenViewEncoder``, the one the SB3 agents use: every camera
goes through the same CNN (images stay images, never flattened into a vector), a camera embedding
marks the view, and a mixer joins the views with the ego vector.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from agents.extractors import SevenViewEncoder


class XWorldPPOModule(TorchRLModule, ValueFunctionAPI):
    """Actor-critic over the seven camera views for PPO.

    ``model_config`` keys: ``features_dim`` (256), ``view_dim`` (64), ``hidden`` (256),
    ``initial_log_std`` (-0.5). Actions follow a diagonal Gaussian whose mean comes from the
    policy head and whose log standard deviation is a learned, state-independent vector.
    """

    def setup(self) -> None:
        cfg = {"features_dim": 256, "view_dim": 64, "hidden": 256, "initial_log_std": -0.5,
               **(self.model_config or {})}
        self.encoder = SevenViewEncoder(self.observation_space, cfg["features_dim"],
                                        cfg["view_dim"])
        action_dim = int(self.action_space.shape[0])
        self.pi = nn.Sequential(nn.Linear(cfg["features_dim"], cfg["hidden"]), nn.Tanh(),
                                nn.Linear(cfg["hidden"], action_dim))
        self.vf = nn.Sequential(nn.Linear(cfg["features_dim"], cfg["hidden"]), nn.Tanh(),
                                nn.Linear(cfg["hidden"], 1))
        self.log_std = nn.Parameter(torch.full((action_dim,), float(cfg["initial_log_std"])))
        nn.init.orthogonal_(self.pi[-1].weight, 0.01)
        nn.init.zeros_(self.pi[-1].bias)

    def _dist_inputs(self, features: torch.Tensor) -> torch.Tensor:
        mean = self.pi(features)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.encoder(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(features)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.encoder(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(features),
                Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self.encoder(batch[Columns.OBS])
        return self.vf(embeddings).squeeze(-1)
