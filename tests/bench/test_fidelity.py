"""The fidelity benchmark, its metrics and the held-out episode recorder, on the tiny model."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from tests.model.conftest import randomize_zero_init
from xworld_env.bench import fidelity
from xworld_env.bench.heldout import (
    HELDOUT_BASE_SEED,
    HeldoutEpisode,
    heldout_seed,
    is_training_seed,
    record_heldout,
)
from xworld_env.bench.metrics import (
    frame_motion,
    psnr,
    psnr_per_frame,
    ssim,
    ssim_per_frame,
    stitch,
)
from xworld_env.data.shards import episode_seed
from xworld_env.model.checkpoint import load_bundle, save_bundle
from xworld_env.types import FAMILIES

# ------------------------------------------------------------------------------------- metrics


def test_psnr_identical_is_inf_and_known_mse_gives_known_db():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0] += 10  # frame 0: MSE 100, frame 1: identical
    assert psnr_per_frame(a, b)[0] == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr_per_frame(a, b)[1] == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 50))
    x = torch.zeros(4, 4, 3)
    assert psnr(x, x + 0.1) == pytest.approx(20.0)  # float peak 1: MSE 0.01


def test_psnr_refuses_mixed_kinds_and_shapes():
    with pytest.raises(TypeError):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_frame_motion_is_the_mean_change_between_consecutive_frames():
    still = np.full((5, 2, 4, 4, 3), 77, np.uint8)
    assert frame_motion(still) == 0.0
    moving = still.copy()
    moving[1::2] += 10  # every frame differs from the one before by 10 levels everywhere
    assert frame_motion(moving) == pytest.approx(10.0)
    # Half the pixels of the last frame change by 40: 20 over that pair, 0 over the first.
    three = still[:3].copy()
    three[2, :, :2] += 40
    assert frame_motion(three) == pytest.approx(10.0)
    assert math.isnan(frame_motion(still[:1]))
    # A new episode starting at frame 2 leaves its jump out: only the first pair, 0, is kept.
    assert frame_motion(three, starts=[2]) == 0.0
    assert math.isnan(frame_motion(three, starts=[1, 2]))
    # From frame 1 on: only the pair 1, 2 (a change of 20), and a start there leaves nothing.
    assert frame_motion(three, first=1) == pytest.approx(20.0) == frame_motion(three[1:])
    assert math.isnan(frame_motion(three, starts=[2], first=1))


def test_ssim_identical_is_one_and_falls_with_noise():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert 0.0 < ssim(a, noisy) < 0.9
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert ssim(a, noisy, window=7) < 1.0
    per = ssim_per_frame(a, noisy)
    assert per.shape == (3,) and np.mean(per) == pytest.approx(ssim(a, noisy))
    # A constant offset on flat images only moves the luminance term: l = (2ab+C1)/(a²+b²+C1).
    flat = np.full((16, 16, 3), 0.5)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert ssim(flat, flat + 0.1) == pytest.approx(expected)


def test_stitch_places_views_side_by_side():
    views = np.arange(2 * 7 * 2 * 3 * 3).reshape(2, 7, 2, 3, 3)
    out = stitch(views)
    assert out.shape == (2, 2, 21, 3)
    for v in range(7):
        np.testing.assert_array_equal(out[:, :, 3 * v : 3 * v + 3], views[:, v])
    np.testing.assert_array_equal(stitch(torch.from_numpy(views)).numpy(), out)


# ------------------------------------------------------------------------------------- held out


def test_heldout_seeds_never_collide_with_training_seeds():
    for family in FAMILIES:
        seed = heldout_seed(family, 0)
        assert seed >= HELDOUT_BASE_SEED and not is_training_seed(seed)
        assert not is_training_seed(heldout_seed(family, 99_999))
        assert is_training_seed(episode_seed(0, family, 123))
        assert is_training_seed(episode_seed(3, family, 999_999))
    with pytest.raises(ValueError, match="training seed range"):
        heldout_seed("highway", 0, base_seed=1_000_000)


def test_record_heldout_shapes_and_determinism():
    first = record_heldout("highway", episodes=1, chunks=2, context=1)
    again = record_heldout("highway", episodes=1, chunks=2, context=1)
    (ep,) = first
    assert ep.seed >= HELDOUT_BASE_SEED and ep.family == "highway"
    assert ep.frames.shape == (3, 2, 7, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (3, 2) and ep.actions.dtype == np.float32
    assert ep.ego.shape == (3, 3) and ep.ego.dtype == np.float32
    assert ep.valid.all() and ep.collision.shape == ep.off_road.shape == (3,)
    np.testing.assert_array_equal(ep.frames, again[0].frames)
    np.testing.assert_array_equal(ep.actions, again[0].actions)
    with pytest.raises(ValueError, match="min_valid"):
        record_heldout("highway", episodes=1, chunks=2, context=2, min_valid=1)


def test_simulator_psnr_compares_valid_chunks_with_the_simulator():
    chunks, f, v = 3, 2, 7
    truth = np.full((2 + chunks, f, v, 4, 4, 3), 100, np.uint8)
    valid = np.array([True, True, True, True, False])
    episode = HeldoutEpisode(
        family="highway", seed=HELDOUT_BASE_SEED, frames=truth, actions=np.zeros((5, 2)),
        ego=np.zeros((5, 3)), collision=np.zeros(5, bool), off_road=np.zeros(5, bool),
        valid=valid,
    )
    frames = np.full((chunks, f, v, 4, 4, 3), 110, np.uint8)  # every pixel off by 10
    frames[1, 1] = 100  # one frame equal to the simulator's
    frames[2] = 0  # the chunk the simulator never produced: not compared
    psnr = fidelity.simulator_psnr(frames, episode, context=2)
    expected = 10 * math.log10(255.0**2 / 100.0)
    np.testing.assert_allclose(psnr, [expected, expected, expected, math.inf])
    episode.valid[2:] = False
    assert fidelity.simulator_psnr(frames, episode, context=2).shape == (0,)


# ------------------------------------------------------------------------------------- benchmark


@pytest.fixture(scope="module")
def active_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with its adaLN-Zero weights made non-zero, so that every block
    changes its input and a reused residual shows in the frames."""
    bundle = load_bundle(tiny_checkpoint)
    randomize_zero_init(bundle.dit, std=0.2)
    return save_bundle(tmp_path_factory.mktemp("ckpt") / "active", bundle)


@pytest.fixture(scope="module")
def result(active_checkpoint):
    policies = {**fidelity.DEFAULT_POLICIES, "xcache_off": {"policy": "xcache", "floor": 1.5}}
    grid = {
        "xcache": [{"floor": 0.5, "margin": 0.5, "max_deviation": math.inf,
                    "max_rel_change": math.inf}, {"floor": 1.5}],
        "fbcache": [{"threshold": 0.3}],
        "static": [{"k": 1, "n": 2}],
    }
    return fidelity.run(
        checkpoint=active_checkpoint, families=("highway",), episodes=1, chunks=3, repeats=2,
        sweep_episodes=1, policies=policies, sweep_grid=grid, drift_chunks=(1, 2),
        drift_policy="static", progress=False,
    )


def test_run_reports_every_policy(result):
    assert set(result) >= {"settings", "machine", "episodes", "families", "overall",
                           "breakdown", "sweep", "wall_s"}
    assert result["episodes"][0]["seed"] >= HELDOUT_BASE_SEED
    keys = {"skip_rate", "skip_rate_all", "dit_speedup", "step_speedup", "denoise_speedup",
            "psnr_mean", "psnr_min", "ssim_mean", "sim_psnr_mean", "per_block", "ms_per_chunk"}
    for rows in (result["families"]["highway"], result["overall"]):
        assert set(rows) == {"none", "xcache", "xcache_hold", "fbcache", "static", "xcache_off"}
        for row in rows.values():
            assert keys <= set(row)
            assert 0.0 <= row["skip_rate"] <= 1.0 and 0.0 <= row["skip_rate_all"] <= 1.0
            assert all(0.0 <= r <= 1.0 for r in row["per_block"].values())
            assert row["dit_speedup"] > 0 and row["step_speedup"] > 0
    overall = result["overall"]
    assert overall["none"]["pass_agreement"] is None
    assert 0.0 <= overall["xcache"]["pass_agreement"] <= 1.0
    # Full compute against its own second repeat: the CPU rollout is deterministic.
    assert overall["none"]["psnr_mean"] in (math.inf, None)
    assert overall["none"]["dit_speedup"] == pytest.approx(1.0)
    # A floor above 1 never reuses: identical to full compute.
    assert overall["xcache_off"]["psnr_mean"] == math.inf
    assert overall["xcache_off"]["ssim_mean"] == pytest.approx(1.0)
    assert overall["xcache_off"]["skip_rate"] == 0.0
    # Against the simulator's frames: finite, and the same for rollouts with the same frames.
    assert math.isfinite(overall["none"]["sim_psnr_mean"])
    assert overall["xcache_off"]["sim_psnr_mean"] == overall["none"]["sim_psnr_mean"]
    assert all(math.isfinite(p["sim_psnr_mean"]) for p in result["sweep"]["points"])
    # Motion: the same frames move the same; the simulator's is one figure for every policy.
    assert overall["none"]["motion"] >= 0 and overall["none"]["sim_motion"] > 0
    assert overall["xcache_off"]["motion"] == overall["none"]["motion"]
    assert len({row["sim_motion"] for row in overall.values()}) == 1
    assert all(p["motion"] >= 0 for p in result["sweep"]["points"])
    # Static reuse with k=1, n=2 reuses every other chunk after warmup: chunk 2 of 3.
    assert overall["static"]["skip_rate"] > 0.0
    assert overall["static"]["psnr_min"] < math.inf
    assert len(overall["static"]["psnr_per_frame"]) == 3 * 2
    caps = result["breakdown"]["caps"]
    assert caps["dit_cap"] >= 1.0 and caps["anchor_fraction"] == pytest.approx(0.5)


def test_drift_stops_reusing_at_the_switch(result):
    drift = result["drift"]
    assert set(drift) == {"1", "2"} and result["settings"]["drift_policy"] == "static"
    for d in drift.values():
        assert len(d["episodes"]) == 1 and d["faded"] in (0, 1)
        assert set(d["episodes"][0]) == {"family", "seed", "psnr_at_switch", "psnr_last",
                                         "psnr_min"}
    # Static 1-of-2 reuses only the last of the 3 chunks (its own rollout differs from full
    # compute, above); switching to full compute at chunk 1 or 2 leaves it identical.
    assert result["overall"]["static"]["psnr_min"] < math.inf
    assert drift["1"]["psnr_mean"] == drift["2"]["psnr_min"] == math.inf


def test_drift_settings_are_checked(active_checkpoint):
    with pytest.raises(ValueError, match=r"drift_chunks must be ints in \[1, 3\)"):
        fidelity.run(checkpoint=active_checkpoint, chunks=3, drift_chunks=(3,), progress=False)
    with pytest.raises(ValueError, match="drift_policy 'nope' is not one of the policies"):
        fidelity.run(checkpoint=active_checkpoint, chunks=3, drift_chunks=(1,),
                     drift_policy="nope", progress=False)


def test_sweep_and_pareto(result):
    sweep = result["sweep"]
    labels = [p["label"] for p in sweep["points"]]
    assert labels[0] == "none" and "xcache[floor=1.5]" in labels
    for check in sweep["pareto"].values():
        assert isinstance(check["on_or_above_every_baseline"], bool)
        assert {b["label"] for b in check["baselines"]} == {"fbcache[threshold=0.3]",
                                                            "static[k=1,n=2]"}


def test_front_check_interpolates():
    points = [
        {"label": "a", "policy": "xcache", "s": 1.0, "psnr_mean": 50.0},
        {"label": "b", "policy": "xcache", "s": 3.0, "psnr_mean": 30.0},
        {"label": "under", "policy": "static", "s": 2.0, "psnr_mean": 39.0},
        {"label": "over", "policy": "static", "s": 2.0, "psnr_mean": 41.0},
        {"label": "same", "policy": "fbcache", "s": 0.9, "psnr_mean": math.inf},
    ]
    check = fidelity.front_check(points, "s")
    covered = {b["label"]: b["covered"] for b in check["baselines"]}
    assert covered == {"under": True, "over": False, "same": None}
    assert not check["on_or_above_every_baseline"]


def test_outputs_json_table_and_plots(result, tmp_path):
    path = tmp_path / "xcache.json"
    path.write_text(json.dumps(result))
    assert json.loads(path.read_text())["overall"]["xcache_off"]["psnr_mean"] == math.inf
    table = fidelity.format_table(result)
    assert "xcache_off" in table and "overall" in table
    for png in fidelity.write_plots(result, path.with_suffix("")):
        assert png.exists() and png.stat().st_size > 0


def test_arguments_and_main(active_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    fidelity.add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.episodes, defaults.chunks, defaults.repeats) == (3, 40, 3)
    assert defaults.families == list(FAMILIES) and not defaults.no_sweep
    assert defaults.decode_dtype == "float32" and defaults.drift_chunks is None
    path = tmp_path / "out" / "xcache.json"
    args = parser.parse_args([
        "--checkpoint", str(active_checkpoint), "--families", "merge", "--episodes", "1",
        "--chunks", "2", "--repeats", "1", "--no-sweep", "--noise", "fixed", "--json", str(path),
        "--decode-dtype", "bfloat16", "--drift-chunks", "1",
    ])
    fidelity.main(args)
    written = json.loads(path.read_text())
    assert written["settings"]["noise"] == "fixed" and written["sweep"] is None
    assert written["settings"]["decode_dtype"] == "bfloat16"
    assert set(written["drift"]) == {"1"} and written["settings"]["drift_policy"] == "xcache"
    assert path.with_name("xcache_per_block.png").exists()
    assert path.with_name("xcache_psnr.png").exists()
    assert "merge" in capsys.readouterr().out
