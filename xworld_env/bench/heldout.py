"""Held-out simulator episodes that benchmarks replay through the world model.

An episode is the teacher simulator (``XWorldSim-v0``) driven by the data-collection driver
(:class:`~xworld_env.sim.driver.PerturbedDriver`), recorded in the shard layout of
:mod:`xworld_env.data.shards`: chunk ``t`` holds the frames produced by ``actions[t]`` and the
ego state after it.

Seeds: episode ``i`` of a family uses ``base_seed + family_id * 100_000 + i`` (``family_id`` the
position in ``FAMILIES``). Training data uses ``shards.episode_seed``, i.e.
``base * 10^7 + family_id * 10^6 + index`` with ``family_id < len(FAMILIES)``, so its millions
digit is always below ``len(FAMILIES)``. The default ``base_seed = 7_000_000`` puts every
held-out seed at millions digit 7, which no training base seed (0 included) can produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xworld_env.data.shards import SEEDS_PER_BASE, SEEDS_PER_FAMILY
from xworld_env.sim.driver import PerturbedDriver
from xworld_env.sim.scenarios import check_family
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.types import EGO_FIELDS, FAMILIES

#: Default first held-out seed (see the module docstring).
HELDOUT_BASE_SEED = 7_000_000

#: Seeds reserved per family inside a held-out base.
HELDOUT_SEEDS_PER_FAMILY = 100_000

#: Attempts per wanted episode before giving up on a family.
MAX_ATTEMPTS_PER_EPISODE = 10


@dataclass
class HeldoutEpisode:
    """One recorded held-out episode of ``T = context + chunks`` chunks.

    Attributes:
        family: scenario family.
        seed: the seed of both ``env.reset`` and the driver.
        frames: uint8 (T, F, V, H, W, 3) all frames of each chunk; zeros after the episode ended.
        actions: float32 (T, 2) the action of each chunk; after the episode ended the last
            applied action is repeated, so the world model can still be rolled out.
        ego: float32 (T, 3) ego state after each chunk (``EGO_FIELDS``); zeros after the end.
        collision: bool (T,) a collision happened during the chunk.
        off_road: bool (T,) the ego left the road during the chunk.
        valid: bool (T,) the simulator produced the chunk (False after the episode ended).
    """

    family: str
    seed: int
    frames: np.ndarray
    actions: np.ndarray
    ego: np.ndarray
    collision: np.ndarray
    off_road: np.ndarray
    valid: np.ndarray

    @property
    def length(self) -> int:
        """Number of valid chunks."""
        return int(self.valid.sum())


def heldout_seed(family: str, index: int, base_seed: int = HELDOUT_BASE_SEED) -> int:
    """The seed of held-out attempt ``index`` of ``family``; raises if it could be a training seed.

    Args:
        family: scenario family.
        index: attempt index, ``0 <= index < HELDOUT_SEEDS_PER_FAMILY``.
        base_seed: first seed of the held-out range.
    """
    check_family(family)
    if not 0 <= index < HELDOUT_SEEDS_PER_FAMILY:
        raise ValueError(f"held-out index must be in [0, {HELDOUT_SEEDS_PER_FAMILY}), got {index}")
    seed = int(base_seed) + FAMILIES.index(family) * HELDOUT_SEEDS_PER_FAMILY + index
    if is_training_seed(seed):
        raise ValueError(
            f"held-out seed {seed} (base_seed {base_seed}) falls in the training seed range of "
            f"shards.episode_seed; use a base whose millions digit is >= {len(FAMILIES)}, e.g. "
            f"{HELDOUT_BASE_SEED}"
        )
    return seed


def is_training_seed(seed: int) -> bool:
    """Whether ``shards.episode_seed`` can produce ``seed`` for some base seed and family."""
    return seed >= 0 and (seed % SEEDS_PER_BASE) // SEEDS_PER_FAMILY < len(FAMILIES)


def record_heldout(
    family: str,
    episodes: int,
    chunks: int,
    context: int = 2,
    base_seed: int = HELDOUT_BASE_SEED,
    min_valid: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> list[HeldoutEpisode]:
    """Records ``episodes`` held-out episodes of ``context + chunks`` chunks each.

    Seeds are tried in order (see the module docstring); an episode that ends before
    ``min_valid`` valid chunks is dropped and the next seed tried.

    Args:
        family: scenario family.
        episodes: how many episodes to keep.
        chunks: chunks to roll out after the context.
        context: chunks that start the world model.
        base_seed: first seed of the held-out range (default 7_000_000).
        min_valid: keep an episode only with at least this many valid chunks, in
            ``[context, context + chunks]``; None: all of them.
        env_kwargs: extra ``XWorldSimEnv`` arguments (``rig``, ``scenario``, ``renderer``).

    Returns:
        The kept episodes, in seed order.

    Raises:
        ValueError: bad arguments.
        RuntimeError: fewer than ``episodes`` episodes lasted long enough within
            ``10 * episodes`` seeds.
    """
    check_family(family)
    if episodes < 1 or chunks < 0 or context < 1:
        raise ValueError(
            f"need episodes >= 1, chunks >= 0, context >= 1; got {episodes}, {chunks}, {context}"
        )
    total = context + chunks
    min_valid = total if min_valid is None else int(min_valid)
    if not context <= min_valid <= total:
        raise ValueError(
            f"min_valid must be in [context, context + chunks] = [{context}, {total}], "
            f"got {min_valid}"
        )
    attempts = MAX_ATTEMPTS_PER_EPISODE * episodes
    env = XWorldSimEnv(family=family, **(env_kwargs or {}))
    kept: list[HeldoutEpisode] = []
    lengths: list[int] = []
    try:
        for index in range(attempts):
            episode = record_episode(env, family, heldout_seed(family, index, base_seed), total)
            lengths.append(episode.length)
            if episode.length >= min_valid:
                kept.append(episode)
                if len(kept) == episodes:
                    return kept
    finally:
        env.close()
    raise RuntimeError(
        f"only {len(kept)} of {episodes} held-out {family} episodes reached {min_valid} valid "
        f"chunks in {attempts} seeds from {heldout_seed(family, 0, base_seed)} (valid lengths: "
        f"{lengths}); lower min_valid or chunks"
    )


def record_episode(env: XWorldSimEnv, family: str, seed: int, total: int) -> HeldoutEpisode:
    """Drives one episode of at most ``total`` chunks and pads it to ``total`` (see
    :class:`HeldoutEpisode` for the padding)."""
    env.reset(seed=seed, options={"family": family})
    driver = PerturbedDriver(seed)
    driver.reset(env.scenario)
    f = env.scenario_config.frames_per_chunk
    v, h, w = len(env.rig.names), env.rig.height, env.rig.width
    frames = np.zeros((total, f, v, h, w, 3), np.uint8)
    actions = np.zeros((total, 2), np.float32)
    ego = np.zeros((total, len(EGO_FIELDS)), np.float32)
    collision = np.zeros(total, bool)
    off_road = np.zeros(total, bool)
    valid = np.zeros(total, bool)
    ended = False
    for t in range(total):
        if ended:
            actions[t] = actions[t - 1]
            continue
        action = driver.act(env.scenario)
        _, _, terminated, truncated, info = env.step(action)
        frames[t] = env.last_chunk
        actions[t] = action
        ego[t] = env.scenario.ego_state()
        collision[t] = info["collision"]
        off_road[t] = info["off_road"]
        valid[t] = True
        ended = terminated or truncated
    return HeldoutEpisode(family, seed, frames, actions, ego, collision, off_road, valid)
