"""Heads: output shapes and units."""

from __future__ import annotations

import pytest
import torch

from xworld_env.types import EGO_FIELDS

from .conftest import make_heads


@pytest.mark.parametrize("temporal", [False, True])
@torch.no_grad()
def test_output_shapes(temporal):
    out = make_heads(temporal=temporal)(torch.randn(4, 7, 2, 8, 8, 8))
    assert out.ego.shape == (4, len(EGO_FIELDS))
    assert out.collision_logit.shape == (4,) and out.off_road_logit.shape == (4,)


@torch.no_grad()
def test_temporal_trunk_reads_both_frames_of_a_camera_at_once():
    # The temporal trunk's first convolution sees both frames of a camera in one window, so a
    # camera-frame pair is one trunk input; the first heads pass every camera-frame on its own.
    latents = torch.randn(1, 7, 2, 8, 8, 8)
    temporal, separate = make_heads(temporal=True), make_heads()
    assert temporal.trunk[0].in_channels == 2 * separate.trunk[0].in_channels
    assert temporal.mlp[0].in_features * 2 == separate.mlp[0].in_features
    # Swapping the two frames of every camera changes what the temporal heads read.
    swapped = latents.flip(2)
    assert not torch.allclose(temporal(latents).ego, temporal(swapped).ego)


@torch.no_grad()
def test_ego_is_predicted_in_units_of_ego_scale():
    heads = make_heads()
    latents = torch.randn(2, 7, 2, 8, 8, 8)
    before = heads(latents)
    heads.ego_scale.mul_(2)
    after = heads(latents)
    torch.testing.assert_close(after.ego, 2 * before.ego)
    torch.testing.assert_close(after.collision_logit, before.collision_logit)


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="Heads expects latents"):
        make_heads()(torch.zeros(1, 6, 2, 8, 8, 8))
