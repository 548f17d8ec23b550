"""Causal diffusion transformer over multi-camera latent chunks.

Follows the DiT reference code (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023)
with three changes for autoregressive world modelling:

* the token sequence of one chunk holds every camera and frame (``v f h w`` tokens), with a learned
  camera, frame and spatial embedding;
* attention is bidirectional inside the chunk and causal across chunks through a
  :class:`~xworld_env.model.kv_cache.RollingKVCache`; time across chunks is encoded by rotary
  position embedding (RoPE, Su et al. 2021) on part of each head's channels, applied at read time
  from each cached chunk's age;
* conditioning is timestep + action + ego speed, entering every block through adaLN-Zero.

The network predicts the rectified-flow velocity ``v = noise - x0`` of
``x_t = (1 - t) x0 + t noise``.

The block loop runs every block through an *executor* (:class:`BlockExecutor`); full compute
(:class:`FullCompute`) is the default, X-Cache and its baselines are others. A block is a function
of ``(x, ctx)``: its only other effect is to hand its keys and values to ``ctx.new_kv`` on passes
that write the KV cache.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from xworld_env.model.kv_cache import KVView, RollingKVCache
from xworld_env.model.marks import mark, marked
from xworld_env.types import CAMERA_NAMES


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: ``x * (1 + scale) + shift``."""
    return torch.addcmul(shift, x, 1 + scale)


# ---------------------------------------------------------------------------- embedders


class TimestepEmbedder(nn.Module):
    """Embeds flow time ``t`` in [0, 1] as a vector of width ``d`` (sinusoid + MLP, as in DiT).

    Args:
        width: model width ``d``.
        frequency_size: size of the sinusoidal feature before the MLP.
    """

    def __init__(self, width: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, width), nn.SiLU(), nn.Linear(width, width)
        )

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """Sinusoidal features of (b,) scalars, shape (b, dim)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        """(b,) flow times in [0, 1] -> (b, d)."""
        # Scaled to the 0..1000 range the sinusoid frequencies were designed for.
        freq = self.timestep_embedding(t * 1000.0, self.frequency_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class ConditionEmbedder(nn.Module):
    """Embeds the chunk's action and the ego speed before it as a vector of width ``d``.

    Args:
        width: model width ``d``.
        action_dim: size of the action vector.
        speed_scale: speed in m/s that maps to 1.0 before the MLP.
    """

    def __init__(self, width: int, action_dim: int, speed_scale: float) -> None:
        super().__init__()
        self.speed_scale = speed_scale
        self.mlp = nn.Sequential(
            nn.Linear(action_dim + 1, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, action: Tensor, ego_speed: Tensor) -> Tensor:
        """action (b, 2) in [-1, 1], ego_speed (b,) in m/s -> (b, d)."""
        features = torch.cat([action, ego_speed[:, None] / self.speed_scale], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ActionField(nn.Module):
    """Per-token action input: every token of a chunk gets its own linear function of the action.

    adaLN conditions every token of a chunk with the same channel-wise scale and shift; steering
    shifts and turns the seven views differently at every camera, frame and place, so this adds
    to each token's embedding a vector learned for its camera, frame and grid position, as a
    linear function of the action, the ego speed and their products. Zero-initialised: a model
    fine-tuned with it starts out computing exactly what it did without it.

    Args:
        config: the DiT's architecture (cameras, frames, grid, width, action size).
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.speed_scale = config.speed_scale
        g = config.grid_size
        features = 2 * config.action_dim + 1
        self.weight = nn.Parameter(
            torch.zeros(config.num_cameras, config.frames_per_chunk, g, g, features, config.width)
        )

    def forward(self, action: Tensor, ego_speed: Tensor) -> Tensor:
        """action (..., 2), ego_speed (...) -> (..., v, f, h, w, d) token offsets."""
        speed = (ego_speed / self.speed_scale)[..., None].to(action.dtype)
        features = torch.cat([action, speed, action * speed], dim=-1)
        return torch.einsum("...k,vfhwkd->...vfhwd", features.to(self.weight.dtype), self.weight)


class PatchEmbed(nn.Module):
    """Cuts each camera-frame latent into ``p x p`` patches and projects them to width ``d``.

    Args:
        patch_size: patch side ``p`` in latent cells.
        in_channels: latent channels ``c``.
        width: model width ``d``.
    """

    def __init__(self, patch_size: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, width)

    def forward(self, x: Tensor) -> Tensor:
        """(..., v, f, h*p, w*p, c) latents -> (..., v, f, h, w, d) tokens."""
        p = self.patch_size
        patches = rearrange(x, "... v f (h p) (w q) c -> ... v f h w (p q c)", p=p, q=p)
        return self.proj(patches)


class RotaryEmbedding(nn.Module):
    """Rotary position tables over time, for the first ``dims`` channels of each head.

    Args:
        dims: rotated channels per head (even).
        theta: base of the frequency ladder. Positions span only a few chunks of frames, so a
            base far below the usual 10000 keeps every frequency pair informative.
    """

    def __init__(self, dims: int, theta: float) -> None:
        super().__init__()
        self.dims = dims
        inv_freq = theta ** (-torch.arange(0, dims, 2, dtype=torch.float32) / max(dims, 1))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Positions (..., n) in frames -> (cos, sin), each (..., 1, n, dims / 2) (head axis)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        return torch.cos(angles).unsqueeze(-3), torch.sin(angles).unsqueeze(-3)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates the first ``2 * cos.shape[-1]`` channels of x (..., b, heads, n, e) by the
    tables."""
    r = cos.shape[-1]
    if r == 0:
        return x
    x1, x2, rest = x[..., :r], x[..., r : 2 * r], x[..., 2 * r :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    first = torch.addcmul(x1 * cos, x2, sin, value=-1)  # x1 cos - x2 sin
    second = torch.addcmul(x2 * cos, x1, sin)  # x2 cos + x1 sin
    return torch.cat([first, second, rest], dim=-1)


def attention_precision(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Runs the DiT's attention products (queries against the chunk's and the cached keys,
    weights against the values) in ``dtype`` inside it, in this thread; None: in the precision
    the projections give them.

    The projections, the residual stream and the KV cache keep their own precision: queries
    and keys are rotated in it and rounded to ``dtype`` after, and the output comes back in the
    block's precision. What an int8 DiT does on a CPU with bfloat16 dot products, where
    attention is the largest float32 part of a pass (``EngineConfig.attention_dtype``).
    """
    return marked("attention", dtype)


def attention_dtype() -> torch.dtype | None:
    """The precision ``attention_precision`` set in this thread, or None."""
    return mark("attention")


# ---------------------------------------------------------------------------- block context


@dataclass
class RotaryTables:
    """Rotary tables of one forward pass, shared by all blocks.

    Attributes:
        current: (cos, sin) for the queries and keys of the tokens being computed, (1, 1, n, r).

    The cached keys arrive already rotated (``BlockContext.past``).
    """

    current: tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ChunkInputs:
    """What every pass of one chunk computes alike from its action and ego speed, computed once
    (``CausalDiT.chunk_inputs``) for the chunk's denoising passes and its KV-update pass.

    Attributes:
        action: (b, 2) the chunk's action.
        ego_speed: (b,) ego speed before the chunk.
        embedding: (b, d) the action + speed part of the adaLN conditioning.
        offsets: what ``CausalDiT.token_offsets`` adds to every token embedding.
        rope: rotary tables of the chunk's own tokens.
        passes: each pass's conditioning by step index, when the passes' flow times were given
            (``chunk_inputs(..., times=...)``); empty otherwise.
    """

    action: Tensor
    ego_speed: Tensor
    embedding: Tensor
    offsets: tuple[Tensor, Tensor | None]
    rope: RotaryTables
    passes: Mapping[int, PassConditioning] = field(default_factory=dict)


@dataclass(frozen=True)
class PassConditioning:
    """The adaLN conditioning of one pass of a chunk, computed with the chunk's other passes'.

    Attributes:
        t: (b,) the pass's flow time.
        c: (b, d) its conditioning vector.
        modulations: (b, 6 d) adaLN modulation of every block, then (b, 2 d) the final
            layer's.
    """

    t: Tensor
    c: Tensor
    modulations: tuple[Tensor, ...]


#: The step index ``BlockContext.step`` of the KV-update pass (denoising steps are 0, 1, ...).
KV_UPDATE_STEP = -1


@dataclass
class BlockContext:
    """What block ``l`` needs besides its input, for one forward pass.

    Attributes:
        c: adaLN conditioning, (b, d); (b, t, d) with one vector per chunk in sequence mode.
        action: the chunk's raw action, (b, 2) ((b, t, 2) in sequence mode): the action entry of
            X-Cache fingerprints (an embedding would hide a sign flip; the raw vector does not).
        step: denoising step index ``s`` of this pass (-1 for the KV-update pass of ``commit_kv``).
        writes_kv: whether this pass commits keys and values to the cache; such a pass must call
            every block (X-Cache guardrail 1).
        past: the block's cached past keys (rotated to their positions before this chunk) and
            values, read only, or None.
        rope: rotary tables of this pass.
        attn_mask: boolean attention mask (True = attend) broadcastable to
            (b, heads, queries, keys), or None to attend everywhere.
        new_kv: output slot: the block puts its (un-rotated) keys and values here, each
            (b, heads, tokens, e), when ``writes_kv`` is True.
        modulation: the block's adaLN modulation of ``c``, (b, 6 d), where already computed
            (``PassConditioning``); None: the block computes it.
    """

    c: Tensor
    action: Tensor
    step: int
    writes_kv: bool
    past: KVView | None
    rope: RotaryTables
    attn_mask: Tensor | None = None
    new_kv: tuple[Tensor, Tensor] | None = None
    modulation: Tensor | None = None

    def select(self, worlds: Tensor) -> BlockContext:
        """The context restricted to a subset of worlds, for computing a block on part of a batch.

        Args:
            worlds: long indices into the batch axis.
        """
        if self.writes_kv:
            raise RuntimeError("a KV-writing pass computes every block for every world")
        if self.c.dim() != 2:
            raise RuntimeError("select works on single-chunk passes, not on sequence passes")

        def pick(x: Tensor | None) -> Tensor | None:
            return x if x is None or x.shape[0] == 1 else x[worlds]

        past = None if self.past is None else KVView(*(pick(t) for t in self.past))
        return replace(
            self,
            c=self.c[worlds],
            action=self.action[worlds],
            past=past,
            modulation=None if self.modulation is None else self.modulation[worlds],
            attn_mask=pick(self.attn_mask),
            new_kv=None,
        )


# ---------------------------------------------------------------------------- blocks


def _per_chunk(x: Tensor, mod: Tensor) -> tuple[Tensor, Tensor]:
    """Views x as (b, t, tokens, d) and mod as (b, t, 1, k): one modulation vector per chunk."""
    b, d = x.shape[0], x.shape[-1]
    chunks = 1 if mod.dim() == 2 else mod.shape[1]
    return x.reshape(b, chunks, -1, d), mod.reshape(b, chunks, 1, mod.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention over the chunk's tokens and the cached past.

    Args:
        width: model width ``d``.
        num_heads: attention heads; ``d / heads`` channels each.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def split_heads(self, x: Tensor) -> Tensor:
        """(b, n, d) tokens -> un-rotated queries, keys and values, (3, b, heads, n, e)."""
        b, n, d = x.shape
        return self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor, ctx: BlockContext) -> Tensor:
        """(b, n, d) tokens -> (b, n, d)."""
        qkv = self.split_heads(x)
        if ctx.writes_kv:
            ctx.new_kv = (qkv[1], qkv[2])
        # Queries and keys are rotated together, in the projections' precision.
        qk, v = apply_rotary(qkv[:2], *ctx.rope.current), qkv[2]
        dtype = attention_dtype()
        if dtype is not None:
            qk, v = qk.to(dtype), v.to(dtype)
        q, k = qk.unbind(0)
        if ctx.past is not None:
            k = torch.cat([ctx.past.k, k], dim=2)
            v = torch.cat([ctx.past.v, v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (b, n, heads * e)
        return self.proj(out if dtype is None else out.to(x.dtype))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-GELU, as in DiT."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d) -> (..., d)."""
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning.

    Args:
        width: model width ``d``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``d``.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, ctx: BlockContext) -> Tensor:
        """x (b, v, f, h, w, d) -> same shape; (b, t, v, f, h, w, d) in sequence mode."""
        tokens, mod = _per_chunk(x, self.modulation(ctx))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        attn_in = modulate(self.norm1(tokens), shift_msa, scale_msa)
        attn_out = self.attn(attn_in.flatten(1, 2), ctx).view_as(tokens)
        tokens = torch.addcmul(tokens, gate_msa, attn_out)
        mlp_out = self.mlp(modulate(self.norm2(tokens), shift_mlp, scale_mlp))
        return torch.addcmul(tokens, gate_mlp, mlp_out).view(x.shape)

    def modulation(self, ctx: BlockContext) -> Tensor:
        """The block's adaLN modulation of ``ctx.c``, (..., 6 d)."""
        return self.adaLN_modulation(ctx.c) if ctx.modulation is None else ctx.modulation

    def keys_values(self, x: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor]:
        """Only the (un-rotated) keys and values this block would write for input ``x``.

        The part of :meth:`forward` up to the key/value projection: what a KV-update pass needs
        from the last block, whose output nothing reads.
        """
        tokens, mod = _per_chunk(x, self.modulation(ctx))
        shift_msa, scale_msa = mod.chunk(6, dim=-1)[:2]
        attn_in = modulate(self.norm1(tokens), shift_msa, scale_msa)
        _, k, v = self.attn.split_heads(attn_in.flatten(1, 2)).unbind(0)
        return k, v


class FinalLayer(nn.Module):
    """adaLN-modulated projection of tokens back to patches of latent channels."""

    def __init__(self, width: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor, modulation: Tensor | None = None) -> Tensor:
        """x (..., h, w, d), c (b, d) or (b, t, d) -> (..., h, w, p*p*c); ``modulation``: the
        adaLN modulation of ``c``, (b, 2 d), where already computed."""
        tokens, mod = _per_chunk(x, self.adaLN_modulation(c) if modulation is None else modulation)
        shift, scale = mod.chunk(2, dim=-1)
        out = self.linear(modulate(self.norm_final(tokens), shift, scale))
        return out.reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------- executors


class BlockExecutor(Protocol):
    """Runs block ``l`` at denoising step ``s``; the seam where X-Cache decides reuse.

    An executor may return ``x + stored_residual`` instead of calling the block, except on passes
    with ``ctx.writes_kv`` (those must call ``block(x, ctx)``; ``CausalDiT.forward`` checks it). To
    compute a block for some worlds only, call ``block(x[worlds], ctx.select(worlds))``.
    """

    def run(self, s: int, l: int, block: DiTBlock, x: Tensor, ctx: BlockContext) -> Tensor:  # noqa: E741
        """Returns the block output for input x (b, v, f, h, w, d)."""
        ...


class FullCompute:
    """The default executor: every block is computed."""

    def run(self, s: int, l: int, block: DiTBlock, x: Tensor, ctx: BlockContext) -> Tensor:  # noqa: E741
        """Returns ``block(x, ctx)``."""
        return block(x, ctx)


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of :class:`CausalDiT`.

    Attributes:
        width: model width ``d``.
        depth: number of DiT blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``d``.
        patch_size: patch side on the latent grid.
        latent_channels: latent channels ``c`` (must match the autoencoder).
        latent_size: latent grid side (8 for 64x64 images and an 8x autoencoder).
        num_cameras: cameras ``v`` per chunk.
        frames_per_chunk: frames ``f`` per chunk.
        action_dim: size of the action vector.
        speed_scale: ego speed in m/s that the condition embedder maps to 1.0.
        rope_fraction: fraction of each head's channels rotated by temporal RoPE; the rest carry
            position-free content, so that matching the same place across time does not depend
            on how long ago it was seen.
        rope_theta: base of the RoPE frequency ladder.
        action_field: add an :class:`ActionField` (per-token action input) to the token
            embeddings, besides the adaLN conditioning every block gets.
    """

    width: int = 256
    depth: int = 8
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 2
    latent_channels: int = 8
    latent_size: int = 8
    num_cameras: int = len(CAMERA_NAMES)
    frames_per_chunk: int = 2
    action_dim: int = 2
    speed_scale: float = 30.0
    rope_fraction: float = 0.5
    rope_theta: float = 100.0
    action_field: bool = False

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.latent_size % self.patch_size:
            raise ValueError(
                f"latent_size {self.latent_size} is not divisible by patch_size {self.patch_size}"
            )
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction must be in [0, 1], got {self.rope_fraction}")

    @property
    def grid_size(self) -> int:
        """Token grid side per camera-frame (``latent_size / patch_size``)."""
        return self.latent_size // self.patch_size

    @property
    def chunk_shape(self) -> tuple[int, int, int, int, int]:
        """Shape (v, f, h, w, c) of one world's chunk latents."""
        size = self.latent_size
        return (self.num_cameras, self.frames_per_chunk, size, size, self.latent_channels)

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens of one chunk: ``v * f * grid_size**2``."""
        return self.num_cameras * self.frames_per_chunk * self.grid_size**2

    @property
    def rope_dims(self) -> int:
        """Channels per head rotated by RoPE (even)."""
        head_dim = self.width // self.num_heads
        return int(head_dim * self.rope_fraction) // 2 * 2


class CausalDiT(nn.Module):
    """Chunk-causal DiT: one denoising evaluation of one chunk for a batch of worlds.

    Args:
        config: architecture.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d, g = config.width, config.grid_size
        self.patch_embed = PatchEmbed(config.patch_size, config.latent_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.cond_embedder = ConditionEmbedder(d, config.action_dim, config.speed_scale)
        self.camera_embed = nn.Parameter(torch.zeros(config.num_cameras, d))
        self.frame_embed = nn.Parameter(torch.zeros(config.frames_per_chunk, d))
        self.spatial_embed = nn.Parameter(torch.zeros(g, g, d))
        self.action_field = ActionField(config) if config.action_field else None
        self.rope = RotaryEmbedding(config.rope_dims, config.rope_theta)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.latent_channels)
        # Frame index of every token of a chunk, in (v f h w) order.
        frame = torch.arange(config.frames_per_chunk)[None, :, None].expand(
            config.num_cameras, -1, g * g
        )
        self.register_buffer("token_frame", frame.flatten(), persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation; the only place where anything is zero-initialised (adaLN-Zero)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for embed in (self.camera_embed, self.frame_embed, self.spatial_embed):
            nn.init.normal_(embed, std=0.02)
        for mlp in (self.t_embedder.mlp, self.cond_embedder.mlp):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as zero velocity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.action_field is not None:
            nn.init.zeros_(self.action_field.weight)

    # ------------------------------------------------------------------ pieces

    def condition(
        self, t: Tensor, action: Tensor, ego_speed: Tensor, embedding: Tensor | None = None
    ) -> Tensor:
        """The adaLN conditioning (b, d): the flow time's embedding plus the action and speed's.

        Args:
            t: (b,) flow time in [0, 1].
            action: (b, 2) action in [-1, 1].
            ego_speed: (b,) ego speed in m/s before the chunk.
            embedding: the action and speed's part (``cond_embedder``), when already computed.
        """
        if embedding is None:
            embedding = self.cond_embedder(action, ego_speed)
        return self.t_embedder(t) + embedding

    def token_offsets(self, action: Tensor, ego_speed: Tensor) -> tuple[Tensor, Tensor | None]:
        """What ``embed`` adds to the patch embeddings: the position embeddings (v, f, h, w, d)
        and the action field's offsets (..., v, f, h, w, d), None for a model without one."""
        pos = (
            self.camera_embed[:, None, None, None]
            + self.frame_embed[None, :, None, None]
            + self.spatial_embed[None, None]
        )
        field = None if self.action_field is None else self.action_field(action, ego_speed)
        return pos, field

    def embed(
        self,
        x: Tensor,
        action: Tensor,
        ego_speed: Tensor,
        offsets: tuple[Tensor, Tensor | None] | None = None,
    ) -> Tensor:
        """Latents (..., v, f, H, W, c) -> tokens (..., v, f, h, w, d) with position embeddings
        (and the action field's offsets, where the model has one; ``action`` (..., 2) and
        ``ego_speed`` (...) share the latents' leading dimensions). ``offsets``: those of
        ``token_offsets(action, ego_speed)``, when already computed."""
        pos, field = self.token_offsets(action, ego_speed) if offsets is None else offsets
        h = self.patch_embed(x) + pos
        if field is not None:
            h = h + field.to(h.dtype)
        return h

    def chunk_inputs(
        self, action: Tensor, ego_speed: Tensor, times: Mapping[int, float] | None = None
    ) -> ChunkInputs:
        """What every pass of a chunk with ``action`` (b, 2) and ``ego_speed`` (b,) shares
        (pass it to ``forward`` and ``commit_kv`` as ``chunk``; each pass computes it
        otherwise).

        With ``times`` (the flow time of each pass by step index: the denoising steps and
        ``KV_UPDATE_STEP`` at 0), every pass's conditioning and every block's adaLN modulation
        of it are computed here too, all passes in one call per block: per pass, those calls
        would read each block's weights once a pass for a row or a few. A pass whose ``t``
        differs from its step's time computes its own. The rows come out of one matrix
        product rather than one per pass, so they may differ from a pass's own in the last
        float bit.
        """
        embedding = self.cond_embedder(action, ego_speed)
        passes = {}
        if times:
            steps = list(times)
            t = embedding.new_tensor([times[s] for s in steps], dtype=torch.float32)
            t = t[:, None].expand(len(steps), action.shape[0])  # (passes, b)
            c = self.t_embedder(t.flatten()).view(*t.shape, -1) + embedding
            modulations = [m(c) for m in self._modulators()]
            passes = {s: PassConditioning(t[i], c[i], tuple(m[i] for m in modulations))
                      for i, s in enumerate(steps)}
        return ChunkInputs(action, ego_speed, embedding, self.token_offsets(action, ego_speed),
                           RotaryTables(self.rope(self.token_frame)), passes)

    def _modulators(self) -> list[nn.Module]:
        """The adaLN modulation of every block, then the final layer's."""
        return [b.adaLN_modulation for b in self.blocks] + [self.final_layer.adaLN_modulation]

    def unpatchify(self, out: Tensor) -> Tensor:
        """(..., v, f, h, w, p*p*c) -> (..., v, f, H, W, c)."""
        p = self.config.patch_size
        return rearrange(out, "... v f h w (p q c) -> ... v f (h p) (w q) c", p=p, q=p)

    def _check_latents(self, x: Tensor, leading: int) -> None:
        expected = self.config.chunk_shape
        if x.dim() != leading + 5 or tuple(x.shape[leading:]) != expected:
            raise ValueError(
                f"CausalDiT expects latents of shape ({'b, t, ' if leading == 2 else 'b, '}"
                f"v, f, h, w, c) with (v, f, h, w, c) = {expected}, got {tuple(x.shape)}"
            )

    def _past_inputs(
        self, kv: RollingKVCache | None, device: torch.device
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """Rotary tables of the cached keys and the key mask, from the cache's slot ages
        (computed once per state of the cache: every pass of a chunk shares them)."""
        if kv is None:
            return None, None
        return kv.derived((self, "past_inputs", device), lambda: self._make_past_inputs(kv, device))

    def _make_past_inputs(
        self, kv: RollingKVCache, device: torch.device
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        meta = kv.ages()
        if meta is None:
            return None, None
        age, valid = (m.to(device) for m in meta)
        frames = self.config.frames_per_chunk
        positions = -age[:, :, None] * frames + self.token_frame  # (b, n, tokens)
        tables = self.rope(positions.flatten(1))
        if bool(valid.all()):
            return tables, None
        tokens = self.config.tokens_per_chunk
        key_valid = torch.cat(
            [valid.repeat_interleave(tokens, dim=1), valid.new_ones(valid.shape[0], tokens)], dim=1
        )
        return tables, key_valid[:, None, None, :]

    def _past_view(
        self, kv: RollingKVCache | None, layer: int, device: torch.device
    ) -> KVView | None:
        """Block ``layer``'s cached past with its keys rotated to their positions, or None; in
        the precision of ``attention_precision`` where one is set.

        The rotation depends only on the cache's state, so it runs once per chunk rather than in
        every pass (the same values; a chunk's passes all read the same past), and for all
        blocks in one operation (the slots' positions are the same in every block;
        elementwise, so each block's values are those of a rotation of its own).
        """
        if kv is None:
            return None
        dtype = attention_dtype()

        def make() -> list[KVView] | None:
            every = kv.view_all()
            if every is None:
                return None
            tables, _ = self._past_inputs(kv, device)
            k, v = apply_rotary(every.k, *tables), every.v
            if dtype is not None:
                k, v = k.to(dtype), v.to(dtype)
            return [every._replace(k=k[l], v=v[l]) for l in range(k.shape[0])]  # noqa: E741

        views = kv.derived((self, "past", device, dtype), make)
        return None if views is None else views[layer]

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        action: Tensor,
        ego_speed: Tensor,
        kv: RollingKVCache | None = None,
        step: int = 0,
        writes_kv: bool = False,
        executor: BlockExecutor | None = None,
        chunk: ChunkInputs | None = None,
    ) -> Tensor:
        """One denoising evaluation of one chunk for a batch of worlds.

        The chunk attends to itself (all cameras and frames) and to the past chunks held by
        ``kv``. The cache is only read, except that with ``writes_kv`` the chunk's keys and values
        are committed to it after the pass (the engine's KV-update pass is :meth:`commit_kv`,
        which commits the same cache with less work).

        Args:
            x: (b, v, f, h, w, c) noisy latents of the chunk.
            t: (b,) flow time in [0, 1] (1 = pure noise).
            action: (b, 2) action of the chunk, in [-1, 1].
            ego_speed: (b,) ego speed in m/s before the chunk.
            kv: past keys/values of the ``b`` worlds, or None for no past.
            step: denoising step index ``s``, passed to the executor.
            writes_kv: commit this chunk's keys and values to ``kv``.
            executor: runs each block; :class:`FullCompute` when None.
            chunk: ``chunk_inputs(action, ego_speed)``, when already computed.

        Returns:
            (b, v, f, h, w, c) predicted velocity ``noise - x0``.
        """
        if writes_kv and kv is None:
            raise ValueError("writes_kv=True needs a kv cache to write to")
        h, base, modulations = self._pass_inputs(x, t, action, ego_speed, kv, step, writes_kv,
                                                 chunk)
        executor = FullCompute() if executor is None else executor
        keys, values = [], []
        for l, block in enumerate(self.blocks):  # noqa: E741
            ctx = replace(base, past=self._past_view(kv, l, h.device), modulation=modulations[l])
            h = executor.run(step, l, block, h, ctx)
            if writes_kv:
                if ctx.new_kv is None:
                    raise RuntimeError(
                        f"executor {type(executor).__name__} did not compute block {l} on a "
                        "KV-writing pass; such passes must compute every block"
                    )
                keys.append(ctx.new_kv[0])
                values.append(ctx.new_kv[1])
        out = self.unpatchify(self.final_layer(h, base.c, modulations[-1]))
        if writes_kv:
            kv.commit(keys, values)
        return out

    def _pass_inputs(
        self,
        x: Tensor,
        t: Tensor,
        action: Tensor,
        ego_speed: Tensor,
        kv: RollingKVCache | None,
        step: int,
        writes_kv: bool,
        chunk: ChunkInputs | None,
    ) -> tuple[Tensor, BlockContext, tuple[Tensor | None, ...]]:
        """Checks one chunk's pass and returns its embedded tokens, the block context every
        block shares (``past`` left empty: each block reads its own view of ``kv``) and the
        adaLN modulation of every block, then of the final layer, where ``chunk`` holds them
        (Nones otherwise: each computes its own)."""
        self._check_latents(x, leading=1)
        if kv is not None and kv.batch_size != x.shape[0]:
            raise ValueError(f"kv cache holds {kv.batch_size} worlds, latents {x.shape[0]}")
        if chunk is None:
            chunk = self.chunk_inputs(action, ego_speed)
        elif chunk.action is not action or chunk.ego_speed is not ego_speed:
            raise ValueError("chunk holds the inputs of another action or ego speed tensor")
        known = chunk.passes.get(step)
        if known is not None and torch.equal(known.t, t):
            c, modulations = known.c, known.modulations
        else:
            c = self.condition(t, action, ego_speed, chunk.embedding)
            modulations = (None,) * (len(self.blocks) + 1)
        h = self.embed(x, action, ego_speed, chunk.offsets)
        _, attn_mask = self._past_inputs(kv, h.device)
        base = BlockContext(c=c, action=action, step=step, writes_kv=writes_kv, past=None,
                            rope=chunk.rope, attn_mask=attn_mask)
        return h, base, modulations

    def commit_kv(
        self,
        x: Tensor,
        action: Tensor,
        ego_speed: Tensor,
        kv: RollingKVCache,
        chunk: ChunkInputs | None = None,
    ) -> None:
        """The KV-update pass: commits the keys and values of the clean chunk ``x`` to ``kv``.

        Every block that feeds a later block is computed in full (X-Cache guardrail 1: this pass
        never reuses anything). The pass's velocity output is never read, so the last block stops
        after its key/value projection and the final layer is skipped; the committed cache is the
        one ``forward(x, 0, ..., writes_kv=True)`` would commit.

        Args:
            x: (b, v, f, h, w, c) clean latents of the chunk (flow time ``t = 0``).
            action: (b, 2) the chunk's action.
            ego_speed: (b,) ego speed in m/s before the chunk.
            kv: the cache of the ``b`` worlds, written to.
            chunk: ``chunk_inputs(action, ego_speed)``, when already computed.
        """
        h, base, modulations = self._pass_inputs(x, x.new_zeros(x.shape[0]), action, ego_speed,
                                                 kv, step=KV_UPDATE_STEP, writes_kv=True,
                                                 chunk=chunk)
        keys, values = [], []
        last = len(self.blocks) - 1
        for l, block in enumerate(self.blocks):  # noqa: E741
            ctx = replace(base, past=self._past_view(kv, l, h.device), modulation=modulations[l])
            if l == last:
                k, v = block.keys_values(h, ctx)
            else:
                h = block(h, ctx)
                k, v = ctx.new_kv
            keys.append(k)
            values.append(v)
        kv.commit(keys, values)

    def forward_sequence(
        self,
        clean: Tensor,
        action: Tensor,
        ego_speed: Tensor,
        window: int | None = None,
        noisy: Tensor | None = None,
        t: Tensor | None = None,
    ) -> Tensor:
        """Block-causal pass over a whole sequence of chunks with one attention mask.

        The reference for the cached chunk loop, and a teacher-forcing training forward. Chunk
        ``i`` attends to itself and to the clean chunks ``max(0, i - window) .. i - 1`` (all
        earlier chunks when ``window`` is None), exactly what the engine's chunk loop with a
        ``RollingKVCache(window)`` without sink sees. With a sink the two agree while no chunk has
        been evicted (``t <= window + 1`` chunks).

        Args:
            clean: (b, t, v, f, h, w, c) clean latents of ``t`` consecutive chunks.
            action: (b, t, 2) action of each chunk.
            ego_speed: (b, t) ego speed before each chunk.
            window: past chunks visible to each chunk, or None for all.
            noisy: optional (b, t, v, f, h, w, c) noisy versions of the chunks.
            t: (b, t) flow time of ``noisy``; required with it.

        Returns:
            Without ``noisy``: (b, t, v, f, h, w, c), the output of each clean chunk at ``t = 0``
            (the KV-update pass). With ``noisy``: the output for each noisy chunk ``i``, which
            attends to clean chunks before ``i`` and to itself (a denoising pass).
        """
        self._check_latents(clean, leading=2)
        b, n = clean.shape[:2]
        chunk = torch.arange(n, device=clean.device)
        times = clean.new_zeros(b, n)
        is_noisy = torch.zeros(n, dtype=torch.bool, device=clean.device)
        if noisy is not None:
            self._check_latents(noisy, leading=2)
            if t is None or t.shape != (b, n):
                raise ValueError(f"forward_sequence with noisy chunks needs t of shape {(b, n)}")
            clean = torch.cat([clean, noisy], dim=1)
            times = torch.cat([times, t.to(times.dtype)], dim=1)
            action = torch.cat([action, action], dim=1)
            ego_speed = torch.cat([ego_speed, ego_speed], dim=1)
            chunk = chunk.repeat(2)
            is_noisy = torch.cat([is_noisy, ~is_noisy])
        g = clean.shape[1]
        c = self.condition(times.flatten(), action.flatten(0, 1), ego_speed.flatten())
        c = c.view(b, g, -1)

        # Chunk-level mask, query chunk (rows) x key chunk (columns).
        span = n if window is None else window
        qi, kj = chunk[:, None], chunk[None, :]
        visible = (kj >= qi - span) & torch.where(is_noisy[:, None], kj < qi, kj <= qi)
        visible = (visible & ~is_noisy[None, :]) | torch.eye(g, dtype=torch.bool, device=c.device)
        tokens = self.config.tokens_per_chunk
        mask = visible.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
        positions = (chunk[:, None] * self.config.frames_per_chunk + self.token_frame).flatten()
        rope = RotaryTables(self.rope(positions))

        h = self.embed(clean, action, ego_speed)
        for block in self.blocks:
            ctx = BlockContext(
                c=c, action=action, step=0, writes_kv=False, past=None, rope=rope, attn_mask=mask
            )
            h = block(h, ctx)
        out = self.unpatchify(self.final_layer(h, c))
        return out[:, n:] if noisy is not None else out


# ---------------------------------------------------------------------------- presets

PRESETS: dict[str, DiTConfig] = {
    "test": DiTConfig(width=64, depth=2, num_heads=2),
    "tiny": DiTConfig(width=256, depth=8, num_heads=4),
    "small": DiTConfig(width=384, depth=12, num_heads=6),
    "base": DiTConfig(width=768, depth=12, num_heads=12),
}


def dit_config(preset: str = "tiny", **overrides: object) -> DiTConfig:
    """The config of a named preset, with some fields replaced.

    Args:
        preset: one of ``PRESETS``.
        **overrides: DiTConfig fields to change.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown DiT preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(DiTConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown DiTConfig fields {sorted(unknown)}; known: {sorted(known)}")
    return replace(PRESETS[preset], **overrides)
