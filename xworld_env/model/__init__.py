"""The world model's networks: autoencoder, causal DiT, KV cache, sampler, heads, checkpoints."""

from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.checkpoint import (
    CheckpointError,
    WorldModelBundle,
    load_bundle,
    save_bundle,
)
from xworld_env.model.dit import (
    PRESETS,
    BlockContext,
    BlockExecutor,
    CausalDiT,
    DiTBlock,
    DiTConfig,
    FullCompute,
    dit_config,
)
from xworld_env.model.heads import Heads, HeadsConfig, HeadsOutput
from xworld_env.model.kernels import warm_math_kernels
from xworld_env.model.kv_cache import KVCacheConfig, KVView, RollingKVCache
from xworld_env.model.sampler import FlowSampler, SamplerConfig

# Before any model computes: see ``kernels`` for why.
warm_math_kernels()

__all__ = [
    "PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "BlockContext",
    "BlockExecutor",
    "CausalDiT",
    "CheckpointError",
    "DiTBlock",
    "DiTConfig",
    "FlowSampler",
    "FullCompute",
    "Heads",
    "HeadsConfig",
    "HeadsOutput",
    "KVCacheConfig",
    "KVView",
    "RollingKVCache",
    "SamplerConfig",
    "WorldModelBundle",
    "dit_config",
    "load_bundle",
    "save_bundle",
    "warm_math_kernels",
]
