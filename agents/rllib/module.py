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
from agents.rllib.config import check_exploration

#: Default initial log standard deviation per exploration: of every gSDE weight; of the action.
INITIAL_LOG_STD = {"gsde": -2.0, "gaussian": -0.5}


class XWorldPPOModule(TorchRLModule, ValueFunctionAPI):
    """Actor-critic over the seven camera views for PPO.

    ``model_config`` keys: ``features_dim`` (256), ``view_dim`` (64), ``hidden`` (256),
    ``exploration`` (``RLlibTrainConfig`` passes ``"gsde"`` by default; a ``model_config``
    without the key, as saved in checkpoints from before gSDE, means ``"gaussian"``),
    ``sde_sample_freq`` (8), ``initial_log_std`` (-2 for gSDE, -0.5 for Gaussian). Actions
    follow a diagonal Gaussian whose mean comes from the policy head.

    ``exploration="gsde"`` (generalized state-dependent exploration): the exploring action is
    ``mean + latent @ noise``, with ``latent`` the policy head's hidden layer and ``noise`` a
    (hidden, action) matrix per world, drawn from N(0, exp(log_std)^2) every ``sde_sample_freq``
    exploration steps (``log_std`` learned, one entry per matrix entry), so between draws the
    actions change only as smoothly as the scene, and X-Cache keeps reusing (independent
    noise every step changes every action abruptly, which vetoes reuse). Given the state the
    action is Gaussian with variance ``latent^2 @ exp(2 log_std)``, which is the distribution
    the PPO loss sees. ``exploration="gaussian"``: a learned, state-independent log standard
    deviation and independent noise every step (RLlib's usual sampling).
    """

    def setup(self) -> None:
        cfg = {"features_dim": 256, "view_dim": 64, "hidden": 256, "exploration": "gaussian",
               "sde_sample_freq": 8, **(self.model_config or {})}
        check_exploration(cfg["exploration"], cfg["sde_sample_freq"])
        self.gsde = cfg["exploration"] == "gsde"
        self.sde_sample_freq = int(cfg["sde_sample_freq"])
        log_std = cfg.get("initial_log_std")
        log_std = INITIAL_LOG_STD[cfg["exploration"]] if log_std is None else float(log_std)
        self.encoder = SevenViewEncoder(self.observation_space, cfg["features_dim"],
                                        cfg["view_dim"])
        action_dim = int(self.action_space.shape[0])
        self.pi = nn.Sequential(nn.Linear(cfg["features_dim"], cfg["hidden"]), nn.Tanh(),
                                nn.Linear(cfg["hidden"], action_dim))
        self.vf = nn.Sequential(nn.Linear(cfg["features_dim"], cfg["hidden"]), nn.Tanh(),
                                nn.Linear(cfg["hidden"], 1))
        shape = (cfg["hidden"], action_dim) if self.gsde else (action_dim,)
        self.log_std = nn.Parameter(torch.full(shape, log_std))
        nn.init.orthogonal_(self.pi[-1].weight, 0.01)
        nn.init.zeros_(self.pi[-1].bias)
        self._noise: torch.Tensor | None = None
        self._exploration_steps = 0

    def _policy(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(latent, mean, log_std)`` of the action distribution given the features."""
        latent = self.pi[1](self.pi[0](features))
        mean = self.pi[2](latent)
        if self.gsde:
            variance = latent.pow(2) @ torch.exp(2.0 * self.log_std)
            return latent, mean, 0.5 * torch.log(variance + 1e-6)
        return latent, mean, self.log_std.expand_as(mean)

    def _dist_inputs(self, features: torch.Tensor) -> torch.Tensor:
        _, mean, log_std = self._policy(features)
        return torch.cat([mean, log_std], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.encoder(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(features)}

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if not self.gsde:
            return self._forward(batch, **kwargs)
        latent, mean, log_std = self._policy(self.encoder(batch[Columns.OBS]))
        worlds = mean.shape[0]
        if (self._noise is None or self._noise.shape[0] != worlds
                or self._exploration_steps % self.sde_sample_freq == 0):
            std = torch.exp(self.log_std.detach())
            self._noise = torch.randn((worlds, *std.shape), device=std.device) * std
            self._exploration_steps = 0
        self._exploration_steps += 1
        actions = mean + torch.einsum("bh,bha->ba", latent, self._noise)
        logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
        return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std], dim=-1),
                Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.encoder(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(features),
                Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self.encoder(batch[Columns.OBS])
        return self.vf(embeddings).squeeze(-1)
