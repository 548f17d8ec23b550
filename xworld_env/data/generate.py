"""``xworld generate``: drive the teacher simulator and write the world model's training shards.

Every episode is ``env.reset(seed=episode_seed, options={"family": family})`` followed by up to
``chunks_per_episode`` steps of the :class:`~xworld_env.sim.driver.PerturbedDriver` seeded with the
same episode seed, its mix of behaviours from the ``driver`` config group
(:class:`~xworld_env.sim.driver.DriverConfig`), so a configuration always produces the same
dataset. Shards are written to a temporary name and renamed, and the manifest is rewritten
atomically after each shard: an interrupted run leaves only whole shards, and rerunning the same
command resumes at the first missing one. The format is described in :mod:`xworld_env.data.shards`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xworld_env import __version__
from xworld_env.config import build, compose, to_plain
from xworld_env.data.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SEEDS_PER_FAMILY,
    VAL_EVERY,
    DatasetError,
    canonical,
    episode_seed,
    read_manifest,
    shard_name,
    write_json_atomic,
)
from xworld_env.envs.rewards import RewardConfig
from xworld_env.sim.driver import DriverConfig, PerturbedDriver
from xworld_env.sim.renderer import RendererConfig
from xworld_env.sim.rig import RigConfig
from xworld_env.sim.scenarios import ScenarioConfig, check_family
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.types import EGO_FIELDS, FAMILIES

#: The sections of the ``sim`` config group and the dataclass each one builds.
SIM_SECTIONS: dict[str, type] = {
    "rig": RigConfig,
    "scenario": ScenarioConfig,
    "renderer": RendererConfig,
    "reward": RewardConfig,
}

#: The driver settings a dataset's manifest records when it leaves one out.
_DRIVER_DEFAULTS = asdict(DriverConfig())

#: How an episode can end, in the order used when several happen in the same chunk.
END_REASONS = ("collision", "off_road", "road_end", "horizon")


@dataclass(frozen=True)
class GenerateConfig:
    """What dataset to generate (the ``data`` config group).

    Attributes:
        out: dataset folder; created if missing, resumed if it holds a run of the same config.
        episodes_per_family: episodes of each family.
        chunks_per_episode: steps ``T`` per episode; episodes that end earlier are zero-padded.
        episodes_per_shard: episodes ``E`` per shard file (the last shard may hold fewer).
        base_seed: selects a disjoint set of episode seeds (see ``shards.episode_seed``).
        families: scenario families to drive, a subset of ``FAMILIES``.
        val_every: the split rule: episodes whose seed is a multiple of it are validation
            (``shards.is_validation_seed``).
    """

    out: str = "data/xworld_sim"
    episodes_per_family: int = 256
    chunks_per_episode: int = 40
    episodes_per_shard: int = 8
    base_seed: int = 0
    families: tuple[str, ...] = FAMILIES
    val_every: int = VAL_EVERY

    def __post_init__(self) -> None:
        families = (self.families,) if isinstance(self.families, str) else tuple(self.families)
        object.__setattr__(self, "families", families)
        object.__setattr__(self, "out", str(self.out))
        if not families:
            raise ValueError(f"families is empty; accepted: a subset of {', '.join(FAMILIES)}")
        for family in families:
            check_family(family)
        if len(set(families)) != len(families):
            raise ValueError(f"families lists a family twice: {list(families)}")
        for name in ("episodes_per_family", "chunks_per_episode", "episodes_per_shard",
                     "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.episodes_per_family > SEEDS_PER_FAMILY:
            raise ValueError(
                f"episodes_per_family must be <= {SEEDS_PER_FAMILY}, got {self.episodes_per_family}"
            )
        if not isinstance(self.base_seed, int) or self.base_seed < 0:
            raise ValueError(f"base_seed must be an integer >= 0, got {self.base_seed!r}")

    def episodes(self) -> list[tuple[str, int]]:
        """(family, seed) of every episode, in dataset order.

        Families are interleaved, so every prefix of the shards (an interrupted run) is balanced.
        """
        return [
            (family, episode_seed(self.base_seed, family, index))
            for index in range(self.episodes_per_family)
            for family in self.families
        ]

    @property
    def num_shards(self) -> int:
        """Shard files of the complete dataset."""
        return math.ceil(len(self.families) * self.episodes_per_family / self.episodes_per_shard)

    def content(self) -> dict:
        """The settings that decide the dataset's content (all but ``out``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "out"}


@dataclass(frozen=True)
class GenerateSummary:
    """What a dataset folder holds after :func:`generate`, and what this run did.

    Attributes:
        out: the dataset folder.
        episodes: episodes in the dataset.
        chunks: valid chunks in the dataset.
        collisions: episodes ended by a collision.
        off_road: episodes ended by leaving the road.
        bytes: size of the shards on disk.
        shards: shard files in the dataset.
        resumed_shards: shards kept from an earlier, interrupted run.
        generated_chunks: chunks simulated by this run.
        seconds: wall-clock time of this run.
    """

    out: str
    episodes: int
    chunks: int
    collisions: int
    off_road: int
    bytes: int
    shards: int
    resumed_shards: int
    generated_chunks: int
    seconds: float

    @property
    def chunks_per_second(self) -> float:
        """Simulation speed of this run (chunks written per second)."""
        return self.generated_chunks / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"dataset {self.out}: {self.episodes} episodes, {self.chunks} chunks, "
            f"{self.collisions} collisions, {self.off_road} off-road, "
            f"{self.bytes / 1e6:.1f} MB in {self.shards} shards "
            f"({self.resumed_shards} kept from an earlier run); "
            f"this run: {self.generated_chunks} chunks in {self.seconds:.1f} s "
            f"({self.chunks_per_second:.1f} chunks/s)"
        )


def make_sim_env(sim: Any = None) -> XWorldSimEnv:
    """The teacher simulator built from a ``sim`` config node (rig, scenario, renderer, reward).

    Missing sections take their defaults; unknown sections or settings raise ``ValueError``.
    """
    node = to_plain(sim) or {}
    unknown = set(node) - set(SIM_SECTIONS)
    if unknown:
        raise ValueError(f"unknown sim section(s) {sorted(unknown)}; accepted: "
                         f"{', '.join(SIM_SECTIONS)}")
    return XWorldSimEnv(**{key: build(cls, node.get(key)) for key, cls in SIM_SECTIONS.items()})


def generate(
    cfg: GenerateConfig,
    sim: Any = None,
    driver: DriverConfig | None = None,
    *,
    progress: bool = True,
    on_shard: Callable[[int, dict], None] | None = None,
) -> GenerateSummary:
    """Generates (or resumes) the dataset described by ``cfg`` in ``cfg.out``.

    Args:
        cfg: the dataset to make.
        sim: the ``sim`` config node (mapping or DictConfig); None for the default simulator.
        driver: the data-collection driver's mix of behaviours; None for the default.
        progress: show a progress bar over episodes.
        on_shard: called as ``on_shard(index, manifest_entry)`` after each shard is committed.

    Returns:
        A summary of the whole dataset and of this run.

    Raises:
        DatasetError: ``cfg.out`` holds a dataset of another configuration or format, or is a
            non-empty folder that is not a dataset.
    """
    start = time.perf_counter()
    driver = driver if driver is not None else DriverConfig()
    env = make_sim_env(sim)
    out = Path(cfg.out)
    config = canonical({"data": cfg.content(), "sim": env.config_dict(), "driver": asdict(driver)})
    layout = {
        "chunks_per_episode": cfg.chunks_per_episode,
        "frames_per_chunk": env.scenario_config.frames_per_chunk,
        "cameras": list(env.rig.names),
        "height": env.rig.height,
        "width": env.rig.width,
        "ego_fields": list(EGO_FIELDS),
    }
    manifest = _open_manifest(out, config, layout, cfg.val_every)
    for stale in out.glob("*.tmp"):
        stale.unlink()

    episodes = cfg.episodes()
    kept = {e["file"]: e for e in manifest["shards"] if _is_intact(out, e)}
    manifest["shards"] = [e for e in manifest["shards"] if e["file"] in kept]
    resumed = generated_chunks = 0
    bar = tqdm(total=len(episodes), unit="episode", desc=f"generate {out.name}",
               disable=not progress, dynamic_ncols=True)
    try:
        for index in range(cfg.num_shards):
            batch = episodes[index * cfg.episodes_per_shard:(index + 1) * cfg.episodes_per_shard]
            if shard_name(index) in kept:
                resumed += 1
                bar.update(len(batch))
                continue
            rollouts = []
            for family, seed in batch:
                rollouts.append(
                    record_episode(env, family, seed, cfg.chunks_per_episode, driver)
                )
                generated_chunks += int(rollouts[-1]["valid"].sum())
                bar.update(1)
            entry = _write_shard(out, index, rollouts)
            manifest["shards"] = sorted(
                [e for e in manifest["shards"] if e["file"] != entry["file"]] + [entry],
                key=lambda e: e["file"],
            )
            write_json_atomic(out / MANIFEST_NAME, manifest)
            if on_shard is not None:
                on_shard(index, entry)
    finally:
        bar.close()
        env.close()
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return summarize(manifest, out, resumed, generated_chunks, time.perf_counter() - start)


def record_episode(
    env: XWorldSimEnv, family: str, seed: int, chunks: int, driver: DriverConfig | None = None
) -> dict:
    """Drives one episode with the perturbed driver (of mix ``driver``; None: the default) and
    returns its padded arrays.

    Returns:
        ``frames``, ``actions``, ``ego``, ``reward``, ``collision``, ``off_road``, ``valid``
        (leading axis ``t`` of length ``chunks``), ``family``, ``seed`` and ``end`` (one of
        ``END_REASONS``).
    """
    env.reset(seed=seed, options={"family": family})
    driver = PerturbedDriver(seed, driver)
    driver.reset(env.scenario)
    f = env.scenario_config.frames_per_chunk
    v, h, w = len(env.rig.names), env.rig.height, env.rig.width
    out = {
        "frames": np.zeros((chunks, f, v, h, w, 3), np.uint8),
        "actions": np.zeros((chunks, 2), np.float32),
        "ego": np.zeros((chunks, len(EGO_FIELDS)), np.float32),
        "reward": np.zeros(chunks, np.float32),
        "collision": np.zeros(chunks, bool),
        "off_road": np.zeros(chunks, bool),
        "valid": np.zeros(chunks, bool),
    }
    end = "horizon"
    for t in range(chunks):
        action = driver.act(env.scenario)
        _, reward, terminated, truncated, info = env.step(action)
        out["frames"][t] = env.last_chunk
        out["actions"][t] = action
        out["ego"][t] = env.scenario.ego_state()
        out["reward"][t] = reward
        out["collision"][t] = info["collision"]
        out["off_road"][t] = info["off_road"]
        out["valid"][t] = True
        if terminated or truncated:
            end = "collision" if info["collision"] else "off_road" if info["off_road"] else (
                "road_end")
            break
    return {**out, "family": family, "seed": seed, "end": end}


def summarize(
    manifest: dict, out: Path, resumed: int = 0, generated_chunks: int = 0, seconds: float = 0.0
) -> GenerateSummary:
    """The :class:`GenerateSummary` of a dataset from its manifest."""
    episodes = [e for shard in manifest["shards"] for e in shard["episodes"]]
    return GenerateSummary(
        out=str(out),
        episodes=len(episodes),
        chunks=sum(e["length"] for e in episodes),
        collisions=sum(e["end"] == "collision" for e in episodes),
        off_road=sum(e["end"] == "off_road" for e in episodes),
        bytes=sum(shard["bytes"] for shard in manifest["shards"]),
        shards=len(manifest["shards"]),
        resumed_shards=resumed,
        generated_chunks=generated_chunks,
        seconds=seconds,
    )


def _open_manifest(out: Path, config: dict, layout: dict, val_every: int) -> dict:
    """The manifest to continue from: the existing one if its config matches, else a new one."""
    if (out / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(out)
        except DatasetError as err:
            raise DatasetError(f"cannot resume into {out}: {err}") from None
        recorded = manifest["config"]
        if isinstance(recorded.get("driver"), dict):
            # Datasets made before the driver was configurable record it without the settings
            # added since; those datasets were driven with their defaults.
            recorded = {**recorded, "driver": {**_DRIVER_DEFAULTS, **recorded["driver"]}}
        if recorded != config:
            diffs = "; ".join(_differences(recorded, config))
            raise DatasetError(
                f"cannot resume into {out}: it holds a dataset of another configuration "
                f"({diffs}). Rerun with the same settings, or choose a new data.out folder"
            )
        return manifest
    if out.exists() and not out.is_dir():
        raise DatasetError(f"data.out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DatasetError(
            f"data.out {out} is a non-empty folder without {MANIFEST_NAME}; choose a new or empty "
            "folder so that no unrelated file is overwritten"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_with": f"xworld-env {__version__}",
        "config": config,
        "layout": layout,
        "split": {"rule": "validation iff seed % val_every == 0", "val_every": val_every},
        "families": list(FAMILIES),
        "complete": False,
        "shards": [],
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return manifest


def _is_intact(out: Path, entry: dict) -> bool:
    path = out / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"]


def _write_shard(out: Path, index: int, rollouts: list[dict]) -> dict:
    """Writes shard ``index`` to a temporary name, renames it, and returns its manifest entry."""
    arrays = {key: np.stack([r[key] for r in rollouts]) for key in
              ("frames", "actions", "ego", "reward", "collision", "off_road", "valid")}
    arrays["family"] = np.array([r["family"] for r in rollouts])
    arrays["seed"] = np.array([r["seed"] for r in rollouts], dtype=np.int64)
    path = out / shard_name(index)
    tmp = path.with_name(path.name + ".tmp")
    # A file object, because np.savez_compressed appends ".npz" to names that lack it.
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "episodes": [
            {"seed": int(r["seed"]), "family": r["family"], "length": int(r["valid"].sum()),
             "end": r["end"]}
            for r in rollouts
        ],
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found[:5]
    if old != new:
        return [f"{prefix.rstrip('.')} is {old!r} there, {new!r} now"]
    return []


def main(argv: list[str]) -> int:
    """Entry point of ``xworld generate``; returns the process exit status."""
    try:
        cfg = compose("generate", argv)
        summary = generate(build(GenerateConfig, cfg.data), cfg.sim,
                           build(DriverConfig, cfg.get("driver")))
    except (ValueError, FileNotFoundError) as err:
        print(f"xworld generate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xworld generate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
