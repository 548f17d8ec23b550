"""``xworld train autoencoder``: the per-camera image autoencoder, trained first, then frozen."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from xworld_env.engine import autocast_to
from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.checkpoint import (
    CheckpointError,
    build_config,
    is_checkpoint,
    load_bundle,
    load_training_state,
    save_training_state,
)
from xworld_env.training.common import (
    TRAIN_DTYPES,
    RunLog,
    evaluating,
    load_split,
    psnr,
    resolve_device,
    resume,
    save_state,
    seed_everything,
    write_samples,
)

STATE_NAME = "state.pt"
#: Held-out images shown with their reconstructions in every saved sample sheet.
SAMPLE_IMAGES = 8


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Training run of the autoencoder (the ``train`` config group, stage ``autoencoder``).

    Attributes:
        data: dataset folder written by ``xworld generate``.
        run_dir: where the resumable state, the log and sample images go.
        steps: optimiser steps in all (a resumed run continues up to this count).
        batch_images: single-camera images per step.
        lr: peak learning rate (cosine decay to 10% after a short warm-up).
        latent_channels, channels: architecture (``AutoencoderConfig``).
        seed: seeds the initial weights and the batch order.
        device: ``auto``, ``cpu`` or ``cuda``.
        log_every, save_every: steps between log lines and between saved states.
        val_images: held-out images for the reconstruction PSNR.
        finetune_decoder: a finished autoencoder (``autoencoder.pt``, or a checkpoint folder)
            whose decoder this run trains on, with its encoder and latent calibration frozen, so
            that its latents (and the DiT and heads trained on them) stay valid; the
            architecture is that checkpoint's, and ``latent_channels`` and ``channels`` are not
            used.
        decoder_channels: the decoder's widths per stage from the latent side outwards (one per
            entry of ``channels``); empty mirrors the encoder. With ``finetune_decoder``, wider
            stages than the given decoder's train a decoder of that shape on
            the frozen encoder's latents, widened from the given decoder (see
            :func:`widen_decoder`); empty keeps the given decoder's widths.
        dtype: compute precision of the training passes, ``float32`` or ``bfloat16``
            (autocast: weights, gradients and optimizer state stay float32; the held-out PSNR
            is always measured in float32).
    """

    data: str = "data/xworld_sim"
    run_dir: str = "runs/autoencoder"
    steps: int = 4000
    batch_images: int = 64
    lr: float = 2e-3
    latent_channels: int = 8
    channels: tuple[int, ...] = (16, 32, 64)
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    save_every: int = 250
    val_images: int = 512
    finetune_decoder: str = ""
    decoder_channels: tuple[int, ...] = ()
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_images", "log_every", "save_every", "val_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {list(TRAIN_DTYPES)}, got {self.dtype!r}")


def load_autoencoder(path: str | Path, device: torch.device | str) -> Autoencoder:
    """The frozen autoencoder of a finished autoencoder stage (its ``autoencoder.pt``) or of a
    checkpoint folder (``xworld_env/assets/default``, for one)."""
    if is_checkpoint(path):
        return load_bundle(path, device).autoencoder.requires_grad_(False)
    if not Path(path).is_file():
        raise CheckpointError(
            f"{path}: neither an autoencoder run's autoencoder.pt nor a checkpoint folder "
            "(config.json and model.safetensors)"
        )
    state = load_training_state(path)
    model = Autoencoder(build_config(AutoencoderConfig, state["config"], path, "config"))
    model.load_state_dict(state["model"])
    return model.to(device).eval().requires_grad_(False)


def widen_decoder(model: Autoencoder, decoder_channels: tuple[int, ...]) -> Autoencoder:
    """A copy of ``model`` whose decoder has widths ``decoder_channels`` (each at least the
    present one), with the same output: every convolution keeps its weights in its first
    channels, and the added channels get fresh weights in and zero weights into the kept
    channels, so that the training that follows starts from the given decoder's
    reconstructions. Encoder and latent calibration are copied unchanged."""
    old = model.config.decoder_widths
    new = tuple(int(c) for c in decoder_channels)
    if len(new) != len(old) or any(n < o for n, o in zip(new, old, strict=True)):
        raise ValueError(
            f"decoder_channels {new} must give each of the {len(old)} stages at least the "
            f"width of the decoder it starts from, {old}"
        )
    wide = Autoencoder(dataclasses.replace(model.config, decoder_channels=new))
    wide = wide.to(model.latent_scale.device)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    wide.load_state_dict(kept, strict=False)
    convs = [(a, b) for a, b in zip(model.decoder.net, wide.decoder.net, strict=True)
             if isinstance(a, torch.nn.Conv2d)]
    with torch.no_grad():
        for small, large in convs:
            cout, cin = small.weight.shape[:2]
            large.weight[:cout, :cin] = small.weight
            large.weight[:cout, cin:] = 0.0  # added inputs do not reach the kept outputs
            large.bias[:cout] = small.bias
    return wide.eval().requires_grad_(False)


def image_pool(root: str, split: str) -> torch.Tensor:
    """Every camera image of every valid chunk of a split, uint8 (n, H, W, 3)."""
    arrays = load_split(root, split, ("frames",))
    frames = arrays["frames"][arrays["valid"]]  # (chunks, f, v, H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:])))


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 2% of the run, then cosine decay to 10% of the peak."""
    warm = max(1, total // 50)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return float(peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))))


@torch.no_grad()
def write_reconstructions(
    model: Autoencoder, images: torch.Tensor, run_dir: Path, step: int
) -> Path:
    """Sample sheet of held-out images (uint8, (n, H, W, 3)) above their reconstructions."""
    target = images.float() / 255.0
    with evaluating(model):
        recon = model(target)
    return write_samples(run_dir, "autoencoder", step,
                         [("held-out", target), ("reconstruction", recon)],
                         [f"image {i}" for i in range(len(images))])


@torch.no_grad()
def heldout_psnr(model: Autoencoder, images: torch.Tensor, device: torch.device) -> float:
    """Reconstruction PSNR (dB) of held-out uint8 images (n, H, W, 3), in batches of 128."""
    with evaluating(model):
        recon = torch.cat([model(v.to(device).float() / 255.0) for v in images.split(128)])
    return psnr(recon.cpu(), images.float() / 255.0)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE plus half the L1: MSE drives PSNR, L1 keeps thin lane markings from washing out."""
    return F.mse_loss(recon, target) + 0.5 * F.l1_loss(recon, target)


def train_autoencoder(cfg: AutoencoderTrainConfig, progress: bool = True) -> dict:
    """Trains (or resumes) the autoencoder; returns the final validation PSNR and paths."""
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    decoder_channels = tuple(cfg.decoder_channels) or None
    if cfg.finetune_decoder:
        model = load_autoencoder(cfg.finetune_decoder, device)
        if decoder_channels and decoder_channels != model.config.decoder_widths:
            model = widen_decoder(model, decoder_channels)
        model.decoder.requires_grad_(True)
        trained = model.decoder
    else:
        model = Autoencoder(
            AutoencoderConfig(latent_channels=cfg.latent_channels, channels=tuple(cfg.channels),
                              decoder_channels=decoder_channels)
        ).to(device)
        trained = model
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=1e-4)
    state_path = run_dir / STATE_NAME
    step = resume(state_path, model, optimizer, generator)
    train = image_pool(cfg.data, "train")
    val = image_pool(cfg.data, "val")
    val = val[torch.randperm(len(val), generator=torch.Generator().manual_seed(1))][
        : cfg.val_images
    ]
    log = RunLog(run_dir, cfg)
    bar = tqdm(total=cfg.steps, initial=step, desc="train autoencoder", disable=not progress)
    trained.train()
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        index = torch.randint(len(train), (cfg.batch_images,), generator=generator)
        images = train[index].to(device).float() / 255.0
        with autocast_to(device, cfg.dtype):
            if cfg.finetune_decoder:
                with torch.no_grad():
                    latents = model.encode(images)
                recon = model.decode(latents)
            else:
                recon = model(images)
        loss = reconstruction_loss(recon.float(), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_state(state_path, model, optimizer, generator, step)
            write_reconstructions(model, val[:SAMPLE_IMAGES].to(device), run_dir, step)
            if step < cfg.steps:  # the final figure is written below, after calibration
                held_out = heldout_psnr(model, val, device)
                bar.set_postfix(loss=f"{loss.item():.4f}", val_psnr=f"{held_out:.2f}")
                log.write(step, val_psnr=held_out)
    bar.close()
    model.eval()
    if not cfg.finetune_decoder:  # a fine-tuned decoder keeps the latents it was given
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:4096]
        model.calibrate(train[pick].to(device))
    val_psnr = heldout_psnr(model, val, device)
    log.write(step, val_psnr=val_psnr)
    save_training_state(
        run_dir / "autoencoder.pt",
        {"model": model.state_dict(), "config": asdict(model.config), "step": step,
         "val_psnr": val_psnr},
    )
    return {"val_psnr": val_psnr, "steps": step, "run_dir": str(run_dir)}
