"""``xworld train world-model``: the causal DiT on latents of the frozen autoencoder.

The autoencoder encodes every chunk of the dataset once; the DiT then trains with teacher
forcing on windows of consecutive chunks: every chunk of a window is noised to its own flow time
and predicts its velocity while attending to the clean chunks before it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from einops import rearrange
from tqdm import tqdm

from xworld_env.data.shards import MANIFEST_NAME
from xworld_env.engine import autocast_to
from xworld_env.model.autoencoder import Autoencoder
from xworld_env.model.checkpoint import (
    CheckpointError,
    build_config,
    is_checkpoint,
    load_bundle,
    load_training_state,
)
from xworld_env.model.dit import CausalDiT, dit_config
from xworld_env.model.kv_cache import KVCacheConfig, RollingKVCache
from xworld_env.model.sampler import FlowSampler, SamplerConfig, draw_noise
from xworld_env.training.autoencoder import load_autoencoder, lr_at
from xworld_env.training.common import (
    TRAIN_DTYPES,
    RunLog,
    evaluating,
    load_split,
    resolve_device,
    resume,
    save_state,
    seed_everything,
    write_samples,
)
from xworld_env.training.losses import flow_matching_loss, sample_flow_times
from xworld_env.types import CAMERA_NAMES, EGO_FIELDS

STATE_NAME = "state.pt"
#: Held-out windows whose last chunk is generated for every saved sample sheet.
SAMPLE_WINDOWS = 2
#: Noise of the rolled-out windows' chunks (``WorldModelTrainConfig.rollout_noise``).
ROLLOUT_NOISE = ("independent", "shared")
_SPEED = EGO_FIELDS.index("speed")


@dataclass(frozen=True)
class WorldModelTrainConfig:
    """Training run of the DiT (the ``train`` config group, stage ``world_model``).

    Attributes:
        data: dataset folder written by ``xworld generate``.
        autoencoder: the trained autoencoder (``autoencoder.pt`` of its run, or a checkpoint
            folder such as ``xworld_env/assets/default``).
        latents_dir: where the dataset's latents are cached (shared with the heads stage).
        run_dir: resumable state and log.
        preset: DiT preset (``tiny``, ``small``, ``base``; ``test`` for smoke runs).
        window: past chunks attended to (the KV-cache window of the engine).
        chunks: consecutive chunks per training sequence (``window + 1`` covers every case).
        batch: sequences per step.
        steps, lr, seed, device, log_every, save_every: as in the autoencoder stage.
        shift: schedule shift of the sampler the model is trained for.
        num_steps: denoising steps of that sampler.
        discrete_fraction: share of flow times drawn from the sampler's own times.
        context_noise: std of noise on the clean context (exposure-bias robustness).
        rollout_fraction: share of each batch's windows whose context is the model's own
            rollout (:func:`rollout_context`) rather than the data, against the drift of
            long rollouts; 0 trains with teacher forcing only.
        rollout_noise: the noise that flow-matching adds to the chunks of a rolled-out window.
            ``independent`` (default): fresh noise, as for the data's windows. ``shared``: the
            noise that generated the window's rollout, each chunk at a sampler time taking
            that step's draw (the nearest step's at other times), which is what the engine's
            ``fixed`` noise feeds every chunk, so the model meets in training its own past
            generated from the very noise it is denoising (on the shipped model it did not
            make steady-action rollouts move: docs/performance.md, "Motion").
        event_fraction: share of each batch's windows drawn from the windows that end on a
            collision or off-road chunk (an episode's last), which are rare in the data (about
            one window of 4 chunks in twenty in the ``explore`` data); 0 (default) draws every
            window uniformly.
        init_from: a world-model run folder or a checkpoint folder whose DiT starts this run
            (fine-tuning; the preset must match). Ignored when ``run_dir`` already holds a
            state to resume.
        action_field: give the DiT a per-token action input (:class:`ActionField`) besides its
            adaLN conditioning. Fine-tuning a DiT without one from ``init_from`` adds it
            zero-initialised, so training starts from exactly the model it was.
        dtype: compute precision of the forward and backward passes, ``float32`` or
            ``bfloat16`` (autocast: weights, gradients and optimizer state stay float32;
            validation always runs in float32, so losses compare across runs).
    """

    data: str = "data/xworld_sim"
    autoencoder: str = "runs/autoencoder/autoencoder.pt"
    latents_dir: str = "runs/latents"
    run_dir: str = "runs/world_model"
    preset: str = "tiny"
    window: int = 4
    chunks: int = 5
    batch: int = 8
    steps: int = 20000
    lr: float = 3e-4
    seed: int = 0
    device: str = "auto"
    log_every: int = 25
    save_every: int = 100
    shift: float = 3.0
    num_steps: int = 4
    discrete_fraction: float = 0.5
    context_noise: float = 0.02
    rollout_fraction: float = 0.0
    rollout_noise: str = "independent"
    event_fraction: float = 0.0
    init_from: str = ""
    action_field: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("window", "chunks", "batch", "steps", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("discrete_fraction", "rollout_fraction", "event_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.rollout_fraction > 0 and self.chunks < 3:
            raise ValueError(
                f"rollout_fraction > 0 needs chunks >= 3 (a data chunk, a generated one and a "
                f"chunk that attends to it), got chunks={self.chunks}"
            )
        if self.rollout_noise not in ROLLOUT_NOISE:
            raise ValueError(f"rollout_noise must be one of {list(ROLLOUT_NOISE)}, "
                             f"got {self.rollout_noise!r}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {list(TRAIN_DTYPES)}, got {self.dtype!r}")


@torch.no_grad()
def encode_split(
    ae: Autoencoder, root: str, split: str, cache: Path | None
) -> dict[str, torch.Tensor]:
    """Latents (episodes, T, v, f, h, w, c) and labels of one split, cached on disk.

    The cache records which autoencoder weights and which dataset manifest it was encoded from
    (:func:`latents_key`); a cache of other weights or another dataset is encoded afresh and
    replaced, so a run never trains on another autoencoder's latents.
    """
    key = None if cache is None else latents_key(ae, root, split)
    if cache is not None and cache.is_file():
        cached = torch.load(cache, weights_only=True)
        if cached.pop("key", None) == key:
            return cached
    arrays = load_split(root, split, ("frames", "actions", "ego", "collision", "off_road"))
    frames = arrays["frames"]
    device = next(ae.parameters()).device
    latents = []
    for episode in tqdm(frames, desc=f"encode {split}", leave=False):
        z = ae.encode(torch.from_numpy(episode).to(device))  # (T, f, v, h, w, c)
        latents.append(rearrange(z, "t f v h w c -> t v f h w c").cpu())
    out = {
        "latents": torch.stack(latents),
        "actions": torch.from_numpy(arrays["actions"]),
        "ego": torch.from_numpy(arrays["ego"]),
        "collision": torch.from_numpy(arrays["collision"]),
        "off_road": torch.from_numpy(arrays["off_road"]),
        "valid": torch.from_numpy(arrays["valid"]),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save(out | {"key": key}, tmp)
        os.replace(tmp, cache)
    return out


def latents_key(ae: Autoencoder, root: str | Path, split: str) -> str:
    """sha256 of the autoencoder's weights, the dataset's manifest and the split's name."""
    digest = hashlib.sha256(split.encode())
    digest.update((Path(root) / MANIFEST_NAME).read_bytes())
    for name, tensor in sorted(ae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def window_starts(valid: torch.Tensor, length: int) -> torch.Tensor:
    """(episode, start) pairs of every window of ``length`` valid chunks."""
    episodes, chunks = valid.shape
    starts = []
    for e in range(episodes):
        n = int(valid[e].sum())
        starts += [(e, s) for s in range(0, n - length + 1)]
    if not starts:
        raise ValueError(f"no window of {length} valid chunks in the data")
    return torch.tensor(starts)


def ends_on_event(data: dict, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Which windows (rows of ``starts``) end on a collision or off-road chunk."""
    last = starts[:, 1] + length - 1
    return data["collision"][starts[:, 0], last] | data["off_road"][starts[:, 0], last]


def pick_windows(starts: torch.Tensor, events: torch.Tensor, batch: int, event_fraction: float,
                 generator: torch.Generator) -> torch.Tensor:
    """``batch`` training windows: uniformly over ``starts``, or, with ``event_fraction`` > 0,
    each one with that probability from the windows ``events`` marks."""
    pick = starts[torch.randint(len(starts), (batch,), generator=generator)]
    if event_fraction > 0:
        pool = starts[events]
        from_events = torch.rand(batch, generator=generator) < event_fraction
        drawn = pool[torch.randint(len(pool), (batch,), generator=generator)]
        pick = torch.where(from_events[:, None], drawn, pick)
    return pick


def batch_of(data: dict, starts: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Gathers windows: latents (b, t, ...), actions (b, t, 2), speed before each chunk (b, t)."""
    e, s = starts[:, 0], starts[:, 1]
    idx = s[:, None] + torch.arange(length)[None]
    latents = data["latents"][e[:, None], idx]
    actions = data["actions"][e[:, None], idx]
    speed_after = data["ego"][e[:, None], idx, _SPEED]
    # The speed that conditions a chunk is the one at the end of the chunk before it; the
    # first chunk of an episode uses its own (the engine does the same with its context).
    before = data["ego"][e, (s - 1).clamp(min=0), _SPEED]
    before = torch.where(s > 0, before, speed_after[:, 0])
    speed = torch.cat([before[:, None], speed_after[:, :-1]], dim=1)
    return {"latents": latents, "actions": actions, "speed": speed}


# Parameters a DiT gains with ``action_field``.
ACTION_FIELD_KEYS = ["action_field.weight"]


def train_world_model(cfg: WorldModelTrainConfig, progress: bool = True) -> dict:
    """Trains (or resumes) the DiT; returns the last losses and paths."""
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    ae = load_autoencoder(cfg.autoencoder, device)
    train = encode_split(ae, cfg.data, "train", Path(cfg.latents_dir) / "train.pt")
    val = encode_split(ae, cfg.data, "val", Path(cfg.latents_dir) / "val.pt")
    model = CausalDiT(dit_config(cfg.preset, latent_channels=ae.config.latent_channels,
                                 action_field=cfg.action_field)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    state_path = run_dir / STATE_NAME
    if cfg.init_from and not state_path.is_file():
        start = load_dit(cfg.init_from)
        adds_field = cfg.action_field and not start.config.action_field
        if replace(start.config, action_field=cfg.action_field) != model.config:
            raise ValueError(
                f"init_from {cfg.init_from!r} holds a DiT of another architecture "
                f"({start.config}) than preset {cfg.preset!r} ({model.config})"
            )
        if start.config.action_field and not cfg.action_field:
            raise ValueError(
                f"init_from {cfg.init_from!r} holds a DiT with an action field; "
                "fine-tune it with action_field=true"
            )
        # Adding the action field: it alone is missing and keeps its zero initialisation.
        result = model.load_state_dict(start.state_dict(), strict=not adds_field)
        if adds_field and (result.unexpected_keys or result.missing_keys != ACTION_FIELD_KEYS):
            raise RuntimeError(f"unexpected state_dict mismatch adding the action field: {result}")
    step = resume(state_path, model, optimizer, generator)
    train_starts = window_starts(train["valid"], cfg.chunks)
    train_events = ends_on_event(train, train_starts, cfg.chunks)
    if cfg.event_fraction > 0 and not train_events.any():
        raise ValueError(
            f"event_fraction={cfg.event_fraction} needs windows of {cfg.chunks} chunks that end "
            f"on a collision or off-road chunk; {cfg.data} has none"
        )
    val_starts = window_starts(val["valid"], cfg.chunks)
    order = torch.randperm(len(val_starts), generator=torch.Generator().manual_seed(3))
    val_pick = val_starts[order[:64]]
    sampler = FlowSampler(SamplerConfig(cfg.num_steps, cfg.shift))
    inference_times = sampler.timesteps()[:-1]
    log = RunLog(run_dir, cfg)
    bar = tqdm(total=cfg.steps, initial=step, desc="train world model", disable=not progress)
    val_loss = float("nan")
    while step < cfg.steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        pick = pick_windows(train_starts, train_events, cfg.batch, cfg.event_fraction,
                            generator)
        batch = {k: v.to(device) for k, v in batch_of(train, pick, cfg.chunks).items()}
        t = sample_flow_times(cfg.batch * cfg.chunks, inference_times, cfg.shift,
                              cfg.discrete_fraction, generator).view(cfg.batch, cfg.chunks)
        with autocast_to(device, cfg.dtype):
            context = noise = None
            if cfg.rollout_fraction > 0:
                rolled = torch.rand(cfg.batch, generator=generator) < cfg.rollout_fraction
                context, window_noise = mix_rollout(model, batch, rolled.to(device), cfg.window,
                                                    sampler, generator)
                if cfg.rollout_noise == "shared" and window_noise is not None:
                    noise = torch.randn(batch["latents"].shape, generator=generator).to(device)
                    noise[rolled.to(device)] = shared_chunk_noise(
                        window_noise, t[rolled].to(device), inference_times.to(device))
            loss = flow_matching_loss(model, batch["latents"], batch["actions"], batch["speed"],
                                      t.to(device), cfg.window, generator, cfg.context_noise,
                                      context, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        if step % cfg.save_every == 0 or step == cfg.steps:
            val_loss = validation_loss(model, val, val_pick, cfg, inference_times, device)
            log.write(step, val_loss=val_loss)
            write_generated(model, ae, val, val_pick[:SAMPLE_WINDOWS], cfg, device, run_dir, step)
            save_state(state_path, model, optimizer, generator, step,
                       config=model.config.__dict__)
    bar.close()
    return {"steps": step, "val_loss": val_loss, "run_dir": str(run_dir)}


@torch.no_grad()
def validation_loss(model, val, starts, cfg, inference_times, device) -> float:
    """Loss on fixed held-out windows at the sampler's own times, with a fixed noise seed."""
    model.eval()
    generator = torch.Generator().manual_seed(4)
    batch = {k: v.to(device) for k, v in batch_of(val, starts, cfg.chunks).items()}
    n = len(starts)
    t = inference_times[torch.arange(n * cfg.chunks) % len(inference_times)].view(n, cfg.chunks)
    loss = flow_matching_loss(model, batch["latents"], batch["actions"], batch["speed"],
                              t.to(device), cfg.window, generator)
    return float(loss)


@torch.no_grad()
def rollout_context(
    model: CausalDiT, batch: dict[str, torch.Tensor], window: int, sampler: FlowSampler,
    generator: torch.Generator,
) -> torch.Tensor:
    """The model's own rollout of each window, as the engine runs it, (b, t, v, f, h, w, c).

    Chunk 0 comes from the data; chunks ``1 .. t - 2`` are generated (``rollout_latents``);
    the last chunk, which no chunk of the window attends to, stays the data's. Training on
    these contexts with the data as targets teaches the model to pull its own drifting past
    back towards the data.

    Returns:
        The window latents, and the noise that generated them, (S, b, v, f, h, w, c): the
        starting noise and the sampler's ``S - 1`` re-noisings, shared by every chunk.
    """
    return rollout_latents(model, batch, window, sampler, generator, context=1,
                           end=batch["latents"].shape[1] - 1, return_noise=True)


@torch.no_grad()
def rollout_latents(
    model: CausalDiT, batch: dict[str, torch.Tensor], window: int, sampler: FlowSampler,
    generator: torch.Generator, context: int = 1, end: int | None = None,
    return_noise: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Windows whose chunks ``context .. end - 1`` the model generates, (b, t, v, f, h, w, c).

    The first ``context`` chunks come from the data and prime a rolling KV cache of ``window``
    chunks; then each chunk is sampled by the few-step sampler under the recorded action and
    speed, attending to the chunks committed before it, and committed in turn, as the engine
    runs it, with each window's noise drawn once and shared by its chunks (the engine's
    ``fixed`` noise). Chunks from ``end`` on (default: none) stay the data's. With
    ``return_noise``, also returns that noise, (S, b, v, f, h, w, c).
    """
    clean, actions, speed = batch["latents"], batch["actions"], batch["speed"]
    b, n = clean.shape[:2]
    end = n if end is None else end
    if not 1 <= context <= end <= n:
        raise ValueError(f"need 1 <= context <= end <= {n} chunks, got {context} and {end}")
    seeds = torch.randint(2**62, (b,), generator=generator)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    noise = [draw_noise(clean.shape[2:], generators).to(clean.device)
             for _ in range(sampler.num_steps)]
    kv = RollingKVCache(KVCacheConfig(window=window), len(model.blocks), b)
    out = clean.clone()
    with evaluating(model):
        for j in range(context):
            model.commit_kv(clean[:, j], actions[:, j], speed[:, j], kv)
        for j in range(context, end):
            def denoise(x: torch.Tensor, t: torch.Tensor, s: int, j: int = j) -> torch.Tensor:
                return model(x, t, actions[:, j], speed[:, j], kv=kv, step=s)

            out[:, j] = sampler.sample(denoise, noise[0], generators, noise[1:])
            if j + 1 < end:
                model.commit_kv(out[:, j], actions[:, j], speed[:, j], kv)
    return (out, torch.stack(noise)) if return_noise else out


def shared_chunk_noise(window_noise: torch.Tensor, t: torch.Tensor,
                       times: torch.Tensor) -> torch.Tensor:
    """The flow-matching noise of each chunk of rolled-out windows under ``rollout_noise:
    shared``, (b, n, v, f, h, w, c): for chunk ``j`` at flow time ``t[:, j]``, the draw the
    sampler feeds the step whose time is nearest (``window_noise[s]``, (S, b, ...), is what
    step ``s`` starts from at ``times[s]``)."""
    step = (t.unsqueeze(-1) - times).abs().argmin(-1)  # (b, n)
    worlds = torch.arange(t.shape[0], device=t.device).unsqueeze(1).expand_as(step)
    return window_noise[step, worlds]


def mix_rollout(
    model: CausalDiT, batch: dict[str, torch.Tensor], rolled: torch.Tensor, window: int,
    sampler: FlowSampler, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Context latents of a batch: the model's rollout for the windows where ``rolled`` (b,)
    is true, the data elsewhere; and the noise of those rollouts (:func:`rollout_context`;
    None when no window is rolled out)."""
    context = batch["latents"].clone()
    if not bool(rolled.any()):
        return context, None
    picked = {k: v[rolled] for k, v in batch.items()}
    context[rolled], noise = rollout_context(model, picked, window, sampler, generator)
    return context, noise


@torch.no_grad()
def generate_last_chunk(
    model: CausalDiT, batch: dict[str, torch.Tensor], window: int, sampler: FlowSampler,
    seed: int = 5,
) -> torch.Tensor:
    """Generates the last chunk of each window from the clean chunks before it with the few-step
    sampler (what the engine's rollout does, on the teacher-forcing pass), (b, v, f, h, w, c)."""
    model.eval()
    clean = batch["latents"]
    b, n = clean.shape[:2]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(b)]
    noise = draw_noise(clean.shape[2:], generators).to(clean.device)

    def denoise(x_t: torch.Tensor, t: torch.Tensor, s: int) -> torch.Tensor:
        noisy = torch.cat([clean[:, :-1], x_t[:, None]], dim=1)
        times = torch.zeros(b, n, device=clean.device)
        times[:, -1] = t
        out = model.forward_sequence(clean, batch["actions"], batch["speed"], window=window,
                                     noisy=noisy, t=times)
        return out[:, -1]

    return sampler.sample(denoise, noise, generators)


@torch.no_grad()
def write_generated(model, ae, val, starts, cfg, device, run_dir: Path, step: int) -> Path:
    """Sample sheet: for a few held-out windows, the last chunk's final frame as the autoencoder
    reconstructs it from the data, above the same frame generated by the DiT."""
    batch = {k: v.to(device) for k, v in batch_of(val, starts, cfg.chunks).items()}
    sampler = FlowSampler(SamplerConfig(cfg.num_steps, cfg.shift))
    generated = generate_last_chunk(model, batch, cfg.window, sampler)
    rows = []
    for i in range(len(starts)):
        e, s = (int(v) for v in starts[i])
        rows.append((f"episode {e}\nchunk {s + cfg.chunks - 1}\ndata",
                     ae.decode(batch["latents"][i, -1, :, -1])))
        rows.append(("generated", ae.decode(generated[i, :, -1])))
    return write_samples(run_dir, "world_model", step, rows, CAMERA_NAMES)


def load_dit(run_dir: str | Path, device: torch.device | str = "cpu") -> CausalDiT:
    """The DiT of a world-model run's latest state, or of a checkpoint folder."""
    from xworld_env.model.dit import DiTConfig

    if is_checkpoint(run_dir):
        return load_bundle(run_dir, device).dit
    if not (Path(run_dir) / STATE_NAME).is_file():
        raise CheckpointError(
            f"{run_dir}: neither a world-model run folder (no {STATE_NAME}) nor a checkpoint "
            "folder (config.json and model.safetensors)"
        )

    path = Path(run_dir) / STATE_NAME
    state = load_training_state(path)
    model = CausalDiT(build_config(DiTConfig, state["config"], path, "config"))
    model.load_state_dict(state["model"])
    return model.to(device).eval()
