"""Shards → torch ``Dataset`` of fixed-length windows of consecutive chunks.

The index of windows comes from the manifest alone; a shard is opened only when one of its
windows is read, and only the last few shards read stay in memory. Random access across many
shards therefore decompresses a shard per item: :class:`ShardGroupedSampler` shuffles the shard
order and the windows within each shard instead, so each shard is read once per epoch.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from xworld_env.data.shards import (
    SHARD_ARRAYS,
    DatasetError,
    is_validation_seed,
    read_manifest,
)

SPLITS = ("train", "val")


class ShardDataset(Dataset):
    """Windows of ``window`` consecutive valid chunks from one split of a generated dataset.

    Items are dicts of tensors (``K`` = window, other letters as in :mod:`xworld_env.types`):
    ``frames`` uint8 (K, F, V, H, W, 3), ``actions`` float32 (K, 2), ``ego`` float32 (K, 3),
    ``reward`` float32 (K,), ``collision``/``off_road``/``valid`` bool (K,), ``family`` int64
    (index into :attr:`families`), ``seed`` int64 (episode seed) and ``start`` int64 (chunk
    index of the window's first chunk in its episode).

    Args:
        root: dataset folder written by ``xworld generate``.
        split: ``"train"`` or ``"val"``, by episode seed (``shards.is_validation_seed`` with the
            dataset's ``val_every``).
        window: chunks per item, ``K >= 1``.
        stride: chunks between the starts of consecutive windows of an episode.
        cache_shards: decompressed shards kept in memory (per worker process).

    Raises:
        FileNotFoundError: missing folder, manifest or shard file.
        DatasetError: manifest of another format or version, a shard whose size or contents
            disagree with the manifest (when the shard is read), or a split with no window.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        window: int = 4,
        stride: int = 1,
        cache_shards: int = 2,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, value in (("window", window), ("stride", stride), ("cache_shards", cache_shards)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.root = Path(root)
        self.split, self.window, self.stride = split, window, stride
        self.cache_shards = cache_shards
        self.manifest = read_manifest(self.root)
        self.layout = self.manifest["layout"]
        #: Family names; the ``family`` of an item indexes this tuple.
        self.families: tuple[str, ...] = tuple(self.manifest["families"])
        if not self.manifest.get("complete", False):
            warnings.warn(
                f"dataset {self.root} is incomplete (generation was interrupted); using the "
                f"{len(self.manifest['shards'])} shards written so far",
                stacklevel=2,
            )
        if window > self.layout["chunks_per_episode"]:
            raise ValueError(
                f"window={window} is longer than the episodes of {self.root} "
                f"({self.layout['chunks_per_episode']} chunks)"
            )
        self.shards: list[dict] = self.manifest["shards"]
        self._check_files()
        self._index = self._build_index()
        if len(self._index) == 0:
            raise DatasetError(
                f"the {split} split of {self.root} has no window of {window} valid chunks "
                f"({sum(len(s['episodes']) for s in self.shards)} episodes in all); generate more "
                "or longer episodes, or use a shorter window"
            )
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        shard, episode, start = (int(x) for x in self._index[index])
        arrays = self._load(shard)
        window = slice(start, start + self.window)
        item = {
            key: torch.from_numpy(np.ascontiguousarray(arrays[key][episode, window]))
            for key in ("frames", "actions", "ego", "reward", "collision", "off_road", "valid")
        }
        item["family"] = torch.tensor(self.families.index(str(arrays["family"][episode])))
        item["seed"] = torch.tensor(int(arrays["seed"][episode]))
        item["start"] = torch.tensor(start)
        return item

    def shard_of(self, index: int) -> int:
        """The shard (position in the manifest) holding window ``index``."""
        return int(self._index[index, 0])

    @property
    def seeds(self) -> list[int]:
        """Episode seeds of this split (every episode, even one too short for a window)."""
        val = self.split == "val"
        every = self.manifest["split"]["val_every"]
        return [
            e["seed"] for s in self.shards for e in s["episodes"]
            if is_validation_seed(e["seed"], every) == val
        ]

    def __getstate__(self) -> dict:
        # DataLoader workers get their own (empty) cache instead of a pickled copy of ours.
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    # Internals -------------------------------------------------------------------------------

    def _check_files(self) -> None:
        for entry in self.shards:
            path = self.root / entry["file"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"shard {path} is listed in the manifest but missing; rerun `xworld generate` "
                    "with the dataset's config to regenerate it"
                )
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise DatasetError(
                    f"shard {path} has {size} bytes, the manifest expects {entry['bytes']}: the "
                    "file was truncated or replaced; delete it and rerun `xworld generate` with "
                    "the dataset's config"
                )

    def _build_index(self) -> np.ndarray:
        val = self.split == "val"
        every = self.manifest["split"]["val_every"]
        rows = []
        for s, entry in enumerate(self.shards):
            for e, episode in enumerate(entry["episodes"]):
                if is_validation_seed(episode["seed"], every) != val:
                    continue
                for start in range(0, episode["length"] - self.window + 1, self.stride):
                    rows.append((s, e, start))
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def _load(self, shard: int) -> dict[str, np.ndarray]:
        arrays = self._cache.get(shard)
        if arrays is not None:
            self._cache.move_to_end(shard)
            return arrays
        arrays = load_shard(self.root / self.shards[shard]["file"], self.layout,
                            self.shards[shard])
        self._cache[shard] = arrays
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return arrays


def load_shard(
    path: Path, layout: dict, entry: dict | None = None, keys: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Reads the arrays of a shard and checks them against the dataset's layout.

    Args:
        path: the shard file.
        layout: the manifest's ``layout``.
        entry: the shard's manifest entry; if given, its episode seeds must match the shard's.
        keys: arrays to read (``seed`` always is); None for all of them. Only the arrays read
            are decompressed, so reading the small ones is cheap.

    Raises:
        DatasetError: unreadable file, missing array, or an array of the wrong dtype or shape;
            the message names the file and what was expected.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(set(SHARD_ARRAYS) - set(npz.files))
            if missing:
                raise DatasetError(f"shard {path} lacks the array(s) {missing}; expected "
                                   f"{sorted(SHARD_ARRAYS)}. Regenerate it with `xworld generate`")
            wanted = SHARD_ARRAYS if keys is None else {"seed", *keys}
            arrays = {key: npz[key] for key in SHARD_ARRAYS if key in wanted}
    except DatasetError:
        raise
    except Exception as err:  # zipfile, zlib and numpy each raise their own kinds
        raise DatasetError(
            f"shard {path} is unreadable or corrupt ({type(err).__name__}: {err}); delete it and "
            "rerun `xworld generate` with the dataset's config to regenerate it"
        ) from None
    e = len(arrays["seed"])
    t = layout["chunks_per_episode"]
    expected = {
        "frames": (e, t, layout["frames_per_chunk"], len(layout["cameras"]), layout["height"],
                   layout["width"], 3),
        "actions": (e, t, 2),
        "ego": (e, t, len(layout["ego_fields"])),
        "reward": (e, t),
        "collision": (e, t),
        "off_road": (e, t),
        "valid": (e, t),
        "family": (e,),
        "seed": (e,),
    }
    for key, kind in SHARD_ARRAYS.items():
        if key not in arrays:
            continue
        arr = arrays[key]
        if arr.dtype.kind != kind or arr.shape != expected[key]:
            raise DatasetError(
                f"shard {path}: array {key!r} is {arr.dtype} {arr.shape}, expected dtype kind "
                f"{kind!r} and shape {expected[key]}; regenerate it with `xworld generate`"
            )
    if entry is not None:
        listed = [ep["seed"] for ep in entry["episodes"]]
        if arrays["seed"].tolist() != listed:
            raise DatasetError(
                f"shard {path} holds episode seeds {arrays['seed'].tolist()}, the manifest lists "
                f"{listed}; the file was replaced: regenerate it with `xworld generate`"
            )
    return arrays


class ShardGroupedSampler(Sampler[int]):
    """Shuffles shards, then the windows within each shard, so each shard is decompressed once.

    With DataLoader workers, each worker decompresses the shards of the batches it is handed.

    Args:
        dataset: the dataset to sample.
        seed: seed of the shuffle; epoch ``n`` (see :meth:`set_epoch`) uses ``(seed, n)``.
    """

    def __init__(self, dataset: ShardDataset, seed: int = 0) -> None:
        self.shard_ids = dataset._index[:, 0]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffle of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shard_ids)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for shard in rng.permutation(np.unique(self.shard_ids)):
            yield from (int(i) for i in rng.permutation(np.flatnonzero(self.shard_ids == shard)))
