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


def test_temporal_trunk_reads_both_frames_of_a_camera_at_once():
    # Each of the temporal trunk's outputs sees both frames of its camera and no other camera;
    # each of the first heads' sees one frame of one camera.
    latents = torch.randn(1, 7, 2, 8, 8, 8, requires_grad=True)
    for temporal, reads in ((True, [(0, 0), (0, 1)]), (False, [(0, 0)])):
        heads = make_heads(temporal=temporal)
        (grad,) = torch.autograd.grad(heads.trunk(heads.trunk_inputs(latents))[0].sum(), latents)
        seen = {(v, f) for v in range(7) for f in range(2) if grad[0, v, f].abs().sum() > 0}
        assert seen == set(reads)


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
