"""The on-disk dataset format: shard names, the manifest, episode seeds and the train/val split.

A dataset is a folder of ``shard_{i:05d}.npz`` files and one ``manifest.json``. Each shard holds
``E`` episodes of ``T`` chunks (shape letters as in :mod:`xworld_env.types`):

    frames     uint8    (E, T, F, V, H, W, 3)  all frames of chunk t, cameras ordered as the rig
    actions    float32  (E, T, 2)              action applied to produce chunk t
    ego        float32  (E, T, 3)              ego state after chunk t, ordered as EGO_FIELDS
    reward     float32  (E, T)
    collision  bool     (E, T)
    off_road   bool     (E, T)
    valid      bool     (E, T)                 False after the episode ended (zero padding)
    family     str      (E,)
    seed       int64    (E,)

The manifest records the full configuration, the layout and, for every completed shard, its
episodes (seed, family, valid length, how it ended) and its size in bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xworld_env.types import FAMILIES

#: Name written in every manifest, so a foreign JSON file is not mistaken for a dataset.
FORMAT_NAME = "xworld-sim-shards"

#: Bumped whenever the arrays or the manifest change meaning; readers refuse other versions.
FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"

#: Arrays of a shard, with their dtype kind ("u" uint8, "f" float32, "b" bool, "U" str, "i" int64).
SHARD_ARRAYS: dict[str, str] = {
    "frames": "u",
    "actions": "f",
    "ego": "f",
    "reward": "f",
    "collision": "b",
    "off_road": "b",
    "valid": "b",
    "family": "U",
    "seed": "i",
}

#: Seeds reserved per family and per base seed; ``episode_seed`` reads as base|family|index.
SEEDS_PER_FAMILY = 1_000_000
SEEDS_PER_BASE = 10 * SEEDS_PER_FAMILY

#: Default of the validation rule: every ``VAL_EVERY``-th episode seed is held out.
VAL_EVERY = 10


class DatasetError(ValueError):
    """A dataset folder, manifest or shard that cannot be used as it is."""


def episode_seed(base_seed: int, family: str, index: int) -> int:
    """The seed of episode ``index`` of ``family``: ``base_seed * 10^7 + family_id * 10^6 + index``.

    ``family_id`` is the position in ``FAMILIES``, so the seeds of a family do not depend on
    which other families a dataset holds, and two base seeds never share an episode.
    """
    if not 0 <= index < SEEDS_PER_FAMILY:
        raise ValueError(f"episode index must be in [0, {SEEDS_PER_FAMILY}), got {index}")
    if base_seed < 0:
        raise ValueError(f"base_seed must be >= 0, got {base_seed}")
    return base_seed * SEEDS_PER_BASE + FAMILIES.index(family) * SEEDS_PER_FAMILY + index


def is_validation_seed(seed: int, val_every: int = VAL_EVERY) -> bool:
    """The split rule: an episode is held out for validation iff ``seed % val_every == 0``.

    With the seeds of :func:`episode_seed` this holds out episodes 0, ``val_every``,
    ``2 * val_every``, ... of every family (with ``base_seed * 10^7`` a multiple of it).
    """
    return int(seed) % int(val_every) == 0


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard_{index:05d}.npz"


def canonical(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(value))


def write_json_atomic(path: Path, value: Any) -> None:
    """Writes ``value`` as JSON so that readers see either the old file or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(root: Path) -> dict:
    """Reads and checks ``root/manifest.json``.

    Raises:
        FileNotFoundError: the folder or its manifest does not exist.
        DatasetError: the manifest is unreadable, of another format or of another version.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist; make one with `xworld generate data.out={root}`"
        )
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a dataset folder (or its generation never wrote a "
            "shard); make one with `xworld generate`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            f"manifest {path} is unreadable ({err}); regenerate the dataset"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not an xworld dataset manifest (expected format "
                           f"{FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {version!r}; this xworld-env reads version "
            f"{FORMAT_VERSION} only: regenerate the dataset with this version"
        )
    for key in ("config", "layout", "split", "shards"):
        if key not in manifest:
            raise DatasetError(f"manifest {path} lacks the {key!r} entry; regenerate the dataset")
    return manifest
