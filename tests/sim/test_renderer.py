"""Renderer geometry: things appear in the cameras that should see them, and only there."""

import numpy as np
import pytest
from highway_env.road.lane import LineType, StraightLane

from xworld_env.sim.renderer import MARKING, Renderer, RendererConfig
from xworld_env.sim.rig import CameraSpec, RigConfig, camera_offset, camera_rays
from xworld_env.types import CAMERA_NAMES


def two_lane_road():
    c, s = LineType.CONTINUOUS_LINE, LineType.STRIPED
    return [
        StraightLane([-500, 0], [500, 0], width=4.0, line_types=(c, s)),
        StraightLane([-500, 4], [500, 4], width=4.0, line_types=(LineType.NONE, c)),
    ]


@pytest.fixture(scope="module")
def renderer():
    r = Renderer(RigConfig(), RendererConfig(prop_distance=0.0))
    r.set_scene(two_lane_road(), seed=3)
    return r


def car(x, y, heading=0.0):
    return np.array([[x, y, heading, 2.5, 1.0, 0.15, 1.5, 0.9, 0.1, 0.1]])


EGO = (0.0, 0.0, 0.0)  # centre of the left lane, heading +x


def changed_cameras(renderer, box, ego=EGO):
    empty = renderer.render(ego, np.zeros((0, 10)))
    with_box = renderer.render(ego, box)
    diff = np.abs(empty.astype(int) - with_box.astype(int)).sum(axis=(1, 2, 3))
    return {name for name, d in zip(CAMERA_NAMES, diff) if d > 0}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ((30.0, 0.0), {"front_wide", "front_narrow"}),
        ((-30.0, 0.0), {"rear"}),
        # highway-env's y grows to the right: -y is left. Bearings chosen where only one
        # camera's field of view reaches (73° and 120° off the nose).
        ((7.3, -24.0), {"front_left"}),
        ((7.3, 24.0), {"front_right"}),
        ((-12.5, -21.6), {"rear_left"}),
        ((-12.5, 21.6), {"rear_right"}),
    ],
)
def test_car_appears_in_the_cameras_facing_it(renderer, where, expected):
    assert changed_cameras(renderer, car(*where)) == expected


def test_ego_heading_rotates_the_views(renderer):
    # Turned to face -x, a car at +x is behind the ego.
    assert changed_cameras(renderer, car(30.0, 0.0), ego=(0.0, 0.0, np.pi)) == {"rear"}


def project(cam: CameraSpec, point, ego=EGO, size=64):
    """Pixel (row, col) of a world point in a camera, by pinhole projection."""
    rays = camera_rays(cam, size, size)
    rel = np.asarray(point, float) - (camera_offset(cam) + [ego[0], ego[1], 0.0])
    angles = rays @ (rel / np.linalg.norm(rel))
    row, col = np.unravel_index(np.argmax(angles), angles.shape)
    return int(row), int(col)


@pytest.mark.parametrize("y_line", [-2.0, 6.0])  # the two continuous road edges
def test_lane_markings_are_where_the_lanes_are(renderer, y_line):
    cam = RigConfig().cameras[0]
    image = renderer.render(EGO, np.zeros((0, 10)))[0]
    row, col = project(cam, (12.0, y_line, 0.0))
    style = renderer.style
    assert renderer.ground.lookup(np.array([12.0]), np.array([y_line]))[0] == MARKING
    # The marking is the brightest ground material: the projected pixel is light grey/white.
    assert image[row, col].mean() > 255 * style.asphalt.mean() + 40
    # Between the edges, on the asphalt of the ego's lane, it is dark.
    row_a, col_a = project(cam, (12.0, 0.0, 0.0))
    assert image[row_a, col_a].mean() < image[row, col].mean() - 40


def test_left_edge_is_left_of_image_centre(renderer):
    cam = RigConfig().cameras[0]
    _, col_left = project(cam, (10.0, -2.0, 0.0))
    _, col_right = project(cam, (10.0, 2.0, 0.0))
    assert col_left < 32 < col_right


def test_render_is_deterministic_and_uint8(renderer):
    a = renderer.render(EGO, car(20.0, 4.0))
    b = renderer.render(EGO, car(20.0, 4.0))
    assert a.dtype == np.uint8 and a.shape == (7, 64, 64, 3)
    np.testing.assert_array_equal(a, b)


def test_roadside_structures_are_deterministic_and_off_the_road():
    lanes = two_lane_road()
    a, b = Renderer(), Renderer()
    a.set_scene(lanes, seed=5)
    b.set_scene(lanes, seed=5)
    props = a._nearby_props(0.0, 0.0)
    np.testing.assert_array_equal(props, b._nearby_props(0.0, 0.0))
    assert len(props) > 0
    dist = a.ground.signed_distance(props[:, 0], props[:, 1])
    assert (dist >= 3.0).all()


def test_supersampling_keeps_the_image_size():
    r = Renderer(RigConfig(), RendererConfig(supersample=2, prop_distance=0.0))
    r.set_scene(two_lane_road(), seed=1)
    assert r.render(EGO, car(20.0, 0.0)).shape == (7, 64, 64, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 60}, "multiple of 8"),
        ({"cameras": ()}, "no cameras"),
        ({"cameras": (CameraSpec("a", 0, 90), CameraSpec("a", 10, 90))}, "appears twice"),
        ({"cameras": (CameraSpec("a", 0, 200),)}, "fov"),
        ({"cameras": (CameraSpec("a", 0, 90, height=-1),)}, "height"),
        ({"cameras": ({"name": "a", "yaw": 0, "fov": 90, "zoom": 2},)}, "accepted keys"),
    ],
)
def test_bad_rig_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RigConfig(**kwargs)


def test_rig_from_dict_rejects_unknown_settings():
    with pytest.raises(ValueError, match="accepted: cameras, height, width"):
        RigConfig.from_dict({"heigth": 64})


def test_renderer_config_is_validated():
    with pytest.raises(ValueError, match="supersample"):
        RendererConfig(supersample=5)
