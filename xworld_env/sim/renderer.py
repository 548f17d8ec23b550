"""Vectorised seven-camera renderer of a highway-env world.

Every camera pixel is a ray cast from the camera into the scene:

* rays that go down hit the ground plane; the ground's material (verge, asphalt, lane marking)
  comes from a top-down map computed lazily in square tiles from the real lane geometry
  (straight, sine and circular lanes) and cached for the episode;
* vehicles and roadside structures (trees, poles, buildings) are oriented boxes, tested only
  against the pixels inside their projected screen rectangle;
* what no ray hits is sky; everything fades into distance fog.

Coordinates are highway-env's ground plane: x and y in metres, y to the right of a car
heading along +x, heading angles in radians turning from +x toward +y, z up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xworld_env.sim.rig import RigConfig, camera_offset, camera_rays

GRASS, ASPHALT, MARKING = 0, 1, 2

#: Lane line types, as highway-env numbers them.
LINE_NONE, LINE_STRIPED, LINE_CONTINUOUS, LINE_CONTINUOUS_LINE = 0, 1, 2, 3

#: Corner pairs of the 12 edges of a box, corners numbered as in ``Renderer._cast_boxes``.
_EDGES = np.array(
    [[0, 1], [0, 2], [1, 3], [2, 3], [4, 5], [4, 6], [5, 7], [6, 7], [0, 4], [1, 5], [2, 6], [3, 7]]
)

_STRIPE_PERIOD, _STRIPE_LENGTH, _LINE_HALF_WIDTH = 8.0, 3.0, 0.18


@dataclass(frozen=True)
class RendererConfig:
    """Renderer settings.

    Attributes:
        max_distance: ground beyond this many metres is drawn as fog.
        fog_distance: e-folding distance of the fog, metres.
        tile_size: side of one lazily computed ground-map tile, metres.
        texel: ground-map resolution, metres.
        supersample: rays per pixel side (1 = one ray per pixel; 2 = 2×2 rays averaged).
        prop_distance: roadside structures are placed up to about this far from the ego, metres.
    """

    max_distance: float = 150.0
    fog_distance: float = 90.0
    tile_size: float = 32.0
    texel: float = 0.2
    supersample: int = 1
    prop_distance: float = 100.0

    def __post_init__(self) -> None:
        if not self.fog_distance > 0 and self.max_distance > 0:
            raise ValueError("fog_distance and max_distance must be positive")
        if self.supersample not in (1, 2, 3, 4):
            raise ValueError(f"supersample must be 1, 2, 3 or 4, got {self.supersample!r}")
        if not 0 < self.texel < self.tile_size:
            raise ValueError("texel must be positive and smaller than tile_size")


@dataclass(frozen=True)
class Style:
    """Colours and light of one scene, drawn from its seed (time of day, paint, vegetation)."""

    sky_top: np.ndarray
    sky_horizon: np.ndarray
    fog: np.ndarray
    grass: np.ndarray
    asphalt: np.ndarray
    marking: np.ndarray
    sun: np.ndarray  # unit vector toward the sun
    ambient: float

    @classmethod
    def from_seed(cls, seed: int) -> Style:
        rng = np.random.default_rng([seed, 7])
        daylight = rng.uniform(0.45, 1.0)  # dusk .. noon
        warm = 1.0 - daylight
        sky_top = np.array([0.25, 0.45, 0.85]) * daylight + np.array([0.25, 0.15, 0.3]) * warm
        sky_horizon = np.array([0.75, 0.82, 0.92]) * daylight + np.array([0.85, 0.5, 0.3]) * warm
        grass = np.array([0.25, 0.45, 0.18]) * rng.uniform(0.8, 1.2, 3) * (0.5 + 0.5 * daylight)
        asphalt = np.full(3, rng.uniform(0.22, 0.38)) * (0.6 + 0.4 * daylight)
        elevation = np.radians(10.0 + 60.0 * daylight)
        azimuth = rng.uniform(0, 2 * np.pi)
        sun = np.array(
            [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation),
             np.sin(elevation)]
        )
        return cls(
            sky_top=np.clip(sky_top, 0, 1),
            sky_horizon=np.clip(sky_horizon, 0, 1),
            fog=np.clip(sky_horizon * 0.9 + 0.05, 0, 1),
            grass=np.clip(grass, 0, 1),
            asphalt=asphalt,
            marking=np.array([0.92, 0.92, 0.88]) * (0.6 + 0.4 * daylight),
            sun=sun,
            ambient=0.45 + 0.2 * (1 - daylight),
        )


class LaneGeometry:
    """Vectorised lane-local coordinates for every lane of a road network.

    Mirrors highway-env's ``local_coordinates`` of ``StraightLane``, ``SineLane`` and
    ``CircularLane`` for many points at once.
    """

    def __init__(self, lanes: list) -> None:
        self.lanes = []
        for lane in lanes:
            kind = type(lane).__name__
            if kind not in ("StraightLane", "SineLane", "CircularLane"):
                raise ValueError(
                    f"cannot render lane type {kind}; supported: StraightLane, SineLane, "
                    "CircularLane"
                )
            self.lanes.append(lane)
        self.bounds = np.array([self._bounds(lane) for lane in self.lanes]).reshape(-1, 4)

    @staticmethod
    def _bounds(lane) -> tuple[float, float, float, float]:
        pad = lane.width + 2.0
        if type(lane).__name__ == "CircularLane":
            cx, cy = lane.center
            r = lane.radius + pad
            return cx - r, cy - r, cx + r, cy + r
        amp = abs(getattr(lane, "amplitude", 0.0))
        xs = [lane.start[0], lane.end[0]]
        ys = [lane.start[1], lane.end[1]]
        return min(xs) - pad - amp, min(ys) - pad - amp, max(xs) + pad + amp, max(ys) + pad + amp

    def near(self, x0: float, y0: float, x1: float, y1: float, margin: float = 0.0) -> list[int]:
        """Indices of lanes whose bounding box meets the rectangle."""
        b = self.bounds
        hit = (b[:, 0] <= x1 + margin) & (b[:, 2] >= x0 - margin)
        hit &= (b[:, 1] <= y1 + margin) & (b[:, 3] >= y0 - margin)
        return list(np.flatnonzero(hit))

    def local(self, index: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Longitudinal and lateral coordinates of points (x, y) in lane ``index``."""
        lane = self.lanes[index]
        kind = type(lane).__name__
        if kind == "CircularLane":
            dx, dy = x - lane.center[0], y - lane.center[1]
            phi = np.arctan2(dy, dx)
            phi = lane.start_phase + _wrap(phi - lane.start_phase)
            r = np.hypot(dx, dy)
            return lane.direction * (phi - lane.start_phase) * lane.radius, lane.direction * (
                lane.radius - r
            )
        dx, dy = x - lane.start[0], y - lane.start[1]
        s = dx * lane.direction[0] + dy * lane.direction[1]
        r = dx * lane.direction_lateral[0] + dy * lane.direction_lateral[1]
        if kind == "SineLane":
            r = r - lane.amplitude * np.sin(lane.pulsation * s + lane.phase)
        return s, r


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer coordinates."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


class GroundMap:
    """Top-down material map and roadside structures, computed tile by tile on demand."""

    def __init__(self, geometry: LaneGeometry, config: RendererConfig, seed: int) -> None:
        self.geometry = geometry
        self.config = config
        self.seed = seed
        self.n = int(round(config.tile_size / config.texel))
        self._tiles: dict[tuple[int, int], int] = {}
        self._materials: list[np.ndarray] = []
        self._props: dict[tuple[int, int], np.ndarray] = {}

    def _tile(self, key: tuple[int, int]) -> int:
        slot = self._tiles.get(key)
        if slot is None:
            slot = len(self._materials)
            self._materials.append(self._compute_tile(key))
            self._tiles[key] = slot
        return slot

    def _compute_tile(self, key: tuple[int, int]) -> np.ndarray:
        size, n = self.config.tile_size, self.n
        x0, y0 = key[0] * size, key[1] * size
        centres = (np.arange(n) + 0.5) * self.config.texel
        x, y = np.meshgrid(x0 + centres, y0 + centres, indexing="ij")
        material = np.zeros((n, n), dtype=np.uint8)
        marking = np.zeros((n, n), dtype=bool)
        for i in self.geometry.near(x0, y0, x0 + size, y0 + size):
            lane = self.geometry.lanes[i]
            s, r = self.geometry.local(i, x, y)
            along = (s >= 0) & (s <= lane.length)
            half = lane.width / 2.0
            material[along & (np.abs(r) <= half + 0.05)] = ASPHALT
            for side, line in enumerate(lane.line_types):
                if line == LINE_NONE:
                    continue
                on_line = along & (np.abs(r - (side - 0.5) * lane.width) < _LINE_HALF_WIDTH)
                if line == LINE_STRIPED:
                    on_line &= np.mod(s, _STRIPE_PERIOD) < _STRIPE_LENGTH
                marking |= on_line
        material[marking] = MARKING
        return material

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Material ids of ground points."""
        size, n = self.config.tile_size, self.n
        tx, ty = np.floor(x / size).astype(np.int64), np.floor(y / size).astype(np.int64)
        keys = tx * 1_000_003 + ty
        uniq, inverse = np.unique(keys, return_inverse=True)
        slots = np.empty(len(uniq), dtype=np.int64)
        for j, k in enumerate(uniq):
            kx = int(np.floor((k + 500_001) / 1_000_003))
            slots[j] = self._tile((kx, int(k - kx * 1_000_003)))
        atlas = np.stack(self._materials)
        ix = np.clip(((x - tx * size) / self.config.texel).astype(np.int64), 0, n - 1)
        iy = np.clip(((y - ty * size) / self.config.texel).astype(np.int64), 0, n - 1)
        return atlas[slots[inverse], ix, iy]

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance from points to the nearest lane surface, metres (0 on the road)."""
        dist = np.full(x.shape, np.inf)
        if len(x) == 0:
            return dist
        for i in self.geometry.near(x.min(), y.min(), x.max(), y.max(), margin=40.0):
            lane = self.geometry.lanes[i]
            s, r = self.geometry.local(i, x, y)
            ds = np.maximum(np.maximum(-s, s - lane.length), 0.0)
            dr = np.maximum(np.abs(r) - lane.width / 2.0, 0.0)
            dist = np.minimum(dist, np.hypot(ds, dr))
        return dist

    def props(self, key: tuple[int, int]) -> np.ndarray:
        """Roadside structures of a tile as boxes (see ``Renderer.render`` for the layout)."""
        found = self._props.get(key)
        if found is None:
            found = self._place_props(key)
            self._props[key] = found
        return found

    def _place_props(self, key: tuple[int, int]) -> np.ndarray:
        size, cell = self.config.tile_size, 8.0
        per = int(size / cell)
        gx, gy = np.meshgrid(
            key[0] * per + np.arange(per), key[1] * per + np.arange(per), indexing="ij"
        )
        gx, gy = gx.ravel(), gy.ravel()
        x = (gx + 0.2 + 0.6 * _hash01(gx, gy, self.seed)) * cell
        y = (gy + 0.2 + 0.6 * _hash01(gx, gy, self.seed + 1)) * cell
        kind = _hash01(gx, gy, self.seed + 2)
        size_r = _hash01(gx, gy, self.seed + 3)
        dist = self.signed_distance(x, y)
        boxes = []
        for i in range(len(x)):
            d, k, r = dist[i], kind[i], size_r[i]
            if d < 3.0 or d > 40.0:
                continue
            yaw = _hash01(gx[i : i + 1], gy[i : i + 1], self.seed + 4)[0] * np.pi
            colour = _hash01(gx[i : i + 1], gy[i : i + 1], self.seed + 5)[0]
            if d < 6.0 and k < 0.25:  # pole by the kerb
                boxes.append((x[i], y[i], 0.0, 0.15, 0.15, 0.0, 5.0 + 2 * r, 0.55, 0.55, 0.58))
            elif d < 18.0 and k < 0.75:  # tree: trunk and crown
                hgt = 3.0 + 3.0 * r
                boxes.append((x[i], y[i], yaw, 0.25, 0.25, 0.0, hgt * 0.5, 0.4, 0.28, 0.15))
                g = 0.3 + 0.25 * colour
                boxes.append(
                    (x[i], y[i], yaw, 1.2 + r, 1.2 + r, hgt * 0.4, hgt, 0.12, g, 0.1)
                )
            elif d >= 10.0 and k >= 0.5:  # building
                hue = np.array([0.75, 0.62, 0.5]) if colour < 0.5 else np.array([0.6, 0.6, 0.68])
                tint = hue * (0.7 + 0.5 * r)
                boxes.append((x[i], y[i], yaw, 2.5 + 3 * r, 2.5 + 2 * colour, 0.0,
                              4.0 + 10.0 * r, *np.clip(tint, 0, 1)))
        return np.array(boxes, dtype=np.float64).reshape(-1, 10)


class Renderer:
    """Renders the seven views of the rig for one world.

    Call ``set_scene`` once per episode (lanes and seed), then ``render`` for every frame.
    """

    def __init__(self, rig: RigConfig | None = None, config: RendererConfig | None = None) -> None:
        self.rig = rig or RigConfig()
        self.config = config or RendererConfig()
        ss = self.config.supersample
        self._h, self._w = self.rig.height * ss, self.rig.width * ss
        self._rays = np.stack([camera_rays(c, self._h, self._w) for c in self.rig.cameras])
        self._offsets = np.stack([camera_offset(c) for c in self.rig.cameras])
        self._focal = np.array(
            [0.5 * self._w / np.tan(np.radians(c.fov) / 2.0) for c in self.rig.cameras]
        )
        self.ground: GroundMap | None = None
        self.style: Style | None = None

    def set_scene(self, lanes: list, seed: int) -> None:
        """Starts a new scene: the road network's lanes and the seed of its look."""
        self.ground = GroundMap(LaneGeometry(lanes), self.config, seed)
        self.style = Style.from_seed(seed)

    def render(self, ego: tuple[float, float, float], vehicles: np.ndarray) -> np.ndarray:
        """Renders every camera.

        Args:
            ego: (x, y, heading) of the ego car.
            vehicles: float array (n, 10) of boxes ``x, y, heading, half_length, half_width,
                z_bottom, z_top, r, g, b`` (colours in [0, 1]).

        Returns:
            uint8 array (v, h, w, 3).
        """
        if self.ground is None or self.style is None:
            raise RuntimeError("Renderer.render called before set_scene")
        ex, ey, eh = ego
        v, h, w = len(self.rig.cameras), self._h, self._w
        rot = np.array([[np.cos(eh), -np.sin(eh), 0.0], [np.sin(eh), np.cos(eh), 0.0],
                        [0.0, 0.0, 1.0]])
        dirs = self._rays.reshape(v, h * w, 3) @ rot.T  # (v, hw, 3) in world axes
        origins = self._offsets @ rot.T + np.array([ex, ey, 0.0])  # (v, 3)
        n_pix = v * h * w
        depth = np.full(n_pix, np.inf)
        colour = np.zeros((n_pix, 3))
        boxes = np.concatenate([vehicles.reshape(-1, 10), self._nearby_props(ex, ey)])
        self._cast_boxes(boxes, origins, dirs, rot, depth, colour)
        flat_dirs = dirs.reshape(n_pix, 3)
        flat_orig = np.repeat(origins, h * w, axis=0)
        self._shade_ground(flat_orig, flat_dirs, depth, colour)
        image = colour.reshape(v, h, w, 3)
        ss = self.config.supersample
        if ss > 1:
            image = image.reshape(v, h // ss, ss, w // ss, ss, 3).mean(axis=(2, 4))
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _nearby_props(self, x: float, y: float) -> np.ndarray:
        size = self.config.tile_size
        reach = int(np.ceil(self.config.prop_distance / size))
        cx, cy = int(np.floor(x / size)), int(np.floor(y / size))
        found = [
            self.ground.props((cx + i, cy + j))
            for i in range(-reach, reach + 1)
            for j in range(-reach, reach + 1)
            if (i * i + j * j) <= (reach + 1) ** 2
        ]
        return np.concatenate(found) if found else np.zeros((0, 10))

    def _cast_boxes(self, boxes, origins, dirs, rot, depth, colour) -> None:
        if len(boxes) == 0:
            return
        h, w = self._h, self._w
        # Screen rectangles of all boxes in all cameras, from their 8 corners.
        cos_b, sin_b = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
        sx = np.array([1, 1, -1, -1, 1, 1, -1, -1])
        sy = np.array([1, -1, 1, -1, 1, -1, 1, -1])
        lx, ly = sx[None] * boxes[:, 3:4], sy[None] * boxes[:, 4:5]
        corners = np.stack(
            [boxes[:, :1] + lx * cos_b[:, None] - ly * sin_b[:, None],
             boxes[:, 1:2] + lx * sin_b[:, None] + ly * cos_b[:, None],
             np.where(np.arange(8)[None] < 4, boxes[:, 5:6], boxes[:, 6:7])], axis=-1
        )  # (n, 8, 3)
        rel = corners[None] - origins[:, None, None, :]  # (v, n, 8, 3)
        cam = np.einsum("vnkc,vac->vnka", rel, self._camera_axes(rot))  # forward, right, down
        near = 0.05
        # Clip every box edge that crosses the near plane, so that boxes beside or partly
        # behind a camera still get a tight screen rectangle.
        a, b = cam[:, :, _EDGES[:, 0]], cam[:, :, _EDGES[:, 1]]  # (v, n, 12, 3)
        da, db = a[..., 0] - near, b[..., 0] - near
        crosses = (da > 0) != (db > 0)
        frac = np.where(crosses, da / np.where(crosses, da - db, 1.0), 0.0)
        clip_pts = a + frac[..., None] * (b - a)
        pts = np.concatenate([cam, clip_pts], axis=2)  # (v, n, 20, 3)
        usable = np.concatenate([cam[..., 0] > near, crosses], axis=2)
        reach = np.linalg.norm(rel[..., :2], axis=-1).min(axis=-1) < self.config.max_distance
        depth_c = np.maximum(pts[..., 0], near)
        f = self._focal[:, None, None]
        u, t = pts[..., 1] / depth_c * f + w / 2.0, pts[..., 2] / depth_c * f + h / 2.0
        big = 1e9
        u0 = np.floor(np.where(usable, u, big).min(-1)).clip(0, w).astype(np.int64)
        u1 = np.ceil(np.where(usable, u, -big).max(-1)).clip(0, w).astype(np.int64)
        r0 = np.floor(np.where(usable, t, big).min(-1)).clip(0, h).astype(np.int64)
        r1 = np.ceil(np.where(usable, t, -big).max(-1)).clip(0, h).astype(np.int64)
        in_front = usable
        visible = in_front.any(axis=-1) & reach & (u1 > u0) & (r1 > r0)
        pv, pb = np.nonzero(visible)
        if len(pv) == 0:
            return
        pu0, pr0 = u0[pv, pb], r0[pv, pb]
        pw, ph = u1[pv, pb] - pu0, r1[pv, pb] - pr0
        area = pw * ph
        pair = np.repeat(np.arange(len(pv)), area)
        k = np.arange(len(pair)) - np.repeat(np.cumsum(area) - area, area)
        idx = pv[pair] * h * w + (pr0[pair] + k // pw[pair]) * w + pu0[pair] + k % pw[pair]
        t_hit, normal = _ray_boxes(origins[pv[pair]], dirs.reshape(-1, 3)[idx], boxes[pb[pair]])
        hit = np.isfinite(t_hit)
        idx, t_hit, normal, box_of = idx[hit], t_hit[hit], normal[hit], pb[pair[hit]]
        # Nearest hit per pixel: sort by pixel then distance, keep the first of each pixel.
        order = np.lexsort((t_hit, idx))
        idx, t_hit, normal, box_of = idx[order], t_hit[order], normal[order], box_of[order]
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        idx, t_hit, normal, box_of = idx[first], t_hit[first], normal[first], box_of[first]
        depth[idx] = t_hit
        style = self.style
        light = style.ambient + (1 - style.ambient) * np.clip(normal @ style.sun, 0, 1)
        colour[idx] = boxes[box_of, 7:10] * light[:, None]
        self._fog(colour, np.isfinite(depth), depth)

    def _camera_axes(self, rot: np.ndarray) -> np.ndarray:
        axes = []
        for cam in self.rig.cameras:
            fwd, right, down = _camera_basis(cam)
            axes.append(np.stack([rot @ fwd, rot @ right, rot @ down]))
        return np.stack(axes)

    def _shade_ground(self, origins, dirs, depth, colour) -> None:
        style, cfg = self.style, self.config
        dz = dirs[:, 2]
        t_ground = np.where(dz < -1e-6, origins[:, 2] / np.maximum(-dz, 1e-6), np.inf)
        horizontal = t_ground * np.hypot(dirs[:, 0], dirs[:, 1])
        ground = (t_ground < depth) & (horizontal < cfg.max_distance)
        sky = ~np.isfinite(depth) & ~ground
        gi = np.flatnonzero(ground)
        gx = origins[gi, 0] + t_ground[gi] * dirs[gi, 0]
        gy = origins[gi, 1] + t_ground[gi] * dirs[gi, 1]
        material = self.ground.lookup(gx, gy)
        palette = np.stack([style.grass, style.asphalt, style.marking])
        base = palette[material]
        # Blocky value noise gives the ground texture the motion cues a flat colour lacks.
        cell = np.floor(gx / 1.5), np.floor(gy / 1.5)
        noise = _hash01(cell[0].astype(np.int64), cell[1].astype(np.int64), 11)
        amp = np.where(material == GRASS, 0.22, 0.06)
        sun = style.ambient + (1 - style.ambient) * max(style.sun[2], 0.0)
        colour[gi] = base * (sun * (1.0 + amp * (noise - 0.5)))[:, None]
        depth[gi] = t_ground[gi]
        far = (depth == np.inf) & (dz < 0)
        colour[far] = style.fog
        elevation = np.clip(dz[sky], 0.0, 1.0)
        mix = np.sqrt(elevation)[:, None]
        colour[sky] = style.sky_horizon * (1 - mix) + style.sky_top * mix
        self._fog(colour, ground, depth)

    def _fog(self, colour: np.ndarray, mask: np.ndarray, depth: np.ndarray) -> None:
        # Applied once to boxes and once to ground: masks are disjoint by depth order.
        if not mask.any():
            return
        amount = 1.0 - np.exp(-depth[mask] / self.config.fog_distance)
        colour[mask] = colour[mask] * (1 - amount[:, None]) + self.style.fog * amount[:, None]


def _camera_basis(cam) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yaw, pitch = np.radians(-cam.yaw), np.radians(cam.pitch)
    fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    up = np.array([-np.cos(yaw) * np.sin(pitch), -np.sin(yaw) * np.sin(pitch), np.cos(pitch)])
    return fwd, right, -up


def _ray_boxes(origins: np.ndarray, dirs: np.ndarray, boxes: np.ndarray):
    """Distance along each ray to its oriented box, and the world normal of the face hit.

    Args:
        origins, dirs: (n, 3) rays. boxes: (n, >=7) one box per ray (see ``Renderer.render``).

    Returns:
        (t (n,), normal (n, 3)); t is inf where the ray misses.
    """
    c, s = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
    ox, oy = origins[:, 0] - boxes[:, 0], origins[:, 1] - boxes[:, 1]
    lo = np.stack([ox * c + oy * s, -ox * s + oy * c,
                   origins[:, 2] - (boxes[:, 5] + boxes[:, 6]) / 2.0], axis=-1)
    ld = np.stack([dirs[:, 0] * c + dirs[:, 1] * s, -dirs[:, 0] * s + dirs[:, 1] * c,
                   dirs[:, 2]], axis=-1)
    half = np.stack([boxes[:, 3], boxes[:, 4], (boxes[:, 6] - boxes[:, 5]) / 2.0], axis=-1)
    inv = 1.0 / np.where(np.abs(ld) < 1e-12, 1e-12, ld)
    t1, t2 = (-half - lo) * inv, (half - lo) * inv
    t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = np.argmax(t_near, axis=1)
    rows = np.arange(len(ld))
    t_in = t_near[rows, axis]
    hit = (t_far.min(axis=1) >= t_in) & (t_in > 0)
    local_n = np.zeros_like(ld)
    local_n[rows, axis] = -np.sign(ld[rows, axis])
    normal = np.stack([local_n[:, 0] * c - local_n[:, 1] * s, local_n[:, 0] * s + local_n[:, 1] * c,
                       local_n[:, 2]], axis=-1)
    return np.where(hit, t_in, np.inf), normal
