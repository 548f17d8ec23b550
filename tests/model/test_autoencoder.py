"""Autoencoder shapes, input types, output range and latent normalisation."""

from __future__ import annotations

import pytest
import torch

from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig, to_uint8

from .conftest import make_autoencoder


@torch.no_grad()
def test_encode_decode_shapes_on_any_leading_axes():
    ae = make_autoencoder()
    images = torch.randint(0, 256, (2, 2, 7, 64, 64, 3), dtype=torch.uint8)
    latents = ae.encode(images)
    assert latents.shape == (2, 2, 7, 8, 8, 8)
    decoded = ae.decode(latents)
    assert decoded.shape == images.shape
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    assert ae(images).shape == images.shape


@torch.no_grad()
def test_uint8_and_float_inputs_agree():
    ae = make_autoencoder()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(ae.encode(images), ae.encode(images.float() / 255.0))


@torch.no_grad()
def test_calibration_gives_unit_latents_and_keeps_reconstructions():
    ae = make_autoencoder()
    images = torch.rand(16, 64, 64, 3)
    before = ae(images)
    ae.calibrate(images)
    z = ae.encode(images).reshape(-1, ae.config.latent_channels)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.std(0), torch.ones(8), rtol=0, atol=1e-4)
    torch.testing.assert_close(ae(images), before, rtol=1e-4, atol=1e-5)
    assert {"latent_shift", "latent_scale"} <= set(ae.state_dict())


def test_default_config_compresses_8x():
    cfg = AutoencoderConfig()
    assert (cfg.downsample, cfg.latent_size, cfg.latent_channels) == (8, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(image_size=60)


@torch.no_grad()
def test_decoder_widths_set_apart_from_the_encoder():
    mirrored = Autoencoder(AutoencoderConfig(channels=(4, 6, 8)))
    wide = Autoencoder(AutoencoderConfig(channels=(4, 6, 8), decoder_channels=(16, 12, 10)))
    assert mirrored.config.decoder_widths == (8, 6, 4)

    def widths(ae):
        return [m.out_channels for m in ae.decoder.net if isinstance(m, torch.nn.Conv2d)]

    assert widths(mirrored) == [8, 8, 8, 6, 6, 4, 4, 3]
    assert widths(wide) == [16, 16, 16, 12, 12, 10, 10, 3]
    # The encoders are alike: one state loads into the other's encoder.
    wide.encoder.load_state_dict(mirrored.encoder.state_dict())
    images = torch.rand(2, 64, 64, 3)
    torch.testing.assert_close(wide.encode(images), mirrored.encode(images), rtol=0, atol=0)
    assert wide(images).shape == images.shape
    for bad in ((16, 12), (16, 0, 8)):
        with pytest.raises(ValueError, match="decoder_channels .* each of the 3 stages"):
            AutoencoderConfig(channels=(4, 6, 8), decoder_channels=bad)


def test_wrong_shapes_are_rejected():
    ae = Autoencoder(AutoencoderConfig(channels=(4, 4, 4)))
    with pytest.raises(ValueError, match="images of shape"):
        ae.encode(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="latents of shape"):
        ae.decode(torch.zeros(1, 8, 8, 4))


def test_to_uint8_rounds_and_clamps():
    out = to_uint8(torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0]))
    assert out.tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@torch.no_grad()
def test_inference_decoder_gives_autocasts_images_bit_for_bit(dtype):
    from xworld_env.engine import COMPUTE_DTYPES, autocast_to

    ae = make_autoencoder()
    latents = torch.randn(2, 7, 8, 8, 8)
    copy = ae.inference_decoder(COMPUTE_DTYPES[dtype])
    assert all(p.dtype == COMPUTE_DTYPES[dtype] and not p.requires_grad
               for p in copy.parameters())
    with autocast_to(torch.device("cpu"), dtype):
        expected = ae.decode(latents)
        assert torch.equal(ae.decode(latents, decoder=copy), expected)
    # The copy is the decoder's own weights, not a reference to them.
    next(ae.decoder.parameters()).data.add_(1.0)
    with autocast_to(torch.device("cpu"), dtype):
        assert torch.equal(ae.decode(latents, decoder=copy), expected)
