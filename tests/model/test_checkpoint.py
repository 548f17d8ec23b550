"""Checkpoint round trip and the errors of missing, mismatched and corrupted files."""

from __future__ import annotations

import json

import pytest
import torch

from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    WorldModelBundle,
    _sha256,
    load_bundle,
    save_bundle,
)

from .conftest import make_autoencoder, make_dit, make_heads


@pytest.fixture
def saved(tmp_path):
    bundle = WorldModelBundle(make_autoencoder(), make_dit(), make_heads(), {"run": "test"})
    bundle.autoencoder.latent_scale.fill_(2.5)
    return save_bundle(tmp_path / "ckpt", bundle), bundle


def edit_config(path, change):
    config = json.loads((path / CONFIG_NAME).read_text())
    change(config)
    (path / CONFIG_NAME).write_text(json.dumps(config))


def test_round_trip_restores_every_tensor_and_config(saved):
    path, bundle = saved
    loaded = load_bundle(path)
    assert loaded.metadata == {"run": "test"}
    for name, module in bundle.modules().items():
        other = loaded.modules()[name]
        assert other.config == module.config
        assert not other.training
        for (key, a), (key2, b) in zip(
            module.state_dict().items(), other.state_dict().items(), strict=True
        ):
            assert key == key2 and torch.equal(a, b), key
    assert float(loaded.autoencoder.latent_scale[0]) == 2.5


def test_round_trip_keeps_a_decoder_wider_than_its_encoder(tmp_path):
    torch.manual_seed(0)
    wide = Autoencoder(AutoencoderConfig(channels=(8, 8, 8), decoder_channels=(16, 12, 8)))
    path = save_bundle(tmp_path / "ckpt", WorldModelBundle(wide, make_dit(), make_heads(), {}))
    loaded = load_bundle(path).autoencoder
    assert loaded.config == wide.config and loaded.config.decoder_channels == (16, 12, 8)
    latents = torch.randn(2, 8, 8, 8)
    assert torch.equal(loaded.decode(latents), wide.decode(latents))


def test_a_config_from_before_decoder_widths_loads_a_mirrored_decoder(saved):
    path, bundle = saved
    edit_config(path, lambda c: c["autoencoder"].pop("decoder_channels"))
    loaded = load_bundle(path).autoencoder
    assert loaded.config == bundle.autoencoder.config and loaded.config.decoder_channels is None


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as err:
        load_bundle(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_missing_weights_file(saved):
    path, _ = saved
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME}: no such file"):
        load_bundle(path)


def test_other_format_version(saved):
    path, _ = saved
    edit_config(path, lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"expected {FORMAT_VERSION}"):
        load_bundle(path)


def test_corrupted_weights(saved):
    path, _ = saved
    data = bytearray((path / WEIGHTS_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_bundle(path)


def test_truncated_weights(saved):
    path, _ = saved
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_bundle(path)


def test_unreadable_safetensors_even_with_matching_checksum(saved):
    path, _ = saved
    (path / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    edit_config(path, lambda c: c["weights"].update(sha256=_sha256(path / WEIGHTS_NAME)))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_bundle(path)


def test_config_that_does_not_fit_the_weights(saved):
    path, _ = saved
    edit_config(path, lambda c: c["dit"].update(depth=3))
    with pytest.raises(CheckpointError, match="'dit' do not fit the config"):
        load_bundle(path)


def test_config_with_unknown_or_missing_fields(saved):
    path, _ = saved
    edit_config(path, lambda c: c["heads"].update(colour="red"))
    with pytest.raises(CheckpointError, match=r"unknown fields \['colour'\]"):
        load_bundle(path)
    edit_config(path, lambda c: (c["heads"].pop("colour"), c["heads"].pop("hidden")))
    with pytest.raises(CheckpointError, match=r"missing fields \['hidden'\]"):
        load_bundle(path)


def test_a_config_from_before_the_action_field_loads_without_one(saved):
    path, bundle = saved
    edit_config(path, lambda c: c["dit"].pop("action_field"))
    loaded = load_bundle(path)
    assert loaded.dit.config == bundle.dit.config and not loaded.dit.config.action_field
    assert loaded.dit.action_field is None


def test_heads_from_before_the_temporal_trunk_load_as_they_were(saved):
    path, bundle = saved
    edit_config(path, lambda c: c["heads"].pop("temporal"))
    loaded = load_bundle(path)
    assert loaded.heads.config == bundle.heads.config and not loaded.heads.config.temporal


def test_round_trip_with_temporal_heads(tmp_path):
    bundle = WorldModelBundle(make_autoencoder(), make_dit(), make_heads(temporal=True), {})
    loaded = load_bundle(save_bundle(tmp_path / "ckpt", bundle))
    assert loaded.heads.config.temporal
    latents = torch.randn(2, *bundle.heads.config.chunk_shape)
    torch.testing.assert_close(loaded.heads(latents).ego, bundle.heads(latents).ego)


def test_round_trip_with_an_action_field(tmp_path):
    bundle = WorldModelBundle(make_autoencoder(), make_dit(action_field=True), make_heads(), {})
    loaded = load_bundle(save_bundle(tmp_path / "ckpt", bundle))
    assert loaded.dit.config.action_field
    assert loaded.dit.action_field.weight.any()
    assert torch.equal(loaded.dit.action_field.weight, bundle.dit.action_field.weight)


def test_config_that_is_not_json(saved):
    path, _ = saved
    (path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON file"):
        load_bundle(path)


def test_half_precision_storage_loads_the_rounded_weights(tmp_path):
    bundle = WorldModelBundle(make_autoencoder(), make_dit(), make_heads(), {})
    path = save_bundle(tmp_path / "half", bundle, storage_dtype="float16")
    full = save_bundle(tmp_path / "full", bundle)
    assert (path / "model.safetensors").stat().st_size < 0.6 * (
        full / "model.safetensors"
    ).stat().st_size
    loaded = load_bundle(path)
    for name, value in bundle.dit.state_dict().items():
        got = loaded.dit.state_dict()[name]
        assert got.dtype == value.dtype
        assert torch.equal(got, value.to(torch.float16).to(value.dtype))
    with pytest.raises(ValueError, match="storage_dtype"):
        save_bundle(tmp_path / "x", bundle, storage_dtype="int8")
