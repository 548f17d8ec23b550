"""``xworld bench xcache``: X-Cache against full compute and the baseline caches, side by side.

Protocol:

* Episodes are held-out simulator episodes (:mod:`xworld_env.bench.heldout`): the engine starts
  from each episode's first ``context`` chunks with a noise seed fixed per episode (the episode
  seed), then steps the episode's recorded actions; so every policy sees the same seed, context
  and actions as the full-compute rollout it is compared with.
* All policies run in one process on one engine; the order of policies rotates from repeat to
  repeat and episode to episode, so that drift (clocks, heat, other load) hits all alike. Times
  are medians over repeats; a speedup is the full-compute time over the policy's time, summed
  over the same episodes.
* Fidelity: per-frame PSNR of the stitched seven views and mean per-camera SSIM against the
  full-compute rollout, on the first repeat. ``psnr_mean`` averages the frames that differ
  (identical frames have infinite PSNR and are counted in ``identical_frames`` instead), so it
  is ``inf`` only when the whole rollout is identical; ``psnr_pooled`` is the PSNR of the mean
  squared error over all frames. For full compute itself the figures compare its second repeat
  with its first (run-to-run determinism; ``None`` with one repeat).
* Against the simulator: ``sim_psnr_mean`` is the mean per-frame PSNR of the stitched seven
  views against the simulator's own frames of the episode (its valid chunks), under the same
  actions, for every policy including full compute: how far the world model is from the ground
  truth, beside how far a cache moves it from its full-compute rollout.
* Motion: ``motion`` is how much a policy's rollout moves, the mean change from one frame to the
  next of the seven views (pixel levels 0-255, ``frame_motion``) over the chunks the simulator
  produced, and ``sim_motion`` the simulator's own over the same chunks: a cache that freezes
  the world shows it here as well as in PSNR.
* Drift: X-Cache (``drift_policy``) reusing only in the first T chunks and computing in full
  after (``drift_chunks``), against the full-compute rollout: whether the difference reuse made
  fades or grows once reuse stops, i.e. how much of a policy's worst frame the world model
  amplifies (``drift`` in the JSON; first repeat, untimed).
* Times of one rollout: ``denoise_s`` (the S denoising passes, engine ``dit_s``),
  ``kv_update_s`` (the full-compute pass that writes the KV cache), ``dit_s`` (their sum),
  ``decode_s``, ``heads_s``, ``step_s`` (wall time of each step: ``step_chunk``, copying the
  outputs to the host, reward terms) and ``other_s`` (``step_s`` minus the stages).

The JSON is Python's: an infinite PSNR is written ``Infinity`` (``json.load`` reads it back).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xworld_env.bench.heldout import HELDOUT_BASE_SEED, HeldoutEpisode, record_heldout
from xworld_env.bench.machine import machine_info
from xworld_env.bench.metrics import (
    finite_mean,
    frame_motion,
    mse_per_frame,
    peak_value,
    psnr_from_mse,
    psnr_per_frame,
    ssim_per_frame,
    stitch,
)
from xworld_env.engine import DECODE_DTYPES, DIT_DTYPES, NOISE_MODES, WorldModelEngine
from xworld_env.envs.rewards import RewardConfig, reward_terms
from xworld_env.envs.xworld import DEFAULT_CHECKPOINT, load_runtime
from xworld_env.types import FAMILIES
from xworld_env.xcache import XCacheConfig, make_executor

#: The reference policy every other one is compared with.
REFERENCE = "none"

#: Policies of the main comparison: label -> ``make_executor`` settings.
DEFAULT_POLICIES: dict[str, dict[str, Any]] = {
    "none": {"policy": "none"},
    "xcache": {"policy": "xcache"},
    "xcache_hold": {"policy": "xcache", "reuse": "hold"},
    "fbcache": {"policy": "fbcache"},
    "static": {"policy": "static", "k": 1, "n": 2},
}

#: Settings swept for the speed-vs-fidelity Pareto plot, per policy.
_OFF = math.inf
# Every gate test open: the sweep's points that reuse every eligible cell.
_NO_GATE = {"max_rel_change": _OFF, "floor": -1.0, "margin": 2.0, "max_deviation": _OFF}
# Linear reuse without our two bounds on what a reuse adds (predicted error, drift).
_UNBOUNDED = {"max_error": _OFF, "max_drift": _OFF}
DEFAULT_SWEEP: dict[str, list[dict[str, Any]]] = {
    # The default gate (linear reuse, predicted error, drift) at other drift thresholds, then
    # without the drift bound at other predicted-error thresholds.
    "xcache": [{"max_drift": t} for t in (0.01, 0.05, 0.1)]
    + [{"max_drift": _OFF, "max_error": t} for t in (0.006, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)]
    # Linear reuse gated on the relative change alone (no fitted gain), then on the published
    # gate, then on the published cosine alone (no deviation bound), then beyond the gate, to
    # reach the speeds of the baselines' fastest points: every eligible cell reused.
    + [{**_UNBOUNDED, "max_rel_change": t} for t in (0.002, 0.004, 0.008, 0.02)]
    + [{**_UNBOUNDED, "max_rel_change": _OFF},
       {**_UNBOUNDED, "max_rel_change": _OFF, "max_deviation": _OFF},
       {**_UNBOUNDED, **_NO_GATE}]
    # The published reuse rule (the last computed residual as it is), with our relative change,
    # without it (the published gate), and with no gate at all (every eligible cell reused, as
    # the first-block cache's largest thresholds do).
    + [{"reuse": "hold", "max_rel_change": t}
       for t in (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, _OFF)]
    + [{"reuse": "hold", **_NO_GATE}]
    # The published reuse rule gated on our relative change alone (cosine and deviation tests
    # open): at high reuse, where linear reuse no longer gains, it decides almost as the
    # first-block cache does (both compare block 0's output with its value at the last
    # computation; X-Cache per view group).
    + [{"reuse": "hold", **_NO_GATE, "max_rel_change": t} for t in (0.008, 0.015)]
    # One decision per block (published) beside the default one per pass.
    + [{"span": 1}]
    # The line continued as far as the run of reuses goes (no max_ahead), at the default
    # threshold, at 0.03 and with every eligible cell reused.
    + [{"max_ahead": _OFF}, {"max_error": 0.03, "max_ahead": _OFF},
       {**_UNBOUNDED, **_NO_GATE, "max_ahead": _OFF}],
    # On the shipped model these thresholds take its reuse from 0.40 of the blocks to 0.93 on
    # the sweep's episodes (docs/performance.md, "xworld bench xcache").
    "fbcache": [{"threshold": t} for t in (0.001, 0.002, 0.004, 0.008, 0.02)],
    "static": [{"k": k, "n": n} for k, n in ((1, 3), (1, 2), (2, 3), (3, 4))],
}

#: Chunks after which the drift measurement stops reusing (those below ``chunks`` are run).
DEFAULT_DRIFT_CHUNKS = (10, 20)

_TIME_KEYS = ("denoise_s", "kv_update_s", "dit_s", "decode_s", "heads_s", "step_s", "other_s")
# Stand-in for an infinite PSNR where points are compared or interpolated.
_INF_DB = 1e6


# ---------------------------------------------------------------------------------- loading


def load_engine(
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    noise: str | None = None,
    decode_dtype: str = "auto",
) -> WorldModelEngine:
    """The engine ``XWorld-v0`` would run on a checkpoint (default: the shipped one).

    Args:
        checkpoint: world-model checkpoint directory.
        device, dtype: where and in which precision the DiT runs.
        noise: ``"fresh"`` or ``"fixed"`` per-episode noise (default: the checkpoint's).
        decode_dtype: the decoder's precision (``EngineConfig.decode_dtype``).
    """
    return load_runtime(checkpoint, None, device, dtype, noise=noise,
                        decode_dtype=decode_dtype).engine


# ---------------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One rollout of an episode under one policy.

    Attributes:
        frames: uint8 (chunks, F, V, H, W, 3) decoded frames of every chunk.
        times: seconds per stage, keys ``_TIME_KEYS`` (see the module docstring).
        counts: block-evaluation counters of the executor (None for full compute).
    """

    frames: np.ndarray
    times: dict[str, float]
    counts: dict[str, Any] | None


def rollout(
    engine: WorldModelEngine,
    episode: HeldoutEpisode,
    settings: dict[str, Any],
    context: int,
    chunks: int | None = None,
    reward: RewardConfig | None = None,
    reuse_until: int | None = None,
) -> Rollout:
    """Starts the engine from the episode's context and steps its recorded actions.

    Args:
        engine: the engine (its executor is replaced for the rollout, then set back).
        episode: a held-out episode with at least ``context`` valid chunks.
        settings: ``make_executor`` settings, with a ``policy`` key.
        context: chunks that prime the KV cache.
        chunks: chunks to generate (default: all after the context).
        reward: reward terms computed in every step, as the env does.
        reuse_until: from this chunk on (0-based, after the context) every block is computed
            in full, whatever the policy (None: the policy decides to the end).
    """
    total = len(episode.actions)
    chunks = total - context if chunks is None else chunks
    if not episode.valid[:context].all():
        raise ValueError(f"episode {episode.seed} has invalid context chunks")
    if context + chunks > total:
        raise ValueError(f"episode {episode.seed} has {total} chunks, asked {context}+{chunks}")
    reward = reward or RewardConfig()
    executor = make_executor(dict(settings))
    previous = engine.executor
    engine.executor = executor
    try:
        engine.start(
            episode.frames[None, :context],
            episode.actions[None, :context],
            episode.ego[None, :context],
            seeds=[episode.seed],
        )
        engine.reset_stats()
        frames = np.empty((chunks, *engine.frame_shape), np.uint8)
        step_s = 0.0
        for t in range(chunks):
            if t == reuse_until:
                engine.executor = make_executor(REFERENCE)
            action = torch.from_numpy(episode.actions[context + t])[None]
            started = time.perf_counter()
            out = engine.step_chunk(action)
            frame = out.frames[0].cpu().numpy()
            ego = out.ego[0].float().cpu().numpy()
            reward_terms(ego, float(out.collision_prob[0]), float(out.off_road_prob[0]),
                         episode.family, reward)
            step_s += time.perf_counter() - started
            frames[t] = frame
    finally:
        engine.executor = previous
    stats = engine.stats
    times = {
        "denoise_s": stats["dit_s"],
        "kv_update_s": stats["kv_update_s"],
        "dit_s": stats["dit_s"] + stats["kv_update_s"],
        "decode_s": stats["decode_s"],
        "heads_s": stats["heads_s"],
        "step_s": step_s,
    }
    times["other_s"] = step_s - sum(stats[k] for k in ("dit_s", "kv_update_s", "decode_s",
                                                        "heads_s"))
    return Rollout(frames, times, _counts(executor))


def _counts(executor) -> dict[str, Any] | None:
    stats = getattr(executor, "stats", None)
    if stats is None:
        return None
    return {
        "eligible": dict(stats.eligible),
        "reused": dict(stats.reused),
        "all_evals": stats.all_evals,
        "all_reused": stats.all_reused,
        "gate_s": stats.gate_seconds,
        "passes": stats.passes(),
    }


# ---------------------------------------------------------------------------------- fidelity


@dataclass
class Fidelity:
    """Per-frame fidelity of a rollout against a reference (frames = chunks × F)."""

    mse: np.ndarray
    camera_mse: np.ndarray
    ssim: np.ndarray
    peak: float

    @property
    def psnr(self) -> np.ndarray:
        return np.asarray(psnr_from_mse(self.mse, self.peak), dtype=np.float64)


def compare(
    frames: np.ndarray, reference: np.ndarray, ssim_window: int = 11,
    device: torch.device | str | None = None,
) -> Fidelity:
    """Fidelity of (chunks, F, V, H, W, 3) frames against the reference, frame by frame (SSIM
    computed on ``device``)."""
    a = frames.reshape(-1, *frames.shape[2:])
    b = reference.reshape(-1, *reference.shape[2:])
    window = min(ssim_window, *a.shape[-3:-1])
    return Fidelity(
        mse=mse_per_frame(stitch(a), stitch(b)),
        camera_mse=mse_per_frame(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:]))
        .reshape(a.shape[:2]),
        ssim=ssim_per_frame(a, b, window=window, device=device),
        peak=peak_value(a),
    )


# ---------------------------------------------------------------------------------- measuring


@dataclass
class EpisodeResult:
    """Everything measured for one (episode, policy): times of every repeat, first-repeat
    counters and fidelity, and the first repeat's per-frame PSNR against the simulator's frames
    (``simulator_psnr``) and motion beside the simulator's (``simulator_motion``); for the
    reference, also its first repeat's frames."""

    episode: HeldoutEpisode
    times: list[dict[str, float]] = field(default_factory=list)
    counts: dict[str, Any] | None = None
    fidelity: Fidelity | None = None
    sim_psnr: np.ndarray | None = None
    frames: np.ndarray | None = None
    motion: float = math.nan
    sim_motion: float = math.nan

    def median(self, key: str) -> float:
        return float(np.median([t[key] for t in self.times]))


def measure(
    engine: WorldModelEngine,
    episodes: Sequence[HeldoutEpisode],
    policies: dict[str, dict[str, Any]],
    repeats: int,
    context: int,
    chunks: int,
    progress: bool = True,
    desc: str = "rollouts",
) -> dict[str, list[EpisodeResult]]:
    """Rolls out every episode under every policy ``repeats`` times, interleaved.

    ``policies`` must hold :data:`REFERENCE` (full compute). Fidelity is computed on the first
    repeat against the reference's first repeat; the reference's own fidelity compares its
    second repeat with its first.

    Returns:
        label -> one :class:`EpisodeResult` per episode, in episode order.
    """
    if REFERENCE not in policies:
        raise ValueError(f"policies must include the reference {REFERENCE!r}")
    labels = list(policies)
    results = {label: [EpisodeResult(ep) for ep in episodes] for label in labels}
    device = engine.device
    bar = tqdm(total=repeats * len(episodes) * len(labels), desc=desc, disable=not progress,
               leave=False)
    for r in range(repeats):
        for e, episode in enumerate(episodes):
            shift = (r + e) % len(labels)
            order = labels[shift:] + labels[:shift]
            first_frames: dict[str, np.ndarray] = {}
            for label in order:
                out = rollout(engine, episode, policies[label], context, chunks)
                result = results[label][e]
                result.times.append(out.times)
                if r == 0:
                    result.counts = out.counts
                    result.sim_psnr = simulator_psnr(out.frames, episode, context)
                    result.motion, result.sim_motion = simulator_motion(out.frames, episode,
                                                                        context)
                    first_frames[label] = out.frames
                elif r == 1 and label == REFERENCE:
                    result.fidelity = compare(out.frames, result.frames, device=device)
                bar.update()
            if r == 0:
                results[REFERENCE][e].frames = ref = first_frames[REFERENCE]
                for label, frames in first_frames.items():
                    if label != REFERENCE:
                        results[label][e].fidelity = compare(frames, ref, device=device)
    bar.close()
    return results


def simulator_psnr(frames: np.ndarray, episode: HeldoutEpisode, context: int) -> np.ndarray:
    """Per-frame PSNR of a rollout's stitched views, (chunks, F, V, H, W, 3) generated after
    ``context`` chunks, against the episode's simulator frames, over the chunks the simulator
    produced (``episode.valid``); empty when it produced none after the context."""
    truth = episode.frames[context:context + len(frames)]
    valid = episode.valid[context:context + len(frames)]
    if not valid.any():
        return np.zeros(0)
    return frame_psnr(frames[valid], truth[valid])


def simulator_motion(
    frames: np.ndarray, episode: HeldoutEpisode, context: int
) -> tuple[float, float]:
    """``frame_motion`` of a rollout's frames, (chunks, F, V, H, W, 3) generated after
    ``context`` chunks, and of the episode's simulator frames, both over the chunks the simulator
    produced; nan where it produced none."""
    valid = episode.valid[context:context + len(frames)]
    truth = episode.frames[context:context + len(frames)][valid]
    shape = frames.shape[2:]
    return (frame_motion(frames[:len(valid)][valid].reshape(-1, *shape)),
            frame_motion(truth.reshape(-1, *shape)))


def frame_psnr(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-frame PSNR of the stitched views of (chunks, F, V, H, W, 3) frames against a
    reference of the same shape: (chunks * F,)."""
    return psnr_per_frame(stitch(frames.reshape(-1, *frames.shape[2:])),
                          stitch(reference.reshape(-1, *reference.shape[2:])))


def drift(
    engine: WorldModelEngine,
    reference: Sequence[EpisodeResult],
    settings: dict[str, Any],
    switch_chunks: Sequence[int],
    context: int,
    chunks: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Rolls every episode out under ``settings`` reusing only in its first T chunks, for each
    T of ``switch_chunks``, and compares it frame by frame with the full-compute rollout
    (``reference``: full compute's results, with their frames, from :func:`measure`).

    Returns:
        T (as a string) -> ``psnr_mean``, ``psnr_min`` over every frame; ``faded``, the
        episodes whose last chunk is as close to full compute as the last reused chunk (T - 1)
        or closer; ``episodes``: per episode its ``psnr_at_switch`` / ``psnr_last`` (the worst
        frame of chunk T - 1 / of the last chunk) and ``psnr_min``.
    """
    out: dict[str, Any] = {}
    bar = tqdm(total=len(switch_chunks) * len(reference), desc="drift", disable=not progress,
               leave=False)
    for t in switch_chunks:
        rows, every = [], []
        for ref in reference:
            frames = rollout(engine, ref.episode, settings, context, chunks, reuse_until=t).frames
            psnr = frame_psnr(frames, ref.frames).reshape(chunks, -1)
            every.append(psnr)
            rows.append({
                "family": ref.episode.family, "seed": ref.episode.seed,
                "psnr_at_switch": float(psnr[t - 1].min()), "psnr_last": float(psnr[-1].min()),
                "psnr_min": float(psnr.min()),
            })
            bar.update()
        psnr = np.concatenate(every)
        out[str(t)] = {
            "psnr_mean": finite_mean(psnr),
            "psnr_min": float(psnr.min()),
            "faded": sum(r["psnr_last"] >= r["psnr_at_switch"] for r in rows),
            "episodes": rows,
        }
    bar.close()
    return out


def summarize(
    results: Sequence[EpisodeResult], reference: Sequence[EpisodeResult], chunks: int
) -> dict[str, Any]:
    """Skip rates, speedups, fidelity and per-chunk times of one policy over some episodes.

    Args:
        results: the policy's results on some episodes.
        reference: full compute on the same episodes.
        chunks: chunks per rollout (for per-chunk times).
    """
    out: dict[str, Any] = {}
    out.update(_skip_rates([r.counts for r in results]))
    total = {k: sum(r.median(k) for r in results) for k in _TIME_KEYS}
    ref = {k: sum(r.median(k) for r in reference) for k in _TIME_KEYS}
    out["dit_speedup"] = _ratio(ref["dit_s"], total["dit_s"])
    out["step_speedup"] = _ratio(ref["step_s"], total["step_s"])
    out["denoise_speedup"] = _ratio(ref["denoise_s"], total["denoise_s"])
    n = len(results) * chunks
    out["ms_per_chunk"] = {k.removesuffix("_s"): 1e3 * v / n for k, v in total.items()}
    out.update(_fidelity_summary([r.fidelity for r in results]))
    sim = [r.sim_psnr for r in results if r.sim_psnr is not None and len(r.sim_psnr)]
    out["sim_psnr_mean"] = finite_mean(np.concatenate(sim)) if sim else None
    for key in ("motion", "sim_motion"):
        values = [getattr(r, key) for r in results if math.isfinite(getattr(r, key))]
        out[key] = float(np.mean(values)) if values else None
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _skip_rates(counts: Sequence[dict | None]) -> dict[str, Any]:
    eligible: dict[tuple[int, int], int] = {}
    reused: dict[tuple[int, int], int] = {}
    all_evals = all_reused = gated = mixed = 0
    gate_s = 0.0
    for c in counts:
        if c is None:
            continue
        for key, value in c["eligible"].items():
            eligible[key] = eligible.get(key, 0) + value
        for key, value in c["reused"].items():
            reused[key] = reused.get(key, 0) + value
        all_evals += c["all_evals"]
        all_reused += c["all_reused"]
        gate_s += c["gate_s"]
        gated += c["passes"][0]
        mixed += c["passes"][1]

    def rate(keys) -> float:
        e = sum(eligible[k] for k in keys)
        return sum(reused.get(k, 0) for k in keys) / e if e else 0.0

    blocks = sorted({blk for _, blk in eligible})
    steps = sorted({s for s, _ in eligible})
    return {
        "skip_rate": rate(list(eligible)),
        "skip_rate_all": all_reused / all_evals if all_evals else 0.0,
        "per_block": {str(blk): rate([k for k in eligible if k[1] == blk]) for blk in blocks},
        "per_step": {str(s): rate([k for k in eligible if k[0] == s]) for s in steps},
        "gate_s": gate_s,
        # Share of (world, denoising pass) pairs whose gated blocks all decided alike.
        "pass_agreement": 1.0 - mixed / gated if gated else None,
    }


def _fidelity_summary(fidelities: Sequence[Fidelity | None]) -> dict[str, Any]:
    present = [f for f in fidelities if f is not None]
    keys = ("psnr_mean", "psnr_min", "psnr_pooled", "identical_frames", "ssim_mean", "ssim_min",
            "psnr_per_camera", "psnr_per_frame")
    if not present:
        return dict.fromkeys(keys)
    mse = np.concatenate([f.mse for f in present])
    psnr = np.concatenate([f.psnr for f in present])
    ssim = np.concatenate([f.ssim for f in present])
    camera_mse = np.concatenate([f.camera_mse for f in present])
    peak = present[0].peak
    camera_psnr = np.asarray(psnr_from_mse(camera_mse, peak), dtype=np.float64)
    per_frame = np.stack([f.psnr for f in present]) if len({len(f.mse) for f in present}) == 1 \
        else None
    return {
        "psnr_mean": finite_mean(psnr),
        "psnr_min": float(psnr.min()),
        "psnr_pooled": float(psnr_from_mse(float(mse.mean()), peak)),
        "identical_frames": float(np.mean(mse == 0)),
        "ssim_mean": float(ssim.mean()),
        "ssim_min": float(ssim.min()),
        "psnr_per_camera": [finite_mean(camera_psnr[:, v]) for v in range(camera_psnr.shape[1])],
        # Mean over episodes of frame i, for the per-frame plot.
        "psnr_per_frame": None if per_frame is None
        else [finite_mean(per_frame[:, i]) for i in range(per_frame.shape[1])],
    }


# ---------------------------------------------------------------------------------- time budget


def breakdown(
    summaries: dict[str, dict[str, Any]], num_steps: int, depth: int, xcache: XCacheConfig
) -> dict[str, Any]:
    """Where the time of a step goes, per policy, and the speedup the KV-update pass allows.

    The KV-update pass and the anchors always compute, so even with every other block reused
    at no cost the DiT time only falls to ``denoise * anchor_fraction + kv_update``:
    ``dit_cap = (D + K) / (D * a + K)`` with the measured full-compute denoise time ``D`` and
    KV-update time ``K``, ``a = (front_anchor + tail_anchor) / depth`` (with ``K = D / S`` this
    is ``(S + 1) / (S * a + 1)``). ``step_cap`` applies the same saving to the whole step.
    ``dit_ideal`` is the DiT speedup if reused blocks were free and every block evaluation cost
    the same, at the policy's measured ``skip_rate_all``.
    """
    stages = ("denoise", "kv_update", "decode", "heads", "other")
    out: dict[str, Any] = {}
    for label, summary in summaries.items():
        ms = summary["ms_per_chunk"]
        step = ms["step"]
        out[label] = {
            "ms_per_chunk": {s: ms[s] for s in (*stages, "step")},
            "fraction": {s: ms[s] / step if step > 0 else math.nan for s in stages},
        }
        if label != REFERENCE:
            out[label]["dit_ideal"] = 1.0 / max(1.0 - summary["skip_rate_all"], 1e-9)
    ref = summaries[REFERENCE]["ms_per_chunk"]
    d, k, step = ref["denoise"], ref["kv_update"], ref["step"]
    anchor = min((xcache.front_anchor + xcache.tail_anchor) / depth, 1.0)
    saved = d * (1.0 - anchor)
    out["caps"] = {
        "num_steps": num_steps,
        "depth": depth,
        "anchor_fraction": anchor,
        "dit_cap": _ratio(d + k, d + k - saved),
        "step_cap": _ratio(step, step - saved),
        "dit_cap_formula": (num_steps + 1) / (num_steps * anchor + 1),
        "kv_update_share_of_dit": _ratio(k, d + k),
    }
    return out


# ---------------------------------------------------------------------------------- pareto


def pareto_front(points: Sequence[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    """The points no other point beats on both ``x`` and ``y`` (higher is better), by ``x``."""
    front = [
        p for p in points
        if not any(_v(q[x]) >= _v(p[x]) and _v(q[y]) >= _v(p[y])
                   and (_v(q[x]) > _v(p[x]) or _v(q[y]) > _v(p[y])) for q in points)
    ]
    return sorted(front, key=lambda p: _v(p[x]))


def _v(value: float | None) -> float:
    if value is None or math.isnan(value):
        return -math.inf
    return min(value, _INF_DB)


def front_check(
    points: Sequence[dict[str, Any]], x: str, y: str = "psnr_mean", policy: str = "xcache"
) -> dict[str, Any]:
    """Whether ``policy``'s front lies on or above every baseline point.

    A baseline point is covered when a ``policy`` point is at least as good on both axes, or
    when the ``policy`` front, interpolated linearly at the point's ``x``, is at least as high.
    Baseline points with infinite ``y`` reused nothing (identical to full compute) and are no
    trade-off; they are listed but not judged.
    """
    ours = [p for p in points if p["policy"] == policy]
    front = pareto_front(ours, x, y)
    xs = np.array([_v(p[x]) for p in front])
    ys = np.array([_v(p[y]) for p in front])
    verdicts = []
    for p in points:
        if p["policy"] in (policy, REFERENCE):
            continue
        px, py = _v(p[x]), _v(p[y])
        row = {"label": p["label"], x: p[x], y: p[y]}
        if py >= _INF_DB:
            row.update(covered=None, how="identical to full compute: not a trade-off point")
        elif (dominating := [q["label"] for q in ours if _v(q[x]) >= px and _v(q[y]) >= py]):
            row.update(covered=True, how=f"dominated by {dominating[0]}")
        elif len(xs) and xs[0] <= px <= xs[-1]:
            at = float(np.interp(px, xs, ys))
            row.update(covered=at >= py, how=f"{policy} front interpolated: {at:.2f}")
        else:
            row.update(covered=False, how=f"outside the {policy} front's {x} range")
        verdicts.append(row)
    judged = [v["covered"] for v in verdicts if v["covered"] is not None]
    return {
        "x": x,
        "y": y,
        "front": [p["label"] for p in front],
        "baselines": verdicts,
        "on_or_above_every_baseline": bool(judged) and all(judged),
    }


def sweep_policies(grid: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Label -> ``make_executor`` settings for every point of a sweep grid, reference first."""
    out = {REFERENCE: {"policy": REFERENCE}}
    for policy, points in grid.items():
        for settings in points:
            tag = ",".join(f"{k}={v}" for k, v in settings.items())
            out[f"{policy}[{tag}]"] = {"policy": policy, **settings}
    return out


# ---------------------------------------------------------------------------------- run


def run(
    checkpoint: str | Path | None = None,
    families: Sequence[str] = FAMILIES,
    episodes: int = 3,
    chunks: int = 40,
    repeats: int = 3,
    sweep: bool = True,
    sweep_episodes: int = 1,
    sweep_repeats: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    noise: str | None = None,
    decode_dtype: str = "float32",
    context: int = 2,
    base_seed: int = HELDOUT_BASE_SEED,
    policies: dict[str, dict[str, Any]] | None = None,
    sweep_grid: dict[str, list[dict[str, Any]]] | None = None,
    drift_chunks: Sequence[int] | None = None,
    drift_policy: str = "xcache",
    warmup: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the benchmark and returns its results (see the module docstring).

    Args:
        checkpoint: world-model checkpoint (default: the shipped one).
        families: scenario families.
        episodes: held-out episodes per family.
        chunks: chunks rolled out after the context.
        repeats: timed repeats of every rollout (times are medians).
        sweep: also run the threshold sweep.
        sweep_episodes: episodes per family in the sweep (the first ones).
        sweep_repeats: timed repeats in the sweep.
        device, dtype: where and in which precision the DiT runs.
        noise: ``"fresh"`` or ``"fixed"`` per-episode noise (default: the checkpoint's).
        decode_dtype: the decoder's precision (``EngineConfig.decode_dtype``), the same for
            every policy; float32 by default, so that pixels differ exactly where latents do
            (a bfloat16 decoder rounds to about 54 dB of the float32 one, and can round small
            differences of latents to the same pixels).
        context: chunks that start the engine.
        base_seed: first held-out seed.
        policies: label -> ``make_executor`` settings of the main comparison; must include
            ``"none"`` (default :data:`DEFAULT_POLICIES`).
        sweep_grid: policy -> list of settings (default :data:`DEFAULT_SWEEP`).
        drift_chunks: the chunks T after which the drift measurement stops reusing, each in
            ``[1, chunks)``; empty: no drift measurement. Default: those of
            :data:`DEFAULT_DRIFT_CHUNKS` below ``chunks``.
        drift_policy: the label in ``policies`` the drift measurement runs (skipped when
            ``policies`` has no such label and ``drift_chunks`` is left to its default).
        warmup: one short untimed rollout per policy first (kernel and allocator warmup).
        progress: show progress bars.
    """
    if episodes < 1 or chunks < 1 or repeats < 1 or sweep_repeats < 1:
        raise ValueError("episodes, chunks, repeats and sweep_repeats must be >= 1")
    policies = dict(DEFAULT_POLICIES if policies is None else policies)
    grid = DEFAULT_SWEEP if sweep_grid is None else sweep_grid
    if drift_chunks is None:
        drift_chunks = [t for t in DEFAULT_DRIFT_CHUNKS if t < chunks] \
            if drift_policy in policies else []
    else:
        drift_chunks = list(drift_chunks)
        bad = [t for t in drift_chunks if not (isinstance(t, int) and 1 <= t < chunks)]
        if bad:
            raise ValueError(f"drift_chunks must be ints in [1, {chunks}) (chunks = {chunks}), "
                             f"got {bad}")
        if drift_chunks and drift_policy not in policies:
            raise ValueError(f"drift_policy {drift_policy!r} is not one of the policies "
                             f"{sorted(policies)}")
    started = time.perf_counter()
    engine = load_engine(checkpoint, device, dtype, noise, decode_dtype)
    f, v, h, w, _ = engine.frame_shape
    env_kwargs = {"rig": {"height": h, "width": w}} if (h, w) != (64, 64) else {}

    recorded: dict[str, list[HeldoutEpisode]] = {}
    for family in tqdm(families, desc="held-out episodes", disable=not progress, leave=False):
        recorded[family] = record_heldout(family, episodes, chunks, context, base_seed,
                                          min_valid=context, env_kwargs=env_kwargs)
    first = recorded[families[0]][0]
    if first.frames.shape[1:] != (f, v, h, w, 3):
        raise ValueError(
            f"simulator chunks {first.frames.shape[1:]} do not match the world model's "
            f"{(f, v, h, w, 3)}"
        )
    if warmup:
        for settings in (*policies.values(), *(sweep_policies(grid).values() if sweep else ())):
            rollout(engine, first, settings, context, min(chunks, 3))

    all_episodes = [ep for family in families for ep in recorded[family]]
    results = measure(engine, all_episodes, policies, repeats, context, chunks, progress,
                      desc="policies")

    def group(label: str, family: str | None) -> list[EpisodeResult]:
        return [r for r in results[label] if family is None or r.episode.family == family]

    per_family = {
        family: {label: summarize(group(label, family), group(REFERENCE, family), chunks)
                 for label in policies}
        for family in families
    }
    overall = {label: summarize(group(label, None), group(REFERENCE, None), chunks)
               for label in policies}
    xcache_cfg = next((XCacheConfig(**{k: v for k, v in s.items() if k != "policy"})
                       for s in policies.values() if s.get("policy") == "xcache"), XCacheConfig())
    result: dict[str, Any] = {
        "benchmark": "xcache",
        "settings": {
            "checkpoint": str(checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT),
            "families": list(families),
            "episodes": episodes,
            "chunks": chunks,
            "context": context,
            "repeats": repeats,
            "sweep": sweep,
            "sweep_episodes": sweep_episodes,
            "sweep_repeats": sweep_repeats,
            "device": device,
            "dtype": dtype,
            "decode_dtype": engine.decode_dtype,
            "noise": engine.config.noise,
            "base_seed": base_seed,
            "warmup": warmup,
            "policies": policies,
            "sweep_grid": grid if sweep else None,
            "drift_chunks": drift_chunks,
            "drift_policy": drift_policy if drift_chunks else None,
            "num_steps": engine.sampler.num_steps,
            "window": engine.config.kv_cache.window,
            "depth": engine.dit.config.depth,
            "width": engine.dit.config.width,
            "frame_shape": list(engine.frame_shape),
        },
        "machine": machine_info(),
        "episodes": [
            {"family": ep.family, "seed": ep.seed, "noise_seed": ep.seed,
             "valid_chunks": ep.length, "total_chunks": len(ep.valid)}
            for ep in all_episodes
        ],
        "families": per_family,
        "overall": overall,
        "breakdown": breakdown(overall, engine.sampler.num_steps, engine.dit.config.depth,
                               xcache_cfg),
        "sweep": None,
        "drift": drift(engine, results[REFERENCE], policies[drift_policy], drift_chunks,
                       context, chunks, progress) if drift_chunks else None,
    }
    if sweep:
        subset = [ep for family in families for ep in recorded[family][:sweep_episodes]]
        swept = sweep_policies(grid)
        sweep_results = measure(engine, subset, swept, sweep_repeats, context, chunks, progress,
                                desc="sweep")
        points = []
        for label, settings in swept.items():
            s = summarize(sweep_results[label], sweep_results[REFERENCE], chunks)
            points.append({
                "label": label, "policy": settings["policy"],
                "settings": {k: v for k, v in settings.items() if k != "policy"},
                **{k: s[k] for k in ("skip_rate", "skip_rate_all", "pass_agreement",
                                     "dit_speedup", "step_speedup", "denoise_speedup",
                                     "psnr_mean", "psnr_min", "psnr_pooled", "ssim_mean",
                                     "sim_psnr_mean", "motion")},
            })
        result["sweep"] = {
            "episodes": [{"family": ep.family, "seed": ep.seed} for ep in subset],
            "points": points,
            "pareto": {x: front_check(points, x) for x in ("dit_speedup", "step_speedup")},
        }
    result["wall_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------- output


def format_table(result: dict[str, Any]) -> str:
    """The readable table: family × policy, then where the time goes."""
    head = (f"{'family':<13}{'policy':<9}{'skip':>6}{'skip_all':>9}{'agree':>7}{'dit x':>7}"
            f"{'step x':>7}"
            f"{'denoise x':>10}{'PSNR mean':>10}{'PSNR min':>9}{'SSIM':>8}{'sim PSNR':>9}"
            f"{'motion':>8}")
    lines = [head, "-" * len(head)]
    groups = [*result["families"].items(), ("overall", result["overall"])]
    for family, rows in groups:
        for label, s in rows.items():
            lines.append(
                f"{family:<13}{label:<9}{s['skip_rate']:>6.2f}{s['skip_rate_all']:>9.2f}"
                f"{_num(s.get('pass_agreement'), 2):>7}{s['dit_speedup']:>7.2f}"
                f"{s['step_speedup']:>7.2f}{s['denoise_speedup']:>10.2f}"
                f"{_db(s['psnr_mean']):>10}{_db(s['psnr_min']):>9}{_num(s['ssim_mean']):>8}"
                f"{_db(s['sim_psnr_mean']):>9}{_num(s.get('motion'), 2):>8}"
            )
    sim_motion = result["overall"][REFERENCE].get("sim_motion")
    lines.append(f"(motion: mean change from one frame to the next, pixel levels 0-255; the "
                 f"simulator's over the same chunks: {_num(sim_motion, 2)})")
    lines.append("")
    stages = ("denoise", "kv_update", "decode", "heads", "other", "step")
    lines.append(f"{'ms per chunk':<13}" + "".join(f"{s:>11}" for s in stages))
    for label, row in result["breakdown"].items():
        if label == "caps":
            continue
        lines.append(f"{label:<13}" + "".join(f"{row['ms_per_chunk'][s]:>11.2f}" for s in stages))
    caps = result["breakdown"]["caps"]
    lines.append(
        f"KV-update pass = {caps['kv_update_share_of_dit']:.0%} of full-compute DiT time; with "
        f"anchors ({caps['anchor_fraction']:.2f} of blocks) the cap is {caps['dit_cap']:.2f}x DiT,"
        f" {caps['step_cap']:.2f}x step (formula (S+1)/(S*a+1) = {caps['dit_cap_formula']:.2f})"
    )
    drifted = result.get("drift")
    if drifted:
        label = result["settings"]["drift_policy"]
        lines.append(f"{label} reusing only in the first T chunks, full compute after "
                     "(PSNR against full compute):")
        for t, d in drifted.items():
            lines.append(
                f"  T = {t:>3}: mean {_db(d['psnr_mean'])}, min {_db(d['psnr_min'])} dB; last "
                f"chunk as close as at chunk T - 1 or closer in {d['faded']} of "
                f"{len(d['episodes'])} episodes"
            )
    sweep = result.get("sweep")
    if sweep:
        for x, check in sweep["pareto"].items():
            verdict = "yes" if check["on_or_above_every_baseline"] else "no"
            lines.append(f"X-Cache on or above every baseline ({x} vs PSNR): {verdict}")
            lines.extend(f"  {b['label']:<28} {b['how']}" for b in check["baselines"])
    return "\n".join(lines)


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_plots(result: dict[str, Any], stem: Path) -> list[Path]:
    """Writes ``{stem}_per_block.png``, ``{stem}_psnr.png`` and ``{stem}_pareto.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    overall = result["overall"]
    cached = [label for label in overall if label != REFERENCE]

    fig, ax = plt.subplots(figsize=(8, 4))
    blocks = sorted({int(b) for label in cached for b in overall[label]["per_block"]})
    width = 0.8 / max(len(cached), 1)
    for i, label in enumerate(cached):
        rates = [overall[label]["per_block"].get(str(b), 0.0) for b in blocks]
        ax.bar(np.array(blocks) + (i - (len(cached) - 1) / 2) * width, rates, width, label=label)
    ax.set(xlabel="DiT block", ylabel="skip rate (eligible evaluations)", ylim=(0, 1),
           title="Per-block skip rate")
    ax.legend()
    paths.append(_save(fig, stem, "per_block"))

    fig, ax = plt.subplots(figsize=(8, 4))
    for label in cached:
        series = overall[label]["psnr_per_frame"]
        if series:
            ax.plot(np.arange(len(series)), [min(v, 100.0) for v in series], label=label)
    ax.set(xlabel="frame", ylabel="PSNR vs full compute (dB, stitched views)",
           title="Per-frame PSNR over the rollout (mean over episodes; inf drawn at 100)")
    ax.legend()
    paths.append(_save(fig, stem, "psnr"))

    sweep = result.get("sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 5))
        for policy in dict.fromkeys(_plot_group(p) for p in sweep["points"]):
            if policy == REFERENCE:
                continue
            pts = [p for p in sweep["points"] if _plot_group(p) == policy
                   and p["psnr_mean"] is not None and math.isfinite(p["psnr_mean"])]
            if not pts:
                continue
            (marks,) = ax.plot([p["dit_speedup"] for p in pts], [p["psnr_mean"] for p in pts],
                               "o", label=policy)
            front = pareto_front(pts, "dit_speedup", "psnr_mean")
            ax.plot([p["dit_speedup"] for p in front], [p["psnr_mean"] for p in front], "-",
                    color=marks.get_color(), alpha=0.6)
            for p in pts:
                tag = ",".join(f"{k}={v}" for k, v in p["settings"].items())
                ax.annotate(tag, (p["dit_speedup"], p["psnr_mean"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="DiT speedup vs full compute", ylabel="PSNR mean (dB, stitched views)",
               title="Speed vs fidelity (lines: each policy's Pareto front)")
        ax.legend()
        paths.append(_save(fig, stem, "pareto"))
    return paths


def _plot_group(point: dict[str, Any]) -> str:
    """The series a sweep point is drawn in: its policy, X-Cache's published reuse rule and
    X-Cache without the drift bound or without both bounds apart."""
    if point["policy"] == "xcache":
        settings = point["settings"]
        if settings.get("reuse") == "hold":
            return "xcache (reuse: hold)"
        if settings.get("max_ahead") == math.inf:
            return "xcache (no max_ahead)"
        if settings.get("max_error") == math.inf:
            return "xcache (no predicted error, no drift bound)"
        if settings.get("max_drift") == math.inf:
            return "xcache (no drift bound)"
    return point["policy"]


def _save(fig, stem: Path, name: str) -> Path:
    path = stem.with_name(f"{stem.name}_{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``xworld bench xcache``."""
    parser.add_argument("--checkpoint", default=None,
                        help="world-model checkpoint directory (default: the shipped one)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                        help="scenario families (default: all)")
    parser.add_argument("--episodes", type=int, default=3,
                        help="held-out episodes per family (default 3)")
    parser.add_argument("--chunks", type=int, default=40,
                        help="chunks rolled out after the 2 context chunks (default 40)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats per rollout; times are medians (default 3)")
    parser.add_argument("--sweep-episodes", type=int, default=1,
                        help="episodes per family in the threshold sweep (default 1)")
    parser.add_argument("--sweep-repeats", type=int, default=1,
                        help="timed repeats per rollout in the sweep (default 1)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep")
    parser.add_argument("--drift-chunks", type=int, nargs="*", default=None,
                        help="X-Cache reuses only in the first T chunks, then computes in "
                             "full, for each T given; no value: skip (default: those of "
                             f"{' '.join(map(str, DEFAULT_DRIFT_CHUNKS))} below --chunks)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=DIT_DTYPES,
                        help="DiT precision (default float32)")
    parser.add_argument("--decode-dtype", default="float32", choices=DECODE_DTYPES,
                        help="decoder precision of every policy (default float32, for exact "
                             "fidelity; auto: as the envs)")
    parser.add_argument("--noise", default=None, choices=NOISE_MODES,
                        help="per-episode noise: fresh or fixed (default: the checkpoint's)")
    parser.add_argument("--json", default=None,
                        help="write the results to this JSON file, and the PNGs next to it")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark from parsed :func:`add_arguments` options, prints and writes it."""
    result = run(
        checkpoint=args.checkpoint,
        families=tuple(args.families),
        episodes=args.episodes,
        chunks=args.chunks,
        repeats=args.repeats,
        sweep=not args.no_sweep,
        sweep_episodes=args.sweep_episodes,
        sweep_repeats=args.sweep_repeats,
        drift_chunks=args.drift_chunks,
        device=args.device,
        dtype=args.dtype,
        noise=args.noise,
        decode_dtype=args.decode_dtype,
    )
    print(format_table(result))
    machine = result["machine"]
    print(f"({machine.get('cuda_device', machine['processor'])}, {args.device}, {args.dtype}, "
          f"decoder {result['settings']['decode_dtype']}, {result['settings']['noise']} noise; "
          f"{result['wall_s']:.0f} s)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
        for png in write_plots(result, path.with_suffix("")):
            print(f"wrote {png}")
    return result
