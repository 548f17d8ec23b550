"""Per-frame, per-camera convolutional autoencoder: 64x64x3 images <-> 8x8xC latents.

A plain deterministic autoencoder (no KL term): the DiT needs latents of roughly unit scale, which
a per-channel shift and scale, measured on data after training (:meth:`Autoencoder.calibrate`),
provide. Both live in registered buffers, so they travel with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of :class:`Autoencoder`.

    Attributes:
        image_size: image side ``H = W`` in pixels.
        latent_channels: latent channels ``c``.
        channels: feature channels after each stride-2 stage; three stages give 8x compression.
        decoder_channels: the decoder's feature channels per upsampling stage, from the latent
            side outwards; ``None`` mirrors the encoder (``channels`` reversed). One entry per
            stage, so that a wider decoder can be trained on a frozen encoder's latents.
    """

    image_size: int = 64
    latent_channels: int = 8
    channels: tuple[int, ...] = (16, 32, 64)
    decoder_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample} of {len(self.channels)} stages"
            )
        if self.decoder_channels is not None and (
            len(self.decoder_channels) != len(self.channels)
            or any(int(c) < 1 for c in self.decoder_channels)
        ):
            raise ValueError(
                f"decoder_channels {tuple(self.decoder_channels)} must give a positive width for "
                f"each of the {len(self.channels)} stages of channels {tuple(self.channels)}, "
                "or be None to mirror the encoder"
            )

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """The decoder's widths per stage, from the latent side outwards."""
        if self.decoder_channels is None:
            return tuple(self.channels[::-1])
        return tuple(self.decoder_channels)

    @property
    def downsample(self) -> int:
        """Spatial compression factor (2 per stage)."""
        return 2 ** len(self.channels)

    @property
    def latent_size(self) -> int:
        """Latent grid side ``h = w``."""
        return self.image_size // self.downsample


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


class Encoder(nn.Module):
    """(n, 3, H, W) in [0, 1] -> (n, c, h, w) raw latents."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(3, config.channels[0]), nn.SiLU()]
        cin = config.channels[0]
        for cout in config.channels:
            layers += [_conv(cin, cout, stride=2), nn.SiLU(), _conv(cout, cout), nn.SiLU()]
            cin = cout
        layers.append(nn.Conv2d(cin, config.latent_channels, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Images to raw latents."""
        return self.net(x)


class Decoder(nn.Module):
    """(n, c, h, w) raw latents -> (n, 3, H, W) in [0, 1]."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = config.decoder_widths
        layers: list[nn.Module] = [_conv(config.latent_channels, widths[0]), nn.SiLU()]
        cin = widths[0]
        for cout in widths:
            # Nearest upsampling + conv rather than transposed convs, which leave checkerboards.
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout), nn.SiLU()]
            layers += [_conv(cout, cout), nn.SiLU()]
            cin = cout
        layers += [_conv(cin, 3), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Raw latents to images."""
        return self.net(z)


class Autoencoder(nn.Module):
    """Deterministic image autoencoder with normalised latents.

    Works on any leading axes: ``(..., H, W, 3)`` images <-> ``(..., h, w, c)`` latents, each
    image (one camera, one frame) encoded on its own.

    Args:
        config: architecture.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(config.latent_channels))

    def _check(self, x: Tensor, side: int, channels: int, what: str) -> None:
        if x.dim() < 3 or tuple(x.shape[-3:]) != (side, side, channels):
            raise ValueError(
                f"Autoencoder expects {what} of shape (..., {side}, {side}, {channels}), "
                f"got {tuple(x.shape)}"
            )

    def encode(self, images: Tensor) -> Tensor:
        """Encodes images to normalised latents.

        Args:
            images: (..., H, W, 3), uint8 in [0, 255] or float in [0, 1].

        Returns:
            (..., h, w, c) float latents of roughly zero mean and unit std once calibrated.
        """
        self._check(images, self.config.image_size, 3, "images")
        dtype = self.latent_scale.dtype
        x = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
        lead = x.shape[:-3]
        z = self.encoder(rearrange(x.reshape(-1, *x.shape[-3:]), "n h w c -> n c h w"))
        z = rearrange(z, "n c h w -> n h w c")
        z = (z - self.latent_shift) / self.latent_scale
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, latents: Tensor, decoder: nn.Module | None = None) -> Tensor:
        """Decodes normalised latents to images.

        Args:
            latents: (..., h, w, c).
            decoder: a copy of the decoder to run instead of ``self.decoder``
                (``inference_decoder``); the latents are cast to its weights' precision.

        Returns:
            (..., H, W, 3) float images in [0, 1] (in the decoder's precision).
        """
        self._check(latents, self.config.latent_size, self.config.latent_channels, "latents")
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]) * self.latent_scale + self.latent_shift
        if decoder is None:
            decoder = self.decoder
        else:
            z = z.to(next(decoder.parameters()).dtype)
        x = rearrange(decoder(rearrange(z, "n h w c -> n c h w")), "n c h w -> n h w c")
        return x.reshape(*lead, *x.shape[1:])

    def inference_decoder(self, dtype: torch.dtype) -> nn.Module:
        """A frozen copy of the decoder for inference in ``dtype``: weights cast once and laid
        out channels-last, the layout its convolutions run in.

        Under autocast the decoder casts its weights to the compute precision in every call,
        and reorders them to the input's layout; the copy holds them as those calls would
        make them, so ``decode(latents, decoder=copy)`` gives the images autocast to
        ``dtype`` gives (bit for bit on the CPU) with less work per call. The copy does not
        follow later changes of ``self.decoder``'s weights.
        """
        copy = Decoder(self.config).to(device=self.latent_scale.device)
        copy.load_state_dict(self.decoder.state_dict())
        copy = copy.to(dtype=dtype, memory_format=torch.channels_last).eval()
        return copy.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(images))``, (..., H, W, 3) in [0, 1]."""
        return self.decode(self.encode(images))

    @torch.no_grad()
    def calibrate(self, images: Tensor) -> None:
        """Sets the latent shift and scale so that latents of ``images`` have zero mean and unit
        std per channel. Run once after training, on a representative batch.

        Args:
            images: (..., H, W, 3) uint8 or float in [0, 1].
        """
        self.latent_shift.zero_()
        self.latent_scale.fill_(1.0)
        z = self.encode(images).reshape(-1, self.config.latent_channels)
        self.latent_shift.copy_(z.mean(dim=0))
        self.latent_scale.copy_(z.std(dim=0).clamp_min(1e-6))


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 in [0, 255], rounded."""
    return (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
