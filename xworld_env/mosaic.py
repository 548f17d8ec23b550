"""The labelled seven-view mosaic shown by ``render()``, videos and contact sheets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

#: Where each camera goes in the 2 × 4 mosaic, arranged as seen from the driver's seat.
MOSAIC_LAYOUT: dict[str, tuple[int, int]] = {
    "front_left": (0, 0),
    "front_wide": (0, 1),
    "front_narrow": (0, 2),
    "front_right": (0, 3),
    "rear_left": (1, 0),
    "rear": (1, 1),
    "rear_right": (1, 3),
}

_LABEL_H = 11
_BACKGROUND = (24, 24, 28)


def mosaic(
    views: np.ndarray, names: Sequence[str], scale: int = 2, title: str | None = None
) -> np.ndarray:
    """Arranges camera images in a labelled grid.

    Args:
        views: uint8 (v, h, w, 3), ordered as ``names``.
        names: camera names; known names take their place in ``MOSAIC_LAYOUT``, others follow.
        scale: integer upscaling of every view (nearest neighbour).
        title: optional line of text above the grid.

    Returns:
        uint8 (H, W, 3) image.
    """
    views = np.asarray(views)
    if views.ndim != 4 or views.shape[0] != len(names) or views.shape[-1] != 3:
        raise ValueError(
            f"views must be (v, h, w, 3) with v = {len(names)} names, got {views.shape}"
        )
    h, w = views.shape[1] * scale, views.shape[2] * scale
    places, spare = {}, 0
    for name in names:
        if name in MOSAIC_LAYOUT:
            places[name] = MOSAIC_LAYOUT[name]
        else:
            places[name] = (2 + spare // 4, spare % 4)
            spare += 1
    rows = 1 + max(r for r, _ in places.values())
    top = _LABEL_H + 2 if title else 0
    canvas = Image.new("RGB", (4 * (w + 2), top + rows * (h + _LABEL_H + 2)), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((3, 0), title, fill=(235, 235, 235))
    for name, view in zip(names, views):
        r, c = places[name]
        x, y = c * (w + 2) + 1, top + r * (h + _LABEL_H + 2)
        draw.text((x + 2, y), name, fill=(220, 220, 220))
        tile = np.repeat(np.repeat(view, scale, axis=0), scale, axis=1)
        canvas.paste(Image.fromarray(tile), (x, y + _LABEL_H + 1))
    return np.asarray(canvas)


def contact_sheet(
    rows: Sequence[tuple[str, np.ndarray]], names: Sequence[str], scale: int = 3
) -> np.ndarray:
    """One labelled row of all camera views per entry, e.g. one row per scenario family.

    Args:
        rows: (label, views uint8 (v, h, w, 3)) pairs.
        names: camera names, ordered as the views.
        scale: integer upscaling of every view.
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    v, h, w = rows[0][1].shape[:3]
    h, w = h * scale, w * scale
    label_w = 90
    canvas = Image.new(
        "RGB", (label_w + v * (w + 2), _LABEL_H + 2 + len(rows) * (h + 2)), _BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((label_w + i * (w + 2) + 2, 0), name, fill=(220, 220, 220))
    for r, (label, views) in enumerate(rows):
        if views.shape[0] != len(names):
            raise ValueError(f"row {label!r} has {views.shape[0]} views for {len(names)} names")
        y = _LABEL_H + 2 + r * (h + 2)
        draw.text((4, y + h // 2 - 5), label, fill=(235, 235, 235))
        for i, view in enumerate(views):
            tile = np.repeat(np.repeat(view, scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(tile), (label_w + i * (w + 2), y))
    return np.asarray(canvas)
