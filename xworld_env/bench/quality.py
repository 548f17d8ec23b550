"""``xworld bench quality``: the world model against the teacher simulator it learned from.

On held-out simulator episodes (seeds never used for training; :mod:`xworld_env.bench.heldout`)
the engine, with full compute, starts from an episode's first ``context`` chunks and replays its
recorded actions; the decoded views are compared with the simulator's frames, next to the
"repeat the last observed frame" baseline. Beside that, per family:

* ``ae_psnr``: the autoencoder's reconstruction of the simulator frames, the ceiling of any
  rollout;
* ``action_sensitivity_db``: PSNR with the true actions minus PSNR with another episode's actions
  (same start, same noise seed), averaged over the horizons: positive when the actions steer the
  world (pooled over the family's chunks); ``action_sensitivity_se_db`` is the standard error of
  the mean of the episodes' own values (null with one episode), to tell an effect from the noise
  of a few episodes;
* ``steer_response`` and ``steer_alignment`` (:func:`steering_response`): from the same
  start, how much the views of full-left and full-right steering differ in the model against
  the simulator, and whether they differ the same way: a direct test that the actions control
  the world;
* ``speed_gap_sim`` / ``speed_gap_model`` / ``throttle_response`` (:func:`throttle_response`):
  from the same start, how much faster full throttle drives than full braking, in the simulator
  and as the heads read the model's chunks, and their ratio: whether the pedals work, and which
  way round; ``throttle_response_encoded``, the heads' reading of the simulator's own chunks, and
  ``motion_response``, how much more the model's views move under throttle than under braking
  against the simulator's, tell the heads' part from the DiT's;
* ``drift_end_sim`` / ``drift_end_model`` / ``drift_offset_model`` (:func:`drift_response`):
  from the same start, holding a moderate steering input, how many runs the simulator and the
  heads end off the road (or in a collision), and the lane offset the heads read at the end:
  whether steering away from the lane has the consequence in the model that it has in the
  simulator;
* ``motion_model`` / ``motion_sim`` / ``motion_ratio``: how much the views change from one frame
  to the next (mean absolute change, pixel levels 0-255) in the rollout and in the simulator over
  the same chunks, and their ratio: a world model whose rollouts settle into a still scene scores
  near 0 however well it matches each frame;
* ``stable``: whether a long rollout stays finite, keeps its contrast and keeps moving (``still``);
* ``heads_sim`` / ``heads_model``: the heads on the autoencoder latents of the simulator chunks
  (their training input) and on the generated latents, both against the simulator's labels.

A PNG strip next to the JSON shows simulator and model views side by side over the horizon.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from tqdm import tqdm

from xworld_env.bench.heldout import HELDOUT_BASE_SEED, HeldoutEpisode, record_heldout
from xworld_env.bench.machine import machine_info
from xworld_env.bench.metrics import finite_mean, frame_motion, psnr
from xworld_env.engine import DIT_DTYPES, NOISE_MODES, SPEED_SOURCES, WorldModelEngine
from xworld_env.envs.rewards import RewardConfig, is_terminal
from xworld_env.envs.xworld import DEFAULT_CHECKPOINT, load_runtime
from xworld_env.model.autoencoder import to_uint8
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.training.heads import evaluate_heads
from xworld_env.types import CAMERA_NAMES, EGO_FIELDS, FAMILIES

#: Horizons (chunks after the context) at which PSNR is reported; the rollout's last chunk is
#: added when it is not among them.
HORIZONS = (1, 5, 10, 20)
#: Horizons shown as columns of the PNG strip.
STRIP_HORIZONS = (1, 2, 5, 10, 20)
#: A long rollout has collapsed when its pixel std falls below this fraction of the simulator's.
COLLAPSE_FRACTION = 0.2
#: A long rollout has stood still when the frame-to-frame change of its last tenth falls below
#: this fraction of the simulator's (``frame_motion``).
STILL_FRACTION = 0.1
#: Chunks of the steering probe (``steering_response``) after the context.
STEER_CHUNKS = 5
#: The probe's steering inputs (positive steers left); throttle stays 0.
STEER_ACTIONS = {"left": 1.0, "right": -1.0}
#: The probe's figures that ``overall`` averages over the families.
STEER_KEYS = ("steer_gap_sim", "steer_gap_model", "steer_response", "steer_alignment")
#: Chunks of the throttle probe (``throttle_response``) after the context.
THROTTLE_CHUNKS = 5
#: The throttle probe's acceleration inputs; steering stays 0.
THROTTLE_ACTIONS = {"throttle": 1.0, "brake": -1.0}
#: The throttle probe's figures that ``overall`` averages over the families.
THROTTLE_KEYS = ("speed_gap_sim", "speed_gap_model", "throttle_response", "speed_gap_encoded",
                 "throttle_response_encoded", "motion_gap_sim", "motion_gap_model",
                 "motion_response")
#: Chunks of the drift probe (``drift_response``) after the context.
DRIFT_CHUNKS = 6
#: The drift probe's steering inputs (moderate, held); throttle stays 0.
DRIFT_ACTIONS = {"left": 0.35, "right": -0.35}
#: The drift probe's figures that ``overall`` averages over the families.
DRIFT_KEYS = ("drift_end_sim", "drift_end_model", "drift_end_encoded", "drift_offset_model")
#: Autoencoder PSNR below which no rollout can look right (the ``ae_psnr_ge_30`` bar).
AE_PSNR_BAR_DB = 30.0

_BACKGROUND = (24, 24, 28)
_TEXT = (225, 225, 225)
_DIM = (140, 140, 140)


@dataclass
class Rollout:
    """Chunks generated from one start per world.

    Attributes:
        frames: uint8 (b, t, f, v, H, W, 3) decoded views of every generated chunk.
        latents: float (b, t, v, f, h, w, c) clean latents, on the CPU.
        speeds: float (b, t) ego speed the heads read from every generated chunk (m/s).
    """

    frames: np.ndarray
    latents: torch.Tensor
    speeds: np.ndarray

    def rows(self, worlds: slice) -> Rollout:
        """The rollout of some of its worlds."""
        return Rollout(self.frames[worlds], self.latents[worlds], self.speeds[worlds])


def report_horizons(horizon: int) -> tuple[int, ...]:
    """The horizons of ``HORIZONS`` within ``horizon``, plus ``horizon`` itself."""
    return tuple(sorted({h for h in HORIZONS if h <= horizon} | {horizon}))


def copy_baseline(episode: HeldoutEpisode, context: int) -> np.ndarray:
    """The "repeat the last observed frame" prediction: uint8 (f, v, H, W, 3), the last frame of
    the last context chunk in every frame slot."""
    last = episode.frames[context - 1, -1]
    return np.repeat(last[None], episode.frames.shape[1], axis=0)


def roll_out(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    actions: np.ndarray,
    seeds: list[int],
    desc: str = "rollout",
    progress: bool = True,
) -> Rollout:
    """Starts one world per episode from its first ``context`` chunks and steps it.

    Args:
        engine: the world model; its executor runs the DiT blocks.
        episodes: the start of world ``i`` is ``episodes[i]``.
        context: chunks of each episode that prime the KV cache.
        actions: (b, t, 2) the action of every generated chunk of every world.
        seeds: noise seed of every world.
        desc: progress-bar label.
        progress: show a tqdm bar.
    """
    engine.start(
        np.stack([ep.frames[:context] for ep in episodes]),
        np.stack([ep.actions[:context] for ep in episodes]),
        np.stack([ep.ego[:context] for ep in episodes]),
        seeds=seeds,
    )
    frames, latents, speeds = [], [], []
    for k in tqdm(range(actions.shape[1]), desc=desc, leave=False, disable=not progress):
        out = engine.step_chunk(actions[:, k])
        frames.append(out.frames.cpu().numpy())
        latents.append(out.latents.float().cpu())
        speeds.append(out.speed_read.float().cpu().numpy())
    return Rollout(np.stack(frames, axis=1), torch.stack(latents, dim=1), np.stack(speeds, axis=1))


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of the finite ``values`` (sample std / sqrt n); nan below 2."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(finite) < 2:
        return math.nan
    return float(finite.std(ddof=1) / math.sqrt(len(finite)))


def _mean(values: list[float]) -> float:
    # inf PSNR (identical images) carries no magnitude; finite_mean keeps it only if all are inf.
    return finite_mean(np.asarray(values)) if values else math.nan


def _average(values: list[float]) -> float:
    """Mean of the finite ``values``; nan when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _encode_decode(engine: WorldModelEngine, frames: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 chunks (t, f, v, H, W, 3) -> (latents (t, v, f, h, w, c), reconstruction uint8)."""
    latents = engine.encode(frames)
    with torch.no_grad():
        images = to_uint8(engine.autoencoder.decode(latents))
    recon = rearrange(images, "t v f h w c -> t f v h w c").cpu().numpy()
    return latents.float().cpu(), recon


def _heads_data(latents: torch.Tensor, episodes: list[HeldoutEpisode], chunks: np.ndarray) -> dict:
    """``evaluate_heads`` input: latents (n, v, f, h, w, c) and the simulator labels of the same
    chunks, ``chunks`` being (episode, chunk) index pairs."""
    def pick(field: str) -> np.ndarray:
        return np.stack([getattr(episodes[i], field)[t] for i, t in chunks])

    return {
        "latents": latents,
        "ego": torch.from_numpy(pick("ego")).float(),
        "collision": torch.from_numpy(pick("collision")).bool(),
        "off_road": torch.from_numpy(pick("off_road")).bool(),
    }


def _concat(parts: list[dict]) -> dict:
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def evaluate_family(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    horizon: int,
    progress: bool = True,
) -> tuple[dict, dict, dict, Rollout]:
    """PSNR against the simulator and the copy baseline, action sensitivity, autoencoder PSNR.

    World ``i`` replays episode ``i``'s actions; world ``n + i`` starts the same way, with the
    same noise seed, under the actions of episode ``i + 1`` (with a single episode: its own
    actions negated). Chunks are compared only while the simulator episode still runs; the PSNR
    of a horizon is the mean over the episodes still running then (``valid_episodes``).

    Returns:
        The family's metrics, the heads' inputs on simulator and on generated latents, and the
        rollout of the true actions.
    """
    n = len(episodes)
    family = episodes[0].family
    true_actions = np.stack([ep.actions[context : context + horizon] for ep in episodes])
    other_actions = np.roll(true_actions, -1, axis=0) if n > 1 else -true_actions
    seeds = [ep.seed for ep in episodes]
    rollout = roll_out(
        engine,
        episodes + episodes,
        context,
        np.concatenate([true_actions, other_actions]),
        seeds + seeds,
        desc=f"rollout {family}",
        progress=progress,
    )

    shown = report_horizons(horizon)
    frame = rollout.frames.shape[3:]  # (v, H, W, 3)
    per_episode, model_h, copy_h, sensitivity, ae = [], {}, {}, [], []
    sim_latents, sim_chunks, model_chunks = [], [], []
    for i, ep in enumerate(episodes):
        valid_t = np.flatnonzero(ep.valid)
        latents, recon = _encode_decode(engine, ep.frames[valid_t])
        ae.extend(psnr(r, ep.frames[t]) for r, t in zip(recon, valid_t, strict=True))
        sim_latents.append(latents)
        sim_chunks.extend((i, int(t)) for t in valid_t)

        copy = copy_baseline(ep, context)
        row = {"seed": ep.seed, "valid_chunks": ep.length, "model_psnr": {}, "copy_psnr": {}}
        diffs = []
        for k in range(horizon):
            t = context + k
            if not ep.valid[t]:
                break
            model = psnr(rollout.frames[i, k], ep.frames[t])
            other = psnr(rollout.frames[n + i, k], ep.frames[t])
            diffs.append(model - other)
            model_chunks.append((i, k, t))
            if k + 1 in shown:
                row["model_psnr"][str(k + 1)] = model
                row["copy_psnr"][str(k + 1)] = psnr(copy, ep.frames[t])
        row["action_sensitivity_db"] = _mean(diffs)
        # Frame to frame over the compared chunks: the rollout's own frames, the simulator's.
        compared = len(diffs)
        row["motion_model"] = frame_motion(rollout.frames[i, :compared].reshape(-1, *frame))
        row["motion_sim"] = frame_motion(ep.frames[context : context + compared].reshape(
            -1, *frame))
        sensitivity.extend(diffs)
        per_episode.append(row)
    counts = {}
    for h in shown:
        key = str(h)
        model_h[key] = _mean([r["model_psnr"][key] for r in per_episode if key in r["model_psnr"]])
        copy_h[key] = _mean([r["copy_psnr"][key] for r in per_episode if key in r["copy_psnr"]])
        counts[key] = sum(key in r["model_psnr"] for r in per_episode)

    heads_sim = _heads_data(torch.cat(sim_latents), episodes, np.array(sim_chunks))
    if model_chunks:
        index = np.array(model_chunks)
        picked = rollout.latents[torch.from_numpy(index[:, 0]), torch.from_numpy(index[:, 1])]
        heads_model = _heads_data(picked, episodes, index[:, [0, 2]])
    else:
        heads_model = {}
    metrics = {
        "episodes": n,
        "seeds": seeds,
        "ae_psnr": _mean(ae),
        "model_psnr": model_h,
        "copy_psnr": copy_h,
        "valid_episodes": counts,
        "action_sensitivity_db": _mean(sensitivity),
        "action_sensitivity_se_db": standard_error(
            [r["action_sensitivity_db"] for r in per_episode]
        ),
        **_motion(_average([r["motion_model"] for r in per_episode]),
                  _average([r["motion_sim"] for r in per_episode])),
        "per_episode": per_episode,
    }
    true_rollout = rollout.rows(slice(0, n))
    return metrics, heads_sim, heads_model, true_rollout


def _motion(model: float, sim: float) -> dict[str, float]:
    """``motion_model``, ``motion_sim`` and their ratio (nan where the simulator stands still)."""
    ratio = model / sim if math.isfinite(model) and math.isfinite(sim) and sim > 0 else math.nan
    return {"motion_model": model, "motion_sim": sim, "motion_ratio": ratio}


class SimHold(NamedTuple):
    """A simulator run under one held action (:func:`hold_in_sim`).

    Attributes:
        frames: the run's chunks, uint8 (f, v, H, W, 3) each.
        speeds: the ego speed after each chunk (m/s).
        ended: whether the episode ended on a collision or off the road within the run.
    """

    frames: list[np.ndarray]
    speeds: list[float]
    ended: bool


def read_heads(engine: WorldModelEngine, latents: torch.Tensor):
    """The heads' outputs on chunk latents (n, v, f, h, w, c): generated ones, or simulator
    chunks through ``engine.encode``."""
    with torch.no_grad():
        return engine.heads(latents.to(engine.device))


def hold_in_sim(
    episode: HeldoutEpisode, context: int, action: np.ndarray, chunks: int
) -> SimHold:
    """The simulator's chunks, and the ego speed after each, under one constant ``action``
    after the episode's context.

    The episode is replayed from its seed through its recorded context actions (the simulator is
    deterministic, so this is the state the world model starts from), then stepped with
    ``action``; the lists stop after the chunk where the episode ends (collision, off-road or
    road end).
    """
    env = XWorldSimEnv(family=episode.family)
    try:
        env.reset(seed=episode.seed, options={"family": episode.family})
        for t in range(context):
            env.step(episode.actions[t])
        frames, speeds, terminated = [], [], False
        for _ in range(chunks):
            _, _, terminated, truncated, info = env.step(action)
            frames.append(env.last_chunk.copy())
            speeds.append(float(info["ego"]["speed"]))
            if terminated or truncated:
                break
        return SimHold(frames, speeds, bool(terminated))
    finally:
        env.close()


def steer_pair(
    sim_left: np.ndarray, sim_right: np.ndarray, model_left: np.ndarray, model_right: np.ndarray
) -> tuple[float, float, float]:
    """One chunk of the steering probe: the mean absolute left-minus-right difference of the
    simulator's and of the model's uint8 views (pixel levels), and the cosine between the two
    difference images (0 when either is zero)."""
    d_sim = sim_left.astype(np.float32) - sim_right.astype(np.float32)
    d_model = model_left.astype(np.float32) - model_right.astype(np.float32)
    norms = float(np.linalg.norm(d_sim) * np.linalg.norm(d_model))
    cosine = float((d_sim * d_model).sum()) / norms if norms > 0 else 0.0
    return float(np.abs(d_sim).mean()), float(np.abs(d_model).mean()), cosine


def probe_runs(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    chunks: int,
    held: dict[str, np.ndarray],
    desc: str,
    progress: bool = True,
) -> tuple[dict[str, list[SimHold]], dict[str, Rollout]]:
    """The runs of a probe: from each episode's context, every action of ``held`` held for
    ``chunks`` chunks, in the simulator and in the model (the episode's noise seed for every
    action, so the runs differ only by their action).

    Returns:
        ``(sim, model)``: ``sim[name][i]`` is :func:`hold_in_sim` of episode ``i`` under action
        ``name``; ``model[name]`` the model's rollout under it, world ``i`` from episode ``i``.
    """
    n = len(episodes)
    sim = {name: [hold_in_sim(ep, context, a, chunks) for ep in episodes]
           for name, a in held.items()}
    actions = np.concatenate([np.broadcast_to(a, (n, chunks, 2)) for a in held.values()])
    rollout = roll_out(engine, episodes * len(held), context, actions,
                       [ep.seed for ep in episodes] * len(held), desc=desc, progress=progress)
    model = {name: rollout.rows(slice(j * n, (j + 1) * n)) for j, name in enumerate(held)}
    return sim, model


def steering_response(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    chunks: int = STEER_CHUNKS,
    progress: bool = True,
) -> dict:
    """How strongly and in which direction the world model follows the steering input.

    From each episode's context, the simulator and the model (same noise seed for both
    directions) each run ``chunks`` chunks at full left and at full right steering, throttle 0.
    Compared over the chunks both simulator runs still produce:

    * ``steer_gap_sim`` / ``steer_gap_model``: mean absolute pixel difference (0-255) between
      the left and the right run's views: how much steering changes what the cameras see;
    * ``steer_response``: their ratio, 1 when the model's views move as much as the simulator's
      under steering, 0 when the model ignores it;
    * ``steer_alignment``: the cosine between the model's and the simulator's left-minus-right
      difference images, averaged over the chunks: 1 when the model's views change the way the
      simulator's do, 0 when unrelated (or when the model ignores steering), -1 when reversed.
    """
    steer = {name: np.array([0.0, value], np.float32) for name, value in STEER_ACTIONS.items()}
    sim, model = probe_runs(engine, episodes, context, chunks, steer,
                            f"steering {episodes[0].family}", progress)
    gap_sim, gap_model, alignment = [], [], []
    for i in range(len(episodes)):
        left, right = sim["left"][i].frames, sim["right"][i].frames
        for k in range(min(len(left), len(right))):
            pair = steer_pair(left[k], right[k], model["left"].frames[i, k],
                              model["right"].frames[i, k])
            for values, value in zip((gap_sim, gap_model, alignment), pair, strict=True):
                values.append(value)
    gap_s, gap_m = _mean(gap_sim), _mean(gap_model)
    return {
        "steer_gap_sim": gap_s,
        "steer_gap_model": gap_m,
        "steer_response": gap_m / gap_s if gap_s > 0 else math.nan,
        "steer_alignment": _mean(alignment),
        "steer_chunks_compared": len(gap_sim),
    }


def throttle_response(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    chunks: int = THROTTLE_CHUNKS,
    progress: bool = True,
) -> dict:
    """Whether the world model speeds up under throttle and slows down under braking.

    From each episode's context, the simulator and the model (same noise seed for both inputs)
    each run ``chunks`` chunks at full throttle and at full braking, steering 0. Compared over the
    chunks both simulator runs still produce:

    * ``speed_gap_sim``: the simulator's ego speed under throttle minus under braking (m/s);
    * ``speed_gap_model``: the same for the speed the heads read from the model's chunks (what
      the env's reward and ``obs["ego"]`` report);
    * ``throttle_response``: their ratio, 1 when the model's speed answers the pedals as the
      simulator's does, 0 when it ignores them, negative when it answers the wrong way round;
    * ``speed_gap_encoded`` / ``throttle_response_encoded``: the same as the heads read the
      simulator's own chunks (encoded by the autoencoder): where this is wrong too, the heads are
      (at least in part) what answers the wrong way round, not the DiT;
    * ``motion_gap_sim`` / ``motion_gap_model`` / ``motion_response``: how much more the views
      change from one frame to the next under throttle than under braking (pixel levels 0-255,
      over each episode's compared chunks, averaged over episodes), in the simulator and in the
      model, and their ratio: the pedals' effect on the views themselves, with no head in
      between.
    """
    pedals = {name: np.array([value, 0.0], np.float32) for name, value in THROTTLE_ACTIONS.items()}
    sim, model = probe_runs(engine, episodes, context, chunks, pedals,
                            f"throttle {episodes[0].family}", progress)
    speed = EGO_FIELDS.index("speed")
    gap_sim, gap_model, gap_encoded, move_sim, move_model = [], [], [], [], []
    for i in range(len(episodes)):
        (fast_frames, fast, _), (slow_frames, slow, _) = sim["throttle"][i], sim["brake"][i]
        n = min(len(fast), len(slow))
        if n == 0:
            continue
        read_fast, read_slow = (
            read_heads(engine, engine.encode(np.stack(frames[:n]))).ego[:, speed].float().cpu()
            for frames in (fast_frames, slow_frames))
        for k in range(n):
            gap_sim.append(fast[k] - slow[k])
            gap_model.append(float(model["throttle"].speeds[i, k] - model["brake"].speeds[i, k]))
            gap_encoded.append(float(read_fast[k] - read_slow[k]))
        move_sim.append(_run_motion(fast_frames, n) - _run_motion(slow_frames, n))
        move_model.append(_run_motion(model["throttle"].frames[i], n) -
                          _run_motion(model["brake"].frames[i], n))
    gap_s, gap_m, gap_e = _mean(gap_sim), _mean(gap_model), _mean(gap_encoded)
    move_s, move_m = _mean(move_sim), _mean(move_model)
    return {
        "speed_gap_sim": gap_s,
        "speed_gap_model": gap_m,
        "throttle_response": gap_m / gap_s if gap_s > 0 else math.nan,
        "speed_gap_encoded": gap_e,
        "throttle_response_encoded": gap_e / gap_s if gap_s > 0 else math.nan,
        "motion_gap_sim": move_s,
        "motion_gap_model": move_m,
        "motion_response": move_m / move_s if move_s > 0 else math.nan,
        "throttle_chunks_compared": len(gap_sim),
    }


def drift_response(
    engine: WorldModelEngine,
    episodes: list[HeldoutEpisode],
    context: int,
    chunks: int = DRIFT_CHUNKS,
    progress: bool = True,
) -> dict:
    """Whether the world model lets a car that keeps steering leave the road.

    From each episode's context, the simulator and the model (same noise seed for both
    directions) each hold a moderate steering input to the left and to the right
    (``DRIFT_ACTIONS``, throttle 0) for ``chunks`` chunks:

    * ``drift_end_sim``: the share of these runs that the simulator ends on a collision or off
      the road;
    * ``drift_end_model``: the share that the heads end, reading a collision or off-road
      probability above the env's termination threshold from some chunk of the run;
    * ``drift_offset_model``: the mean absolute lane offset (m) the heads read from each run's
      last chunk: a car that keeps steering drifts ever further from its lane centre until it
      leaves the road, a model that does not carry its lateral motion on reads an offset that
      settles;
    * ``drift_end_encoded``: the share of the simulator's runs that the heads end reading the
      simulator's own chunks (encoded by the autoencoder): near ``drift_end_sim`` when the heads
      see the road end where there is one, so that what the model misses is the DiT's.
    """
    steer = {name: np.array([0.0, value], np.float32) for name, value in DRIFT_ACTIONS.items()}
    sim, model = probe_runs(engine, episodes, context, chunks, steer,
                            f"drift {episodes[0].family}", progress)
    rewards = RewardConfig()
    offset = EGO_FIELDS.index("lane_offset")

    def ends(out) -> list[bool]:
        """Per chunk the heads read, whether the env would end the episode there."""
        collision, off_road = (torch.sigmoid(x).float().cpu().tolist()
                               for x in (out.collision_logit, out.off_road_logit))
        return [is_terminal(c, o, rewards) for c, o in zip(collision, off_road, strict=True)]

    ended_sim, ended_model, ended_encoded, offsets = [], [], [], []
    for name in steer:
        latents = model[name].latents
        outs = [read_heads(engine, latents[:, k]) for k in range(chunks)]
        ended_model += [any(world) for world in zip(*(ends(out) for out in outs), strict=True)]
        offsets += outs[-1].ego[:, offset].abs().float().cpu().tolist()
        for run in sim[name]:
            ended_sim.append(run.ended)
            ended_encoded.append(any(ends(read_heads(engine, engine.encode(np.stack(run.frames))))))
    return {
        "drift_end_sim": float(np.mean(ended_sim)),
        "drift_end_model": float(np.mean(ended_model)),
        "drift_end_encoded": float(np.mean(ended_encoded)),
        "drift_offset_model": float(np.mean(offsets)),
    }


def _run_motion(chunks, n: int) -> float:
    """``frame_motion`` over every frame of a run's first ``n`` chunks, in order."""
    return frame_motion(np.concatenate(list(chunks[:n])))


def _frame_std(frames: np.ndarray) -> np.ndarray:
    """Pixel std of each frame over all views: (..., f, v, H, W, 3) -> (..., f)."""
    return frames.reshape(*frames.shape[:-4], -1).astype(np.float32).std(axis=-1)


def stability(
    engine: WorldModelEngine,
    starts: list[HeldoutEpisode],
    context: int,
    chunks: int,
    progress: bool = True,
) -> list[dict]:
    """A ``chunks``-long rollout from each start under its recorded actions (those after the
    context while the simulator ran), cycled; all starts run as one batch.

    Returns, per start: per-frame pixel std (min, median, last) next to the simulator's median
    (over its valid frames), ``finite`` (every latent and ego value finite), ``collapsed`` (not
    finite, or the median std of the last tenth of the rollout below ``COLLAPSE_FRACTION`` of the
    simulator's), the frame-to-frame change of the last tenth (``motion_tail``, as
    ``frame_motion``) next to the simulator's over its valid frames (``sim_motion``), and
    ``still`` (``motion_tail`` below ``STILL_FRACTION`` of ``sim_motion``).
    """
    cycles = []
    for ep in starts:
        valid = ep.actions[context:][ep.valid[context:]]
        cycles.append(valid if len(valid) else ep.actions[context:])
    engine.start(
        np.stack([ep.frames[:context] for ep in starts]),
        np.stack([ep.actions[:context] for ep in starts]),
        np.stack([ep.ego[:context] for ep in starts]),
        seeds=[ep.seed for ep in starts],
    )
    b = len(starts)
    stds, moves, finite, last = [], [], np.ones(b, bool), None
    for k in tqdm(range(chunks), desc="stable", leave=False, disable=not progress):
        actions = np.stack([cycle[k % len(cycle)] for cycle in cycles])
        out = engine.step_chunk(actions)
        frames = out.frames.cpu().numpy()
        stds.append(_frame_std(frames))
        # Per world, the change into every frame of the chunk (from the previous chunk's last).
        steps = frames.astype(np.float32)
        if last is not None:
            steps = np.concatenate([last[:, None], steps], axis=1)
        moves.append(np.abs(np.diff(steps, axis=1)).reshape(b, steps.shape[1] - 1, -1).mean(-1))
        last = frames[:, -1].astype(np.float32)
        values = torch.cat([out.latents.reshape(b, -1).float(), out.ego.float()], dim=1)
        finite &= torch.isfinite(values).all(dim=1).cpu().numpy()
    per_frame = np.concatenate(stds, axis=1)  # (b, chunks * f)
    per_move = np.concatenate(moves, axis=1)  # (b, chunks * f - 1)
    tail = max(1, per_frame.shape[1] // 10)
    results = []
    for i, ep in enumerate(starts):
        sim_frames = ep.frames[ep.valid]
        sim_std = float(np.median(_frame_std(sim_frames)))
        sim_motion = frame_motion(sim_frames.reshape(-1, *sim_frames.shape[2:]))
        tail_std = float(np.median(per_frame[i, -tail:]))
        motion_tail = float(per_move[i, -tail:].mean()) if per_move.shape[1] else math.nan
        results.append(
            {
                "chunks": chunks,
                "std_min": float(per_frame[i].min()),
                "std_median": float(np.median(per_frame[i])),
                "std_last": float(per_frame[i, -1]),
                "sim_std": sim_std,
                "finite": bool(finite[i]),
                "collapsed": bool(not finite[i] or tail_std < COLLAPSE_FRACTION * sim_std),
                "motion_tail": motion_tail,
                "sim_motion": sim_motion,
                "still": bool(motion_tail < STILL_FRACTION * sim_motion),
            }
        )
    return results


def _tile(draw_on: Image.Image, image: np.ndarray, x: int, y: int, scale: int) -> None:
    tile = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    draw_on.paste(Image.fromarray(tile), (x, y))


def strip(
    panels: list[tuple[str, HeldoutEpisode, np.ndarray]], context: int, scale: int = 1
) -> Image.Image:
    """Simulator and model views per camera (rows) over time (columns), one group per family.

    Args:
        panels: (family, episode, model frames uint8 (t, f, v, H, W, 3)) per family; the last
            frame of each chunk at the horizons of ``STRIP_HORIZONS`` within ``t`` is shown.
        context: chunks of the episode before the first generated one.
        scale: integer upscaling of every view.
    """
    label_w, head_h, gap = 120, 28, 2
    h, w = (s * scale for s in panels[0][1].frames.shape[-3:-1])
    columns = [[hz for hz in STRIP_HORIZONS if hz <= len(model)] for _, _, model in panels]
    width = label_w + sum(len(c) * (w + gap) + 3 * gap for c in columns)
    height = head_h + 2 * len(CAMERA_NAMES) * (h + gap) + len(CAMERA_NAMES) * gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(CAMERA_NAMES):
        y = head_h + r * (2 * (h + gap) + gap)
        draw.text((4, y + h // 2 - 6), name, fill=_TEXT)
        draw.text((4, y + h // 2 + 4), "sim", fill=_DIM)
        draw.text((4, y + h + gap + h // 2 - 6), name, fill=_TEXT)
        draw.text((4, y + h + gap + h // 2 + 4), "model", fill=_DIM)
    x = label_w
    for (family, episode, model), horizons in zip(panels, columns, strict=True):
        draw.text((x + 2, 2), family, fill=_TEXT)
        for hz in horizons:
            t = context + hz - 1
            ended = not episode.valid[t]
            draw.text((x + 2, 14), f"+{hz}" + (" end" if ended else ""), fill=_DIM)
            for r in range(len(CAMERA_NAMES)):
                y = head_h + r * (2 * (h + gap) + gap)
                _tile(canvas, episode.frames[t, -1, r], x, y, scale)
                _tile(canvas, model[hz - 1, -1, r], x, y + h + gap, scale)
            x += w + gap
        x += 3 * gap
    return canvas


def _all_true(values: list[bool]) -> bool:
    return bool(values) and all(values)


def _bars(families: dict) -> dict[str, bool]:
    beats = [
        fam["model_psnr"][h] > fam["copy_psnr"][h]
        for fam in families.values()
        for h in fam["model_psnr"]
        if math.isfinite(fam["model_psnr"][h]) and math.isfinite(fam["copy_psnr"][h])
    ]
    return {
        "ae_psnr_ge_30": _all_true([f["ae_psnr"] >= AE_PSNR_BAR_DB for f in families.values()]),
        "model_beats_copy_everywhere": _all_true(beats),
        "action_sensitivity_positive_everywhere": _all_true(
            [f["action_sensitivity_db"] > 0 for f in families.values()]
        ),
    }


def _overall(families: dict, heads_sim: dict, heads_model: dict) -> dict:
    fams = list(families.values())
    mean = _average
    horizons = fams[0]["model_psnr"].keys()
    return {
        "ae_psnr": mean([f["ae_psnr"] for f in fams]),
        "model_psnr": {h: mean([f["model_psnr"][h] for f in fams]) for h in horizons},
        "copy_psnr": {h: mean([f["copy_psnr"][h] for f in fams]) for h in horizons},
        "action_sensitivity_db": mean([f["action_sensitivity_db"] for f in fams]),
        # The mean of the families' means: their standard errors added in quadrature, over n.
        "action_sensitivity_se_db": math.sqrt(
            sum(f["action_sensitivity_se_db"] ** 2 for f in fams)
        ) / len(fams),
        **{key: mean([f[key] for f in fams])
           for key in (*STEER_KEYS, *THROTTLE_KEYS, *DRIFT_KEYS) if key in fams[0]},
        **_motion(mean([f["motion_model"] for f in fams]), mean([f["motion_sim"] for f in fams])),
        "stable_finite": all(f["stable"]["finite"] for f in fams),
        "stable_collapsed": any(f["stable"]["collapsed"] for f in fams),
        "stable_still": any(f["stable"]["still"] for f in fams),
        "heads_sim": heads_sim,
        "heads_model": heads_model,
    }


def _jsonable(value):
    """NaN and infinities become None: JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def run(
    checkpoint: str | Path | None = None,
    episodes: int = 3,
    horizon: int = 20,
    families: tuple[str, ...] = FAMILIES,
    stable_chunks: int = 200,
    device: str = "cpu",
    context: int = 2,
    steer_chunks: int = STEER_CHUNKS,
    throttle_chunks: int = THROTTLE_CHUNKS,
    drift_chunks: int = DRIFT_CHUNKS,
    base_seed: int = HELDOUT_BASE_SEED,
    json_path: str | Path | None = None,
    progress: bool = True,
    noise: str | None = None,
    speed: str = "heads",
    dtype: str = "float32",
) -> dict:
    """Measures the world model against the teacher simulator on held-out episodes.

    Args:
        checkpoint: world-model bundle (default: the shipped one).
        episodes: held-out episodes per family.
        horizon: generated chunks per episode after the context.
        families: scenario families to measure.
        stable_chunks: length of the stability rollout (one per family, from its longest
            episode, which the PNG strip shows too).
        device: torch device of the engine.
        context: simulator chunks that start each rollout.
        steer_chunks: chunks of the steering probe (``steering_response``); 0 skips it.
        throttle_chunks: chunks of the throttle probe (``throttle_response``); 0 skips it.
        drift_chunks: chunks of the drift probe (``drift_response``); 0 skips it.
        base_seed: first held-out seed (see :mod:`xworld_env.bench.heldout`).
        json_path: where to write the JSON; the PNG strip goes beside it (same stem, ``.png``).
        progress: show tqdm bars.
        noise: the engine's noise mode (``EngineConfig.noise``: ``fixed`` or ``fresh``); None
            (default): the checkpoint's, as the env runs it.
        speed: where the engine's ego speed comes from (``EngineConfig.speed``), which
            conditions every next chunk; the throttle probe reads the speed with the heads
            either way.
        dtype: the DiT's precision (``EngineConfig.dtype``, e.g. ``int8`` on the CPU).

    Returns:
        ``{"families", "overall", "bars", "machine", "settings"}`` as written to the JSON, with
        None where a value is undefined (e.g. AUROC with one class, no valid chunk).
    """
    if episodes < 1 or horizon < 1 or context < 1 or stable_chunks < 1:
        raise ValueError(
            "episodes, horizon, context and stable_chunks must be >= 1, got "
            f"{episodes}, {horizon}, {context}, {stable_chunks}"
        )
    if min(steer_chunks, throttle_chunks, drift_chunks) < 0:
        raise ValueError("steer_chunks, throttle_chunks and drift_chunks must be >= 0 (0 skips "
                         f"the probe), got {steer_chunks}, {throttle_chunks} and {drift_chunks}")
    if not families:
        raise ValueError("families must name at least one family")
    if noise is not None and noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES} or None (the checkpoint's), "
                         f"got {noise!r}")
    started = time.perf_counter()
    # Quality is measured on the engine as the env runs it; the bank is loaded but unused.
    runtime = load_runtime(checkpoint, None, device, dtype, noise=noise, speed=speed)
    engine = runtime.engine

    held: dict[str, list[HeldoutEpisode]] = {}
    for family in tqdm(families, desc="held-out sim episodes", leave=False, disable=not progress):
        # One generated chunk to compare is enough to keep an episode: dropping the ones that end
        # early would drop every collision, and the heads' collision AUROC with them.
        held[family] = record_heldout(
            family, episodes, horizon, context=context, base_seed=base_seed,
            min_valid=context + 1,
        )

    results, sim_parts, model_parts, panels, longest = {}, [], [], [], {}
    for family in families:
        metrics, heads_sim, heads_model, rollout = evaluate_family(
            engine, held[family], context, horizon, progress
        )
        if steer_chunks:
            metrics.update(steering_response(engine, held[family], context, steer_chunks,
                                             progress))
        if throttle_chunks:
            metrics.update(throttle_response(engine, held[family], context, throttle_chunks,
                                             progress))
        if drift_chunks:
            metrics.update(drift_response(engine, held[family], context, drift_chunks, progress))
        metrics["heads_sim"] = evaluate_heads(engine.heads, heads_sim)
        metrics["heads_model"] = evaluate_heads(engine.heads, heads_model) if heads_model else {}
        sim_parts.append(heads_sim)
        if heads_model:
            model_parts.append(heads_model)
        # The longest episode shows the most of the rollout against a live simulator.
        longest[family] = int(np.argmax([ep.length for ep in held[family]]))
        panels.append((family, held[family][longest[family]], rollout.frames[longest[family]]))
        results[family] = metrics

    starts = [held[f][longest[f]] for f in families]
    stable = stability(engine, starts, context, stable_chunks, progress)
    for family, row in zip(families, stable, strict=True):
        results[family]["stable"] = row

    overall = _overall(
        results,
        evaluate_heads(engine.heads, _concat(sim_parts)),
        evaluate_heads(engine.heads, _concat(model_parts)) if model_parts else {},
    )
    result = {
        "families": results,
        "overall": overall,
        "bars": _bars(results),
        "machine": machine_info(),
        "settings": {
            "checkpoint": str(runtime.checkpoint),
            "episodes": episodes,
            "horizon": horizon,
            "context": context,
            "horizons": list(report_horizons(horizon)),
            "families": list(families),
            "stable_chunks": stable_chunks,
            "steer_chunks": steer_chunks,
            "steer_actions": {k: [0.0, v] for k, v in STEER_ACTIONS.items()},
            "throttle_chunks": throttle_chunks,
            "throttle_actions": {k: [v, 0.0] for k, v in THROTTLE_ACTIONS.items()},
            "drift_chunks": drift_chunks,
            "drift_actions": {k: [0.0, v] for k, v in DRIFT_ACTIONS.items()},
            "device": device,
            "dtype": dtype,
            "base_seed": base_seed,
            "num_steps": engine.sampler.num_steps,
            "window": engine.config.kv_cache.window,
            "executor": type(engine.executor).__name__,
            "noise": engine.config.noise,
            "speed": engine.config.speed,
            "still_fraction": STILL_FRACTION,
            "noise_seed": "the episode's seed",
            "counterfactual_actions": "next episode of the family (one episode: negated)",
            "collapse_fraction": COLLAPSE_FRACTION,
            "seconds": time.perf_counter() - started,
        },
    }
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        png = path.with_suffix(".png")
        strip(panels, context).save(png)
        result["settings"]["png"] = str(png)
        result = _jsonable(result)
        path.write_text(json.dumps(result, indent=2))
    return _jsonable(result)


def _fmt(value: float | None, width: int = 7, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(result: dict) -> None:
    """Prints the PSNR and heads tables of a :func:`run` result."""
    horizons = [str(h) for h in result["settings"]["horizons"]]
    head = f"{'family':<13}{'AE':>7}" + "".join(f"{'m@' + h:>7}{'c@' + h:>7}" for h in horizons)
    print("PSNR dB vs the simulator (m = model, c = copy last frame, @ chunks ahead; episodes:\n"
          "held-out episodes still running at each horizon, '-': none)")
    print(head + f"{'act dB':>8}{'± se':>7}{'episodes':>10}{'std last/sim':>14}"
          f"{'motion m/sim':>14}")
    rows = [*result["families"].items(), ("overall", result["overall"])]
    for name, r in rows:
        line = f"{name:<13}{_fmt(r['ae_psnr'])}"
        for h in horizons:
            line += _fmt(r["model_psnr"].get(h)) + _fmt(r["copy_psnr"].get(h))
        line += _fmt(r["action_sensitivity_db"], 8, 3)
        se = r.get("action_sensitivity_se_db")
        line += f"{'':>7}" if se is None else f" ±{se:<5.3f}"
        counts = "/".join(str(n) for n in r.get("valid_episodes", {}).values())
        line += f"{counts:>10}"
        if "stable" in r:
            s = r["stable"]
            flag = " collapsed" if s["collapsed"] else ("" if s["finite"] else " non-finite")
            line += f"{s['std_last']:>8.1f}/{s['sim_std']:<5.1f}{flag}"
        else:
            line += f"{'':>14}"
        line += f"{_fmt(r['motion_model'], 8)}/{_fmt(r['motion_sim'], 5).strip():<5}"
        if "stable" in r and r["stable"]["still"]:
            line += f" still ({r['stable']['motion_tail']:.2f} at the end)"
        print(line)
    keys = ("collision_auroc", "off_road_auroc", "collision_accuracy", "off_road_accuracy",
            "speed_mae", "lane_offset_mae", "heading_error_mae")
    short = ("col AUC", "off AUC", "col acc", "off acc", "speed", "lane", "heading")
    print("\nheads vs simulator labels (sim = on encoded sim chunks, model = on generated latents)")
    print(f"{'family':<13}{'input':<7}" + "".join(f"{s:>9}" for s in short))
    for name, r in rows:
        for which in ("sim", "model"):
            m = r[f"heads_{which}"]
            print(f"{name:<13}{which:<7}" + "".join(_fmt(m.get(k), 9, 3) for k in keys))
    if "steer_response" in result["overall"]:
        print(f"\nsteering probe ({result['settings']['steer_chunks']} chunks at full left and "
              "full right steering from each context; pixel levels 0-255)")
        print(f"{'family':<13}{'sim L-R':>9}{'model L-R':>11}{'response':>10}{'alignment':>11}")
        for name, r in rows:
            print(f"{name:<13}{_fmt(r['steer_gap_sim'], 9)}{_fmt(r['steer_gap_model'], 11)}"
                  f"{_fmt(r['steer_response'], 10, 3)}{_fmt(r['steer_alignment'], 11, 3)}")
    if "throttle_response" in result["overall"]:
        print(f"\nthrottle probe ({result['settings']['throttle_chunks']} chunks at full throttle "
              "and full braking from each context; ego speed under throttle minus under braking, "
              "m/s, the model's as its heads read it)")
        print(f"{'family':<13}{'sim':>9}{'model':>11}{'response':>10}{'sim read':>10}"
              f"{'response':>10}{'motion sim':>12}{'model':>8}{'response':>10}")
        for name, r in rows:
            print(f"{name:<13}{_fmt(r['speed_gap_sim'], 9)}{_fmt(r['speed_gap_model'], 11)}"
                  f"{_fmt(r['throttle_response'], 10, 3)}{_fmt(r['speed_gap_encoded'], 10)}"
                  f"{_fmt(r['throttle_response_encoded'], 10, 3)}"
                  f"{_fmt(r['motion_gap_sim'], 12)}{_fmt(r['motion_gap_model'], 8)}"
                  f"{_fmt(r['motion_response'], 10, 3)}")
        print("(sim read: the heads' reading of the simulator's own chunks; motion: how much more "
              "the views change from frame to frame under throttle than under braking, pixel "
              "levels)")
    if "drift_end_model" in result["overall"]:
        print(f"\ndrift probe ({result['settings']['drift_chunks']} chunks holding steering "
              f"{DRIFT_ACTIONS['left']:g} left and right from each context)")
        print(f"{'family':<13}{'ended sim':>11}{'ended model':>13}{'sim read':>10}"
              f"{'|offset| model m':>18}")
        for name, r in rows:
            print(f"{name:<13}{_fmt(r['drift_end_sim'], 11)}{_fmt(r['drift_end_model'], 13)}"
                  f"{_fmt(r['drift_end_encoded'], 10)}{_fmt(r['drift_offset_model'], 18)}")
        print("(ended: share of the runs that end on a collision or off the road; the model's "
              "by its heads' probabilities above the env's termination threshold; sim read: the "
              "heads' reading of the simulator's own chunks)")
    bars = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in result["bars"].items())
    print("(motion: mean change from one frame to the next, pixel levels 0-255, over the compared "
          "chunks; 'still': the stability rollout's last tenth moves less than "
          f"{STILL_FRACTION:.0%} of the simulator)")
    print(f"\nbars: {bars}")
    s, machine = result["settings"], result["machine"]
    device = f", {machine['cuda_device']}" if "cuda_device" in machine else ""
    print(f"({s['episodes']} episode(s) x {len(s['families'])} family(ies), "
          f"context {s['context']}, horizon {s['horizon']}, "
          f"{s['stable_chunks']}-chunk stability rollout, full compute, {s['noise']} noise, "
          f"speed from {s['speed']}; "
          f"{s['seconds']:.0f} s on {machine['cpu_count']} CPU cores{device})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``xworld bench quality`` to ``parser``."""
    parser.add_argument("--checkpoint", default=None,
                        help=f"world-model bundle (default: {DEFAULT_CHECKPOINT.name})")
    parser.add_argument("--episodes", type=int, default=3,
                        help="held-out episodes per family (default 3)")
    parser.add_argument("--horizon", type=int, default=20,
                        help="chunks generated after the 2 context chunks (default 20)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="scenario families (default: all)")
    parser.add_argument("--stable-chunks", type=int, default=200,
                        help="length of the stability rollout (default 200)")
    parser.add_argument("--steer-chunks", type=int, default=STEER_CHUNKS,
                        help="chunks of the steering probe, full left against full right "
                             f"steering in model and simulator (default {STEER_CHUNKS}; 0 skips)")
    parser.add_argument("--throttle-chunks", type=int, default=THROTTLE_CHUNKS,
                        help="chunks of the throttle probe, full throttle against full braking "
                             "in model and simulator, compared by ego speed (default "
                             f"{THROTTLE_CHUNKS}; 0 skips)")
    parser.add_argument("--drift-chunks", type=int, default=DRIFT_CHUNKS,
                        help="chunks of the drift probe, a moderate steering held left and right "
                             "in model and simulator, compared by how many runs end off the road "
                             f"(default {DRIFT_CHUNKS}; 0 skips)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DIT_DTYPES, default="float32",
                        help="the DiT's precision (default float32; int8: CPU only)")
    parser.add_argument("--noise", choices=NOISE_MODES, default=None,
                        help="noise mode of the engine: one draw per episode reused for every "
                             "chunk (fixed) or new noise every chunk (fresh); default: the "
                             "checkpoint's, as the env runs it")
    parser.add_argument("--speed", choices=SPEED_SOURCES, default="heads",
                        help="where the ego speed that conditions each next chunk comes from: "
                             "read by the heads, or the pedals integrated with the simulator's "
                             "vehicle model (kinematic); default heads")
    parser.add_argument("--json", default=None,
                        help="write the results here, and the PNG strip beside it")


def main(args: argparse.Namespace) -> dict:
    """Runs the benchmark from parsed arguments, prints the tables and returns the result."""
    result = run(
        checkpoint=args.checkpoint,
        episodes=args.episodes,
        horizon=args.horizon,
        families=tuple(args.families),
        stable_chunks=args.stable_chunks,
        steer_chunks=args.steer_chunks,
        throttle_chunks=args.throttle_chunks,
        drift_chunks=args.drift_chunks,
        device=args.device,
        json_path=args.json,
        noise=args.noise,
        speed=args.speed,
        dtype=args.dtype,
    )
    print_table(result)
    if args.json:
        print(f"wrote {args.json} and {result['settings']['png']}")
    return result
