"""The chunk loop of the world model for a batch of worlds.

``WorldModelEngine.step_chunk`` is one step of every world::

    noise (per-world seeded generators)
      -> S denoising passes of the DiT      (KV cache read only; blocks run by ``engine.executor``)
      -> KV-update pass on the clean chunk  (t = 0; writes the KV cache; always full compute)
      -> decode latents to 7 camera images  (in ``decode_dtype``; nothing reads the images back)
      -> heads: ego state, collision / off-road probabilities

The networks are pure; the engine owns the state between chunks: the rolling KV cache, the
per-world random generators and the ego speed that conditions the next chunk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from xworld_env.model.autoencoder import Autoencoder, to_uint8
from xworld_env.model.checkpoint import WorldModelBundle
from xworld_env.model.dit import (
    KV_UPDATE_STEP,
    BlockExecutor,
    CausalDiT,
    ChunkInputs,
    FullCompute,
    attention_precision,
)
from xworld_env.model.heads import Heads
from xworld_env.model.kv_cache import KVCacheConfig, RollingKVCache
from xworld_env.model.quantize import (
    ActivationRanges,
    check_int8_device,
    dit_pass,
    int8_blocks,
    quantize_blocks,
    record_ranges,
)
from xworld_env.model.sampler import FlowSampler, SamplerConfig, draw_noise
from xworld_env.types import EGO_FIELDS

NOISE_MODES = ("fresh", "fixed")
DECODE_MODES = ("all", "last")
#: Compute precisions of the DiT and the decoder (weights stay float32; lower precisions run
#: under ``torch.autocast``: matrix products and convolutions in that precision, the residual
#: stream, norms and the sampler in float32).
COMPUTE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
#: Precisions of the DiT: a compute precision, or ``int8`` (CPU only: the blocks' token-wise
#: linear layers in int8 on calibrated input grids, everything else and the decoder as float32;
#: ``xworld_env.model.quantize``).
DIT_DTYPES = (*COMPUTE_DTYPES, "int8")


def float_dtype(dtype: str) -> str:
    """The compute precision of everything but int8's quantized layers: ``dtype`` itself, or
    float32 for ``int8``."""
    return "float32" if dtype == "int8" else dtype


#: Where a world's ego speed comes from after each chunk (``EngineConfig.speed``).
SPEED_SOURCES = ("heads", "kinematic")


#: Decoder precisions: a compute precision, or ``auto`` (see ``resolve_decode_dtype``).
DECODE_DTYPES = ("auto", *COMPUTE_DTYPES)
#: CPU feature flags (Linux ``/proc/cpuinfo``) of native bfloat16 matrix arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def autocast_to(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast on ``device`` to ``dtype`` (one of ``DIT_DTYPES``). For float32 and int8 (whose
    quantized layers do not autocast), autocast off: no change on its own, and float32 again
    inside a lower-precision region."""
    target = COMPUTE_DTYPES[float_dtype(dtype)]
    return torch.autocast(device.type, dtype=target, enabled=target != torch.float32)


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no such file)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether ``device`` does bfloat16 matrix arithmetic in hardware (CPU: AMX or
    AVX512-BF16, read from ``flags``, default the running CPU's; CUDA: as torch reports)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_decode_dtype(
    decode_dtype: str, dtype: str, device: torch.device, flags: frozenset[str] | None = None
) -> str:
    """The decoder's precision: ``decode_dtype`` itself unless it is ``"auto"``, which means
    ``bfloat16`` where the DiT computes in float32 or int8 on a device with native bfloat16
    arithmetic (``native_bfloat16``), the DiT's precision ``dtype`` otherwise (float32 for
    int8)."""
    if decode_dtype != "auto":
        return decode_dtype
    dtype = float_dtype(dtype)
    if dtype == "float32" and native_bfloat16(device, flags):
        return "bfloat16"
    return dtype


#: Attention precisions: ``auto`` (see ``resolve_attention_dtype``) or a precision of the
#: attention products in a float32 or int8 DiT.
ATTENTION_DTYPES = ("auto", "float32", "bfloat16")


def resolve_attention_dtype(
    attention_dtype: str, dtype: str, device: torch.device, flags: frozenset[str] | None = None
) -> str:
    """The precision of the DiT's attention products: ``attention_dtype`` itself unless it is
    ``"auto"``, which means ``bfloat16`` for an int8 DiT on a device with native bfloat16
    arithmetic (``native_bfloat16``), the DiT's precision ``dtype`` otherwise (float32 for
    int8)."""
    if attention_dtype != "auto":
        return attention_dtype
    if dtype == "int8" and native_bfloat16(device, flags):
        return "bfloat16"
    return float_dtype(dtype)


_SPEED = EGO_FIELDS.index("speed")
_STAT_KEYS = ("prime_s", "dit_s", "kv_update_s", "decode_s", "heads_s")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of :class:`WorldModelEngine`.

    Attributes:
        sampler: denoising steps and schedule.
        kv_cache: window and sink of the rolling KV cache.
        noise: ``"fresh"`` draws new noise for every chunk; ``"fixed"`` draws each world's
            starting and re-noising noise once per episode and uses it for every chunk, so that
            consecutive chunks differ only where the world changes (each chunk's noise is still
            standard normal; successive chunks share it). What X-Cache needs to reuse; on the
            shipped model it also lets a world under steady actions settle into a still scene
            (docs/performance.md, "Motion").
        dtype: compute precision of the DiT and the decoder, one of ``DIT_DTYPES``.
            On a CPU with AMX, ``bfloat16`` made full-compute env steps 1.5x (one world) to 2x
            (16 worlds) faster; on CPUs without AMX or AVX512-BF16 it is slower than ``float32``.
            ``int8`` (CPU only) runs the DiT blocks' token-wise linear layers in int8
            (``xworld_env.model.quantize``) and the rest of the DiT in float32, with the
            decoder as for float32; its rollouts differ from float32's by its rounding
            (docs/performance.md, "int8"). An int8 engine needs the activation ranges of a
            calibration (``calibrate_int8``).
        decode_dtype: precision of the decoder that turns latents into camera images, a key of
            ``COMPUTE_DTYPES`` or ``"auto"`` (``resolve_decode_dtype``: bfloat16 on hardware
            with native bfloat16 arithmetic, else ``dtype``). The images are only observed:
            the KV cache, the heads and every later chunk read the latents, so the decoder's
            precision changes the pixels (54 dB PSNR between bfloat16 and float32 decoding on
            the shipped model) and never the rollout.
        attention_dtype: precision of the attention products (queries against keys, weights
            against values) in a float32 or int8 DiT, one of ``ATTENTION_DTYPES``; ``"auto"``
            (``resolve_attention_dtype``) is bfloat16 for int8 on hardware with native bfloat16
            arithmetic, where it runs attention about twice as fast as float32, and the DiT's
            own precision otherwise. The projections, residual stream and KV cache keep the
            DiT's precision (``dit.attention_precision``). Under ``bfloat16`` or ``float16``
            autocast attention runs in that precision; leave it ``"auto"`` there.
        speed: where each world's ego speed comes from after a chunk (what conditions the next
            chunk, and what the envs observe and reward): ``"heads"`` reads it from the chunk's
            latents with the speed head; ``"kinematic"`` integrates the chunk's acceleration
            action with the simulator's vehicle model (``kinematic_speed``), as the DiT saw it
            in training, where every chunk is conditioned on the simulator's own speed.
        speed_gain: m/s that a chunk at full throttle adds (the simulator's maximum
            acceleration times its control period: 5 m/s² × 0.5 s), for ``"kinematic"``.
        max_speed: m/s the kinematic speed is held at or below (the simulator's vehicles').
    """

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)
    noise: str = "fresh"
    dtype: str = "float32"
    decode_dtype: str = "auto"
    attention_dtype: str = "auto"
    speed: str = "heads"
    speed_gain: float = 2.5
    max_speed: float = 40.0

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.dtype not in DIT_DTYPES:
            raise ValueError(f"dtype must be one of {list(DIT_DTYPES)}, got {self.dtype!r}")
        if self.decode_dtype not in DECODE_DTYPES:
            raise ValueError(
                f"decode_dtype must be one of {list(DECODE_DTYPES)}, got {self.decode_dtype!r}"
            )
        if self.attention_dtype not in ATTENTION_DTYPES:
            raise ValueError(f"attention_dtype must be one of {list(ATTENTION_DTYPES)}, got "
                             f"{self.attention_dtype!r}")
        if self.attention_dtype != "auto" and float_dtype(self.dtype) != "float32":
            raise ValueError(
                f"attention_dtype {self.attention_dtype!r} applies to float32 and int8 DiTs; "
                f"under dtype {self.dtype!r} attention runs in {self.dtype} (use 'auto')"
            )
        if self.speed not in SPEED_SOURCES:
            raise ValueError(f"speed must be one of {SPEED_SOURCES}, got {self.speed!r}")
        if not (self.speed_gain > 0 and self.max_speed > 0):
            raise ValueError(
                f"speed_gain and max_speed must be positive m/s, got {self.speed_gain} and "
                f"{self.max_speed}"
            )


def kinematic_speed(speed: Tensor, throttle: Tensor, gain: float, max_speed: float) -> Tensor:
    """The ego speed after one chunk of the simulator's longitudinal vehicle model: the
    acceleration action (in [-1, 1]) times ``gain`` added to ``speed``, braking stopping the car
    rather than reversing it, and held at or below ``max_speed`` (all m/s)."""
    return (speed + gain * throttle).clamp(0.0, max_speed)


@dataclass
class ChunkOutput:
    """What one chunk step produces for every world.

    Attributes:
        frames: (b, f, v, H, W, 3) uint8 camera images, cameras ordered as ``CAMERA_NAMES``
            (f = 1, the chunk's last frame, when ``step_chunk`` was asked to decode only it).
        latents: (b, v, f, h, w, c) clean latents of the chunk.
        ego: (b, 3) ego state at the chunk's last frame, ordered as ``EGO_FIELDS`` (the speed
            from ``EngineConfig.speed``'s source).
        speed_read: (b,) the speed the heads read from the chunk (``ego``'s speed where
            ``EngineConfig.speed`` is ``"heads"``).
        collision_prob: (b,) probability of a collision during the chunk.
        off_road_prob: (b,) probability of being off the road.
    """

    frames: Tensor
    latents: Tensor
    ego: Tensor
    collision_prob: Tensor
    off_road_prob: Tensor
    speed_read: Tensor


class WorldModelEngine:
    """Runs the world model chunk by chunk for a batch of ``b`` independent worlds.

    Each world has its own random generator and its own KV-cache history, so a world's rollout
    depends only on its seed, context and actions: resetting one world leaves the others exactly
    as they were.

    Conditioning convention: chunk ``n`` is generated with the action applied for it and the ego
    speed at the end of chunk ``n - 1`` (the speed of the first context chunk for itself).

    Attributes:
        executor: runs the DiT blocks of the denoising passes (full compute by default; X-Cache
            plugs in here). If it has a ``reset(worlds)`` method, the engine calls it whenever
            worlds are reset or started (``None`` = all worlds); if it has
            ``begin_chunk(batch_size, num_blocks)``, the engine calls it before the denoising
            passes of every chunk.
        stats: cumulative wall-clock seconds per stage (``prime_s``, ``dit_s``, ``kv_update_s``,
            ``decode_s``, ``heads_s``) and the number of chunk steps (``chunks``).

    Args:
        config: sampler and KV-cache settings.
        autoencoder: frozen image autoencoder.
        dit: the causal DiT.
        heads: ego-state and event heads.
        int8_ranges: for ``dtype="int8"``, the input ranges of the DiT's quantized layers
            (``calibrate_int8``); unused otherwise.
    """

    def __init__(
        self,
        config: EngineConfig,
        autoencoder: Autoencoder,
        dit: CausalDiT,
        heads: Heads,
        int8_ranges: ActivationRanges | None = None,
    ) -> None:
        ae = autoencoder.config
        ae_latent = (ae.latent_size, ae.latent_size, ae.latent_channels)
        chunk = dit.config.chunk_shape
        if ae_latent != chunk[2:] or heads.config.chunk_shape != chunk:
            raise ValueError(
                f"the networks disagree on chunk latents: autoencoder (h, w, c) = {ae_latent}, "
                f"DiT (v, f, h, w, c) = {chunk}, heads {heads.config.chunk_shape}"
            )
        if config.dtype == "int8" and int8_ranges is None:
            raise ValueError(
                "dtype 'int8' needs the activation ranges of a float32 calibration: "
                "int8_ranges=calibrate_int8(...) (load_runtime calibrates on the scenario bank)"
            )
        self.config = config
        self.autoencoder = autoencoder.eval()
        self.dit = quantize_blocks(dit, int8_ranges) if config.dtype == "int8" else dit.eval()
        self.heads = heads.eval()
        self.sampler = FlowSampler(config.sampler)
        #: The flow time of every pass of a chunk by step index: the sampler's steps, and the
        #: KV-update pass on the clean chunk (``KV_UPDATE_STEP``) at 0.
        times = self.sampler.timesteps().tolist()
        self.pass_times = {s: times[s] for s in range(self.sampler.num_steps)}
        self.pass_times[KV_UPDATE_STEP] = 0.0
        self.executor: BlockExecutor = FullCompute()
        self.stats: dict[str, float] = {}
        self.reset_stats()
        self.kv: RollingKVCache | None = None
        self._generators: list[torch.Generator] = []
        self._speed = torch.zeros(0)
        self._started = torch.zeros(0, dtype=torch.bool)
        self._fixed: Tensor | None = None
        self.decode_dtype = resolve_decode_dtype(config.decode_dtype, config.dtype, self.device)
        self._decoders: dict[str, nn.Module] = {}
        self.attention_dtype = resolve_attention_dtype(config.attention_dtype, config.dtype,
                                                       self.device)

    @classmethod
    def from_bundle(
        cls,
        config: EngineConfig,
        bundle: WorldModelBundle,
        int8_ranges: ActivationRanges | None = None,
    ) -> WorldModelEngine:
        """An engine over the networks of a loaded checkpoint."""
        return cls(config, bundle.autoencoder, bundle.dit, bundle.heads, int8_ranges)

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """Device of the DiT's weights."""
        return next(self.dit.parameters()).device

    @property
    def batch_size(self) -> int:
        """Number of worlds ``b`` (0 before the first :meth:`start`)."""
        return len(self._generators)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape (v, f, h, w, c) of one world's chunk latents."""
        return self.dit.config.chunk_shape

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape (f, v, H, W, 3) of one world's chunk images."""
        cfg, size = self.dit.config, self.autoencoder.config.image_size
        return (cfg.frames_per_chunk, cfg.num_cameras, size, size, 3)

    def reset_stats(self) -> None:
        """Zeroes the timing statistics."""
        self.stats = dict.fromkeys(_STAT_KEYS, 0.0) | {"chunks": 0}

    # ------------------------------------------------------------------ starting and resetting

    def encode(self, frames: Tensor | np.ndarray) -> Tensor:
        """uint8 images (..., f, v, H, W, 3) -> latents (..., v, f, h, w, c) in DiT layout."""
        frames = torch.as_tensor(frames, device=self.device)
        with self._compute():
            latents = self.autoencoder.encode(frames).float()
        return rearrange(latents, "... f v h w c -> ... v f h w c")

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (b, v, f, h, w, c) -> uint8 images (b, f, v, H, W, 3) in ``decode_dtype``."""
        with torch.no_grad(), autocast_to(self.device, self.decode_dtype):
            images = self.autoencoder.decode(latents, self._decoder()).float()
        return rearrange(to_uint8(images), "b v f h w c -> b f v h w c")

    def _decoder(self) -> nn.Module | None:
        """The decoder copy ``decode`` runs in a lower ``decode_dtype`` (the autoencoder's
        ``inference_decoder``, made on first use), or None for float32: the decoder itself."""
        if self.decode_dtype == "float32":
            return None
        if self.decode_dtype not in self._decoders:
            dtype = COMPUTE_DTYPES[self.decode_dtype]
            self._decoders[self.decode_dtype] = self.autoencoder.inference_decoder(dtype)
        return self._decoders[self.decode_dtype]

    def start(
        self,
        context: Tensor | np.ndarray,
        actions: Tensor | np.ndarray,
        ego: Tensor | np.ndarray,
        seeds: Sequence[int | torch.Generator],
        worlds: Sequence[int] | Tensor | None = None,
    ) -> None:
        """Starts episodes: primes the KV cache with context chunks and seeds the generators.

        Each context chunk is committed with a full-compute KV-update pass at ``t = 0``.

        Args:
            context: ``C >= 1`` context chunks per world: uint8 frames (n, C, f, v, H, W, 3), or
                float latents (n, C, v, f, h, w, c) already in DiT layout.
            actions: (n, C, 2) the action of each context chunk.
            ego: (n, C, 3) ego state at each context chunk, ordered as ``EGO_FIELDS``.
            seeds: n seeds (or generators), one per world, for all of its noise from now on.
            worlds: indices of the ``n`` worlds to (re)start while the others go on; None starts
                a fresh batch of ``b = n`` worlds.
        """
        latents, actions, ego = self._check_context(context, actions, ego)
        n = latents.shape[0]
        if len(seeds) != n:
            raise ValueError(f"start needs one seed per world: {n}, got {len(seeds)}")
        if worlds is None:
            index = torch.arange(n)
        else:
            if self.kv is None:
                raise RuntimeError("start(worlds=...) needs a batch started with worlds=None first")
            index = torch.as_tensor(worlds, dtype=torch.long).flatten()
            if len(index) != n or len(set(index.tolist())) != n:
                raise ValueError(f"worlds must be {n} distinct indices, got {worlds}")
            if index.min() < 0 or index.max() >= self.batch_size:
                raise IndexError(f"world indices must be in [0, {self.batch_size}), got {worlds}")

        started = time.perf_counter()
        kv = RollingKVCache(self.config.kv_cache, self.dit.config.depth, n)
        speed = ego[:, 0, 0]
        with self._compute():
            for k in range(latents.shape[1]):
                self._commit(latents[:, k], actions[:, k], speed, kv)
                speed = ego[:, k, 0]
        self._sync()
        self.stats["prime_s"] += time.perf_counter() - started

        generators = [self._generator(seed) for seed in seeds]
        fixed = self._draw_fixed(generators) if self.config.noise == "fixed" else None
        if worlds is None:
            self._fixed = fixed
            self.kv, self._generators = kv, generators
            self._speed = speed.clone()
            self._started = torch.ones(n, dtype=torch.bool)
        else:
            self.kv.replace(index, kv)
            for i, g in zip(index.tolist(), generators, strict=True):
                self._generators[i] = g
            if fixed is not None:
                self._fixed[:, index] = fixed
            self._speed[index] = speed
            self._started[index] = True
        self._reset_executor(None if worlds is None else index)

    def reset_worlds(self, worlds: Sequence[int] | Tensor) -> None:
        """Ends the episodes of some worlds; they must be started again before the next step."""
        if self.kv is None:
            raise RuntimeError("reset_worlds before start")
        index = torch.as_tensor(worlds, dtype=torch.long).flatten()
        self.kv.reset(index)
        self._started[index] = False
        self._reset_executor(index)

    # ------------------------------------------------------------------ stepping

    def step_chunk(self, actions: Tensor | np.ndarray, decode: str = "all") -> ChunkOutput:
        """Generates the next chunk of every world.

        Args:
            actions: (b, 2) action of each world for this chunk, in [-1, 1].
            decode: which frames to decode to images: ``"all"`` of the chunk, or only the
                ``"last"`` one (what an env observes; decoding is about a fifth of a chunk's
                time per frame).

        Returns:
            The chunk's frames, latents, ego state and event probabilities.
        """
        if self.kv is None:
            raise RuntimeError("step_chunk before start")
        if not bool(self._started.all()):
            idle = (~self._started).nonzero().flatten().tolist()
            raise RuntimeError(f"worlds {idle} were reset and not started again")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        action = self._check_actions(actions)
        b, kv, dit = self.batch_size, self.kv, self.dit
        speed = self._speed

        begin_chunk = getattr(self.executor, "begin_chunk", None)
        if callable(begin_chunk):
            begin_chunk(b, dit.config.depth)
        with self._compute():
            t0 = time.perf_counter()
            if self._fixed is not None:
                noise, renoise = self._fixed[0], list(self._fixed[1:])
            else:
                noise, renoise = draw_noise(self.latent_shape, self._generators, self.device), None

            # What every pass's inputs share, and every pass's conditioning, computed once.
            chunk = dit.chunk_inputs(action, speed, self.pass_times)

            def denoise(x: Tensor, t: Tensor, s: int) -> Tensor:
                with dit_pass(s):
                    return dit(x, t, action, speed, kv=kv, step=s, executor=self.executor,
                               chunk=chunk)

            x0 = self.sampler.sample(denoise, noise, self._generators, renoise)
            t1 = self._sync()
            # KV-update protection: the committed chunk is attended to by every later chunk, so
            # it is always computed in full whatever executor is set (X-Cache guardrail 1);
            # only the work whose result nothing reads (last block after its K/V) is left out.
            self._commit(x0, action, speed, kv, chunk)
            t2 = self._sync()
            frames = self.decode(x0 if decode == "all" else x0[:, :, -1:])
            t3 = self._sync()
        with torch.no_grad():
            out = self.heads(x0)
            t4 = self._sync()

        ego, read = out.ego, out.ego[:, _SPEED].clone()
        if self.config.speed == "kinematic":
            ego = ego.clone()
            ego[:, _SPEED] = kinematic_speed(speed.to(ego.dtype), action[:, 0].to(ego.dtype),
                                             self.config.speed_gain, self.config.max_speed)
        self._speed = ego[:, _SPEED].clone()
        for key, seconds in zip(_STAT_KEYS[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.stats[key] += seconds
        self.stats["chunks"] += 1
        return ChunkOutput(
            frames=frames,
            latents=x0,
            ego=ego,
            collision_prob=torch.sigmoid(out.collision_logit),
            off_road_prob=torch.sigmoid(out.off_road_logit),
            speed_read=read,
        )

    # ------------------------------------------------------------------ helpers

    def _commit(self, x: Tensor, action: Tensor, speed: Tensor, kv: RollingKVCache,
                chunk: ChunkInputs | None = None) -> None:
        """The KV-update pass of clean chunk ``x`` (``CausalDiT.commit_kv``)."""
        with dit_pass(KV_UPDATE_STEP):
            self.dit.commit_kv(x, action, speed, kv, chunk)

    def _compute(self) -> contextlib.AbstractContextManager:
        """No gradients, autocast to the configured compute precision, and the marks of int8
        blocks and of attention's precision where they apply."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast_to(self.device, self.config.dtype))
        if self.config.dtype == "int8":
            stack.enter_context(int8_blocks())
        if self.attention_dtype != float_dtype(self.config.dtype):
            stack.enter_context(attention_precision(COMPUTE_DTYPES[self.attention_dtype]))
        return stack

    def _draw_fixed(self, generators: list[torch.Generator]) -> Tensor:
        """(S, n, v, f, h, w, c): each world's starting noise and its S - 1 re-noisings."""
        return torch.stack([draw_noise(self.latent_shape, generators, self.device)
                            for _ in range(self.sampler.num_steps)])

    def _generator(self, seed: int | torch.Generator) -> torch.Generator:
        if isinstance(seed, torch.Generator):
            return seed
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _reset_executor(self, worlds: Tensor | None) -> None:
        reset = getattr(self.executor, "reset", None)
        if callable(reset):
            reset(worlds)

    def _sync(self) -> float:
        # CUDA kernels run asynchronously; without a sync the stage timings would be wrong.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _check_actions(self, actions: Tensor | np.ndarray) -> Tensor:
        action = torch.as_tensor(actions, device=self.device, dtype=torch.float32)
        if action.shape != (self.batch_size, self.dit.config.action_dim):
            raise ValueError(
                f"actions must have shape {(self.batch_size, self.dit.config.action_dim)}, "
                f"got {tuple(action.shape)}"
            )
        if not bool(torch.isfinite(action).all()):
            raise ValueError("actions must be finite")
        return action

    def _check_context(
        self, context: Tensor | np.ndarray, actions: Tensor | np.ndarray, ego: Tensor | np.ndarray
    ) -> tuple[Tensor, Tensor, Tensor]:
        context = torch.as_tensor(context, device=self.device)
        if context.dtype == torch.uint8:
            if context.dim() != 7 or tuple(context.shape[2:]) != self.frame_shape:
                raise ValueError(
                    f"context frames must be uint8 (n, C, f, v, H, W, 3) with (f, v, H, W, 3) = "
                    f"{self.frame_shape}, got {tuple(context.shape)}"
                )
            latents = self.encode(context)
        elif context.is_floating_point():
            if context.dim() != 7 or tuple(context.shape[2:]) != self.latent_shape:
                raise ValueError(
                    f"context latents must be float (n, C, v, f, h, w, c) with (v, f, h, w, c) = "
                    f"{self.latent_shape}, got {tuple(context.shape)}"
                )
            latents = context.float()
        else:
            raise ValueError(f"context must be uint8 frames or float latents, got {context.dtype}")
        n, chunks = latents.shape[:2]
        if chunks < 1:
            raise ValueError("start needs at least one context chunk")
        actions = torch.as_tensor(actions, device=self.device, dtype=torch.float32)
        ego = torch.as_tensor(ego, device=self.device, dtype=torch.float32)
        action_dim = self.dit.config.action_dim
        if actions.shape != (n, chunks, action_dim):
            raise ValueError(
                f"context actions must have shape {(n, chunks, action_dim)}, "
                f"got {tuple(actions.shape)}"
            )
        if ego.shape != (n, chunks, len(EGO_FIELDS)):
            raise ValueError(
                f"context ego must have shape {(n, chunks, len(EGO_FIELDS))}, "
                f"got {tuple(ego.shape)}"
            )
        if not (bool(torch.isfinite(actions).all()) and bool(torch.isfinite(ego).all())):
            raise ValueError("context actions and ego state must be finite")
        return latents, actions, ego


#: Chunks each calibration world runs after its context (``calibrate_int8``).
CALIBRATION_CHUNKS = 2


def calibrate_int8(
    config: EngineConfig,
    bundle: WorldModelBundle,
    context: Tensor | np.ndarray,
    actions: Tensor | np.ndarray,
    ego: Tensor | np.ndarray,
    chunks: int = CALIBRATION_CHUNKS,
) -> ActivationRanges:
    """The input ranges of the DiT's int8 layers in every pass, recorded on float32 runs.

    Each of the ``n`` contexts starts a world (seed = its index), which then runs ``chunks``
    chunks under its last context action, in float32 with ``config``'s other settings; the
    ranges are what ``WorldModelEngine(..., int8_ranges=...)`` takes. Deterministic: the same
    contexts give the same ranges.

    Args:
        config: the engine settings the int8 engine will run with.
        bundle: the networks (left as they were).
        context, actions, ego: as ``WorldModelEngine.start`` takes them, ``n`` worlds.
        chunks: chunks to run after the context, >= 1.
    """
    if chunks < 1:
        raise ValueError(f"calibration needs at least one chunk, got {chunks}")
    check_int8_device(next(bundle.dit.parameters()).device)  # before the float32 runs
    engine = WorldModelEngine.from_bundle(replace(config, dtype="float32"), bundle)
    with record_ranges(engine.dit) as ranges:
        engine.start(context, actions, ego, seeds=list(range(len(context))))
        held = torch.as_tensor(actions, dtype=torch.float32)[:, -1]
        for _ in range(chunks):
            engine.step_chunk(held, decode="last")
    return ranges
