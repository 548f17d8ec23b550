"""The scenario bank: the starts that ``XWorld-v0`` episodes begin from.

A start is a few context chunks of a simulator episode (frames, actions, ego states) with which
the env primes the world model's KV cache. Starts are taken from the *validation* episodes of a
generated dataset, so an env episode never begins on a window the world model was trained on.
"""

from __future__ import annotations

import json
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xworld_env.config import build, compose
from xworld_env.data.dataset import load_shard
from xworld_env.data.shards import canonical, is_validation_seed, read_manifest
from xworld_env.types import FAMILIES

#: Bumped whenever the bank's arrays change meaning; :meth:`ScenarioBank.load` refuses others.
BANK_FORMAT_VERSION = 1

_BANK_ARRAYS = ("family", "seed", "start", "frames", "actions", "ego", "meta")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown scenario family {family!r}; accepted: {', '.join(FAMILIES)}")


@dataclass(frozen=True)
class Start:
    """One start of the bank (``C`` context chunks, letters as in :mod:`xworld_env.types`).

    Attributes:
        family: scenario family.
        seed: seed of the simulator episode it was cut from.
        start: chunk index of the first context chunk in that episode.
        frames: uint8 (C, F, V, H, W, 3) context frames.
        actions: float32 (C, 2) actions that produced each context chunk.
        ego: float32 (C, 3) ego state after each context chunk.
    """

    family: str
    seed: int
    start: int
    frames: np.ndarray
    actions: np.ndarray
    ego: np.ndarray


@dataclass(frozen=True)
class ScenarioBankConfig:
    """Settings of ``xworld scenario-bank`` (``configs/scenario_bank.yaml``).

    Attributes:
        dataset: dataset folder written by ``xworld generate``.
        out: the bank file to write (.npz).
        starts_per_family: starts of each family.
        context_chunks: context chunks ``C`` per start.
        families: families to include; None for every family the dataset holds.
        seed: seed of the choice of starts.
    """

    dataset: str = "data/xworld_sim"
    out: str = "data/scenario_bank.npz"
    starts_per_family: int = 8
    context_chunks: int = 2
    families: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.families is not None:
            object.__setattr__(self, "families", tuple(self.families))
        for name in ("starts_per_family", "context_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class ScenarioBank:
    """Starts grouped by family, loaded from a bank file.

    Attributes:
        meta: layout of the frames (cameras, image size, frames per chunk, context chunks) and
            where the bank came from.
    """

    def __init__(self, starts: list[Start], meta: dict) -> None:
        if not starts:
            raise ValueError("a scenario bank needs at least one start")
        for start in starts:
            _check_family(start.family)
        self.meta = meta
        self._starts = list(starts)
        self._by_family = {
            f: [s for s in starts if s.family == f] for f in FAMILIES
            if any(s.family == f for s in starts)
        }

    @property
    def families(self) -> tuple[str, ...]:
        """Families with at least one start, ordered as ``FAMILIES``."""
        return tuple(self._by_family)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> Start:
        return self._starts[index]

    def starts(self, family: str) -> list[Start]:
        """The starts of ``family``."""
        return list(self._by_family[self._check(family)])

    def sample(self, family: str | None, rng: np.random.Generator) -> Start:
        """A start of ``family``, or of a uniformly drawn family if None, uniform within it."""
        if family is None:
            family = self.families[int(rng.integers(len(self.families)))]
        starts = self._by_family[self._check(family)]
        return starts[int(rng.integers(len(starts)))]

    def _check(self, family: str) -> str:
        if family not in self._by_family:
            raise ValueError(
                f"unknown scenario family {family!r} for this scenario bank; accepted: "
                f"{', '.join(self.families)}"
            )
        return family

    @classmethod
    def load(cls, path: str | Path) -> ScenarioBank:
        """Reads a bank written by :func:`build_scenario_bank`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a readable bank of this format version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"scenario bank {path} not found; build one with `xworld scenario-bank`"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = sorted(set(_BANK_ARRAYS) - set(npz.files))
                if missing:
                    raise ValueError(f"lacks the array(s) {missing}")
                arrays = {key: npz[key] for key in _BANK_ARRAYS}
            meta = json.loads(str(arrays["meta"]))
            version = meta.get("format_version")
            if version != BANK_FORMAT_VERSION:
                raise ValueError(
                    f"has format version {version!r}, expected {BANK_FORMAT_VERSION}"
                )
            n, c = len(arrays["seed"]), meta["context_chunks"]
            shapes = {"family": (n,), "start": (n,), "actions": (n, c, 2), "ego": (n, c, 3),
                      "frames": (n, c, meta["frames_per_chunk"], len(meta["cameras"]),
                                 meta["height"], meta["width"], 3)}
            for key, shape in shapes.items():
                if arrays[key].shape != shape:
                    raise ValueError(
                        f"array {key!r} has shape {arrays[key].shape}, expected {shape}"
                    )
            if arrays["frames"].dtype != np.uint8:
                raise ValueError(f"frames are {arrays['frames'].dtype}, expected uint8")
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
                zlib.error) as err:
            raise ValueError(
                f"scenario bank {path} is unreadable or corrupt ({err}); rebuild it with "
                "`xworld scenario-bank`"
            ) from None
        starts = [
            Start(
                family=str(arrays["family"][i]),
                seed=int(arrays["seed"][i]),
                start=int(arrays["start"][i]),
                frames=arrays["frames"][i],
                actions=arrays["actions"][i].astype(np.float32),
                ego=arrays["ego"][i].astype(np.float32),
            )
            for i in range(n)
        ]
        try:
            return cls(starts, meta)
        except ValueError as err:
            raise ValueError(f"scenario bank {path}: {err}") from None


def build_scenario_bank(
    dataset_root: str | Path,
    out_path: str | Path,
    starts_per_family: int = 8,
    context_chunks: int = 2,
    families: tuple[str, ...] | None = None,
    seed: int = 0,
) -> ScenarioBank:
    """Cuts starts from the validation episodes of a dataset and writes them to ``out_path``.

    A start is ``context_chunks`` valid chunks of one episode without a collision or off-road
    event. Each family's starts come from distinct episodes while there are enough of them.

    Returns:
        The bank as written.

    Raises:
        ValueError: a requested family has no validation episode long enough (the message says
            how many there are), or an unknown family.
    """
    root = Path(dataset_root)
    manifest = read_manifest(root)
    layout, every = manifest["layout"], manifest["split"]["val_every"]
    if context_chunks > layout["chunks_per_episode"]:
        raise ValueError(f"context_chunks={context_chunks} is longer than the episodes of {root} "
                         f"({layout['chunks_per_episode']} chunks)")
    held = [
        (s, e, ep) for s, shard in enumerate(manifest["shards"])
        for e, ep in enumerate(shard["episodes"]) if is_validation_seed(ep["seed"], every)
    ]
    present = [f for f in FAMILIES if any(ep["family"] == f for _, _, ep in held)]
    if families is None:
        families = tuple(present)
    for family in families:
        _check_family(family)
        if family not in present:
            raise ValueError(
                f"family {family!r} has no validation episode in {root}; families with "
                f"validation episodes: {', '.join(present) or 'none'} (generate more episodes)"
            )
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int, int]] = []  # (shard, episode, start chunk)
    events: dict[int, np.ndarray] = {}

    def shard_args(shard: int) -> tuple:
        return root / manifest["shards"][shard]["file"], layout, manifest["shards"][shard]

    for family in families:
        candidates = []
        for s, e, ep in held:
            if ep["family"] != family or ep["length"] < context_chunks:
                continue
            if s not in events:
                small = load_shard(*shard_args(s), keys=("collision", "off_road"))
                events[s] = small["collision"] | small["off_road"]
            ok = [t for t in range(ep["length"] - context_chunks + 1)
                  if not events[s][e, t:t + context_chunks].any()]
            if ok:
                candidates.append((s, e, ok))
        if not candidates:
            raise ValueError(
                f"family {family!r}: no validation episode of {root} has {context_chunks} "
                "event-free chunks; generate more or longer episodes"
            )
        order = rng.permutation(len(candidates))
        for k in range(starts_per_family):
            s, e, ok = candidates[order[k % len(candidates)]]
            taken = {t for (s2, e2, t) in chosen if (s2, e2) == (s, e)}
            free = [t for t in ok if t not in taken] or ok
            chosen.append((s, e, int(free[int(rng.integers(len(free)))])))

    # One shard in memory at a time: only the chosen windows are kept.
    cut: dict[str, list] = {key: [None] * len(chosen) for key in
                            ("family", "seed", "frames", "actions", "ego")}
    for s in sorted({s for s, _, _ in chosen}):
        arrays = load_shard(*shard_args(s))
        for i, (s2, e, t) in enumerate(chosen):
            if s2 != s:
                continue
            cut["family"][i] = str(arrays["family"][e])
            cut["seed"][i] = int(arrays["seed"][e])
            for key in ("frames", "actions", "ego"):
                cut[key][i] = arrays[key][e, t:t + context_chunks].copy()

    meta = canonical({
        "format_version": BANK_FORMAT_VERSION,
        "context_chunks": context_chunks,
        "frames_per_chunk": layout["frames_per_chunk"],
        "cameras": layout["cameras"],
        "height": layout["height"],
        "width": layout["width"],
        "ego_fields": layout["ego_fields"],
        "dataset": {"path": str(root), "config": manifest["config"]},
    })
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            family=np.array(cut["family"]),
            seed=np.array(cut["seed"], dtype=np.int64),
            start=np.array([t for _, _, t in chosen], dtype=np.int64),
            frames=np.stack(cut["frames"]),
            actions=np.stack(cut["actions"]),
            ego=np.stack(cut["ego"]),
            meta=np.array(json.dumps(meta)),
        )
    tmp.replace(out)
    return ScenarioBank.load(out)


def main(argv: list[str]) -> int:
    """Entry point of ``xworld scenario-bank``; returns the process exit status."""
    try:
        cfg = build(ScenarioBankConfig, compose("scenario_bank", argv))
        bank = build_scenario_bank(cfg.dataset, cfg.out, cfg.starts_per_family,
                                   cfg.context_chunks, cfg.families, cfg.seed)
    except (ValueError, FileNotFoundError) as err:
        print(f"xworld scenario-bank: error: {err}", file=sys.stderr)
        return 2
    size = Path(cfg.out).stat().st_size
    print(f"scenario bank {cfg.out}: {len(bank)} starts of {', '.join(bank.families)}, "
          f"{cfg.context_chunks} context chunks each, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
