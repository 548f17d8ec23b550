"""The world-model settings every policy trainer shares: which world, how episodes run."""

from __future__ import annotations

from dataclasses import dataclass

from xworld_env.engine import DECODE_DTYPES, DIT_DTYPES, NOISE_MODES, SPEED_SOURCES
from xworld_env.xcache import make_executor


@dataclass(frozen=True)
class WorldSettings:
    """The batched XWorld-v0 worlds a policy trains in (base of the SB3 and RLlib configs).

    Attributes:
        cache: the world model's cache policy: a name (``xcache``, ``none``, ``fbcache``,
            ``static``) or a dict of a policy and its settings, e.g. a file of the ``xcache``
            config group (``+xcache@agent.cache=fbcache``) or
            ``agent.cache={policy:xcache,max_error:0.01}``.
        checkpoint: world model folder (None: the shipped one).
        scenario_bank: scenario bank file (None: the shipped one).
        family: scenario family of every episode (None: random).
        max_episode_steps: truncation of each episode.
        world_dtype: compute precision of the world model (``float32``, ``bfloat16``,
            ``float16``, ``int8`` on the CPU; the envs' ``dtype``).
        world_decode_dtype: precision of the world model's image decoder (``auto``, or one of
            the above but ``int8``; the envs' ``decode_dtype``).
        world_noise: the world model's noise (the envs' ``noise``): ``fixed`` per episode,
            ``fresh`` every chunk, or None for the checkpoint's (``fixed`` for the shipped one,
            under which X-Cache reuses and the world stands still under steady actions).
        world_speed: where the world model's ego speed comes from (the envs' ``speed``):
            ``heads`` reads it from each chunk, ``kinematic`` integrates the pedals with the
            simulator's vehicle model (``EngineConfig.speed``).
    """

    cache: str | dict = "xcache"
    checkpoint: str | None = None
    scenario_bank: str | None = None
    family: str | None = None
    max_episode_steps: int = 80
    world_dtype: str = "float32"
    world_decode_dtype: str = "auto"
    world_noise: str | None = None
    world_speed: str = "heads"

    def __post_init__(self) -> None:
        make_executor(self.cache)  # a bad policy or setting fails here, naming what is accepted
        if self.world_dtype not in DIT_DTYPES:
            raise ValueError(f"world_dtype must be one of {list(DIT_DTYPES)}, "
                             f"got {self.world_dtype!r}")
        if self.world_decode_dtype not in DECODE_DTYPES:
            raise ValueError(f"world_decode_dtype must be one of {list(DECODE_DTYPES)}, "
                             f"got {self.world_decode_dtype!r}")
        if self.world_noise is not None and self.world_noise not in NOISE_MODES:
            raise ValueError(f"world_noise must be one of {NOISE_MODES} or null (the "
                             f"checkpoint's), got {self.world_noise!r}")
        if self.world_speed not in SPEED_SOURCES:
            raise ValueError(f"world_speed must be one of {SPEED_SOURCES}, "
                             f"got {self.world_speed!r}")

    def world_kwargs(self, device: str) -> dict:
        """Keyword arguments of the ``XWorldVectorEnv`` these settings describe, on ``device``."""
        return {"cache": self.cache, "checkpoint": self.checkpoint,
                "scenario_bank": self.scenario_bank, "family": self.family,
                "max_episode_steps": self.max_episode_steps, "device": device,
                "dtype": self.world_dtype, "decode_dtype": self.world_decode_dtype,
                "noise": self.world_noise, "speed": self.world_speed}
