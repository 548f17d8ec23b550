"""``xworld bench quality`` on a tiny random world model: result layout, PNG, copy baseline."""

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from xworld_env.bench.heldout import record_heldout
from xworld_env.bench.quality import (
    DRIFT_CHUNKS,
    STEER_CHUNKS,
    THROTTLE_CHUNKS,
    add_arguments,
    copy_baseline,
    drift_response,
    hold_in_sim,
    run,
    standard_error,
    steer_pair,
    steering_response,
    throttle_response,
)
from xworld_env.envs.xworld import load_runtime
from xworld_env.types import FAMILIES

CONTEXT, HORIZON = 2, 2


@pytest.fixture(scope="module")
def quality(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "quality.json"
    result = run(
        checkpoint=tiny_checkpoint,
        episodes=1,
        horizon=HORIZON,
        families=("highway",),
        stable_chunks=3,
        context=CONTEXT,
        json_path=path,
        progress=False,
    )
    return result, path


def test_result_layout_and_files(quality):
    result, path = quality
    assert set(result) == {"families", "overall", "bars", "machine", "settings"}
    assert json.loads(path.read_text()) == result
    assert result["settings"]["png"] == str(path.with_suffix(".png"))
    assert path.with_suffix(".png").is_file()
    fam = result["families"]["highway"]
    assert set(fam["model_psnr"]) == set(fam["copy_psnr"]) == {"1", "2"}
    assert math.isfinite(fam["copy_psnr"]["1"]) and math.isfinite(fam["ae_psnr"])
    assert isinstance(fam["action_sensitivity_db"], float)
    # One episode has no spread to estimate: null, and so is the overall one.
    assert fam["action_sensitivity_se_db"] is None
    assert result["overall"]["action_sensitivity_se_db"] is None
    stable = fam["stable"]
    assert stable["chunks"] == 3 and stable["finite"] is True
    assert isinstance(stable["collapsed"], bool) and stable["std_min"] <= stable["std_median"]
    # Motion: frame-to-frame change of the rollout and of the simulator over the same chunks.
    assert fam["motion_sim"] > 0 and fam["motion_model"] >= 0
    assert fam["motion_ratio"] == pytest.approx(fam["motion_model"] / fam["motion_sim"])
    episode = fam["per_episode"][0]
    assert (episode["motion_model"], episode["motion_sim"]) == (
        fam["motion_model"], fam["motion_sim"])
    assert stable["sim_motion"] > 0 and stable["motion_tail"] >= 0
    assert stable["still"] == (stable["motion_tail"] < 0.1 * stable["sim_motion"])
    assert result["overall"]["stable_still"] == stable["still"]
    assert result["settings"]["noise"] == "fresh"  # the tiny checkpoint records no noise mode
    wanted = {"collision_auroc", "off_road_accuracy", "speed_mae", "lane_offset_mae"}
    for heads in (fam["heads_sim"], fam["heads_model"], result["overall"]["heads_sim"]):
        assert wanted <= heads.keys()
    assert set(result["bars"]) == {
        "ae_psnr_ge_30", "model_beats_copy_everywhere", "action_sensitivity_positive_everywhere"
    }
    # The throttle probe: the simulator drives faster under throttle than under braking.
    assert fam["speed_gap_sim"] > 0 and result["settings"]["throttle_chunks"] == THROTTLE_CHUNKS
    assert result["overall"]["throttle_response"] == fam["throttle_response"]
    assert result["settings"]["drift_chunks"] == DRIFT_CHUNKS
    for key in ("drift_end_sim", "drift_end_model", "drift_end_encoded", "drift_offset_model"):
        assert result["overall"][key] == fam[key] and fam[key] >= 0.0
    assert all(type(v) is bool for v in result["bars"].values())


def test_steering_probe_figures(quality):
    result, _ = quality
    fam, overall = result["families"]["highway"], result["overall"]
    assert result["settings"]["steer_chunks"] == STEER_CHUNKS
    assert 1 <= fam["steer_chunks_compared"] <= STEER_CHUNKS
    # Full left and full right steering move the simulator's cameras apart.
    assert fam["steer_gap_sim"] > 1.0
    assert fam["steer_response"] == pytest.approx(fam["steer_gap_model"] / fam["steer_gap_sim"])
    assert -1.0 <= fam["steer_alignment"] <= 1.0
    for key in ("steer_gap_sim", "steer_gap_model", "steer_response", "steer_alignment"):
        assert overall[key] == pytest.approx(fam[key])


def test_drift_probe_counts_the_runs_that_end(tiny_checkpoint, calm_checkpoint):
    episodes = record_heldout("highway", 2, 2, context=CONTEXT, min_valid=CONTEXT + 1)
    results = {}
    for name, path in (("random heads", tiny_checkpoint), ("calm heads", calm_checkpoint)):
        engine = load_runtime(path, None, "cpu", "float32").engine
        results[name] = drift_response(engine, episodes, CONTEXT, 3, progress=False)
    # The simulator's ends do not depend on the model; the random heads of the tiny model read
    # an event from every chunk, generated or encoded, the calm ones from none.
    assert results["random heads"]["drift_end_sim"] == results["calm heads"]["drift_end_sim"]
    assert 0.0 < results["calm heads"]["drift_end_sim"] <= 1.0
    for key in ("drift_end_model", "drift_end_encoded"):  # on generated and on encoded chunks
        assert results["random heads"][key] == 1.0 and results["calm heads"][key] == 0.0
    assert all(r["drift_offset_model"] >= 0.0 for r in results.values())


def test_steer_pair_against_hand_values():
    left = np.zeros((2, 2, 3), np.uint8)
    right = left.copy()
    left[0, 0] = 40  # the simulator's views differ in one pixel by 40 levels
    gap_sim, gap_model, cosine = steer_pair(left, right, left // 2, right)
    assert (gap_sim, gap_model) == (pytest.approx(40 * 3 / 12), pytest.approx(20 * 3 / 12))
    assert cosine == pytest.approx(1.0)  # half as large, the same way
    assert steer_pair(left, right, right, left)[2] == pytest.approx(-1.0)  # reversed
    other = np.zeros_like(left)
    other[1, 1] = 200
    assert steer_pair(left, right, other, right)[2] == 0.0  # a change elsewhere
    assert steer_pair(left, right, right, right) == (pytest.approx(10.0), 0.0, 0.0)  # blind


def test_hold_in_sim_replays_the_recorded_context():
    (episode,) = record_heldout("merge", 1, 2, context=CONTEXT, min_valid=CONTEXT + 2)
    # Holding the recorded action reproduces the recording's chunk and ego speed.
    frames, speeds, ended = hold_in_sim(episode, CONTEXT, episode.actions[CONTEXT], 1)
    np.testing.assert_array_equal(frames[0], episode.frames[CONTEXT])
    assert speeds == [pytest.approx(float(episode.ego[CONTEXT][0]))]
    assert not ended  # the recording goes on after this chunk
    left = hold_in_sim(episode, CONTEXT, np.array([0.0, 1.0], np.float32), 2).frames
    right = hold_in_sim(episode, CONTEXT, np.array([0.0, -1.0], np.float32), 2).frames
    assert 1 <= len(left) <= 2 and not np.array_equal(left[0], right[0])
    fast = hold_in_sim(episode, CONTEXT, np.array([1.0, 0.0], np.float32), 2).speeds
    slow = hold_in_sim(episode, CONTEXT, np.array([-1.0, 0.0], np.float32), 2).speeds
    assert fast[0] > slow[0]
    # Full steering leaves the road: the run stops at the chunk that ends the episode.
    off = hold_in_sim(episode, CONTEXT, np.array([0.0, -1.0], np.float32), 8)
    assert off.ended and len(off.frames) < 8


def conditioned_engine(tiny_checkpoint):
    """The tiny engine with random conditioning weights: the tiny checkpoint is adaLN-Zero
    initialised, so nothing it is conditioned on reaches its output; weights large enough to move
    its random decoder's uint8 images (and what its heads read) stand in for a trained model's."""
    engine = load_runtime(tiny_checkpoint, None, "cpu", "float32").engine
    generator = torch.Generator().manual_seed(0)
    dit = engine.dit
    for linear in [b.adaLN_modulation[-1] for b in dit.blocks] + [
        dit.final_layer.adaLN_modulation[-1], dit.final_layer.linear
    ]:
        linear.weight.data.normal_(0.0, 0.1, generator=generator)
    for linear in (dit.cond_embedder.mlp[0], dit.cond_embedder.mlp[2]):
        linear.weight.data.normal_(0.0, 1.0, generator=generator)
    return engine


def blind_to_actions(engine) -> None:
    """Zeroes the projection of the action (and speed) embedding: the conditioning no longer
    depends on the action, so rollouts under different actions (same noise) are the same."""
    last = engine.dit.cond_embedder.mlp[-1]
    last.weight.data.zero_()
    last.bias.data.zero_()


def test_a_model_blind_to_its_actions_has_no_steering_response(tiny_checkpoint):
    engine = conditioned_engine(tiny_checkpoint)
    episodes = record_heldout("highway", 2, 2, context=CONTEXT, min_valid=CONTEXT + 1)
    seeing = steering_response(engine, episodes, CONTEXT, 2, progress=False)
    assert seeing["steer_gap_model"] > 0 and seeing["steer_alignment"] != 0
    blind_to_actions(engine)
    blind = steering_response(engine, episodes, CONTEXT, 2, progress=False)
    assert blind["steer_gap_model"] == 0 and blind["steer_response"] == 0
    assert blind["steer_gap_sim"] == seeing["steer_gap_sim"] > 0
    assert blind["steer_alignment"] == 0


def test_a_model_blind_to_its_actions_has_no_throttle_response(tiny_checkpoint):
    engine = conditioned_engine(tiny_checkpoint)
    episodes = record_heldout("highway", 2, 2, context=CONTEXT, min_valid=CONTEXT + 1)
    seeing = throttle_response(engine, episodes, CONTEXT, 2, progress=False)
    assert seeing["speed_gap_sim"] > 0 and seeing["speed_gap_model"] != 0
    assert seeing["throttle_response"] == pytest.approx(
        seeing["speed_gap_model"] / seeing["speed_gap_sim"])
    assert 1 <= seeing["throttle_chunks_compared"] <= 4
    # The model's own views answer the pedals by some amount (over the first two chunks the
    # simulator's may move either way).
    assert seeing["motion_gap_sim"] != 0 and seeing["motion_gap_model"] != 0
    # (a ratio only where the simulator's views move more under throttle)
    sim_gap = seeing["motion_gap_sim"]
    assert seeing["motion_response"] == pytest.approx(
        seeing["motion_gap_model"] / sim_gap if sim_gap > 0 else float("nan"), nan_ok=True)
    assert seeing["throttle_response_encoded"] == pytest.approx(
        seeing["speed_gap_encoded"] / seeing["speed_gap_sim"])
    blind_to_actions(engine)
    blind = throttle_response(engine, episodes, CONTEXT, 2, progress=False)
    assert blind["speed_gap_model"] == 0 and blind["throttle_response"] == 0
    assert blind["motion_gap_model"] == 0
    assert blind["motion_response"] == pytest.approx(0 if sim_gap > 0 else float("nan"),
                                                     nan_ok=True)
    assert blind["speed_gap_sim"] == seeing["speed_gap_sim"]
    # The heads' reading of the simulator's chunks does not involve the DiT at all.
    assert blind["speed_gap_encoded"] == seeing["speed_gap_encoded"]
    # The probe reads the model's speed with the heads, whatever the engine's ego speed follows
    # (the kinematic speed alone would differ by the simulator's gap).
    engine.config = dataclasses.replace(engine.config, speed="kinematic")
    kinematic = throttle_response(engine, episodes, CONTEXT, 2, progress=False)
    assert kinematic["speed_gap_model"] == 0 and kinematic["motion_gap_model"] == 0


def test_copy_baseline_is_last_context_frame(quality):
    result, _ = quality
    (episode,) = record_heldout("highway", 1, HORIZON, context=CONTEXT, min_valid=CONTEXT + 1)
    last = episode.frames[CONTEXT - 1, -1].astype(np.float64)
    sim = episode.frames[CONTEXT].astype(np.float64)
    mse = ((sim - last[None]) ** 2).mean()
    assert copy_baseline(episode, CONTEXT).shape == episode.frames.shape[1:]
    expected = 10 * math.log10(255**2 / mse)
    assert result["families"]["highway"]["copy_psnr"]["1"] == pytest.approx(expected, abs=1e-9)


def test_arguments_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.episodes, args.horizon, args.stable_chunks) == (3, 20, 200)
    assert tuple(args.families) == FAMILIES and args.json is None and args.device == "cpu"
    assert args.steer_chunks == STEER_CHUNKS and args.throttle_chunks == THROTTLE_CHUNKS
    assert args.drift_chunks == DRIFT_CHUNKS and args.speed == "heads"
    args = parser.parse_args(["--families", "merge", "--stable-chunks", "5", "--json", "q.json",
                              "--steer-chunks", "0", "--throttle-chunks", "0", "--drift-chunks",
                              "0", "--speed", "kinematic"])
    assert args.families == ["merge"] and args.stable_chunks == 5 and args.steer_chunks == 0
    assert args.throttle_chunks == args.drift_chunks == 0 and args.speed == "kinematic"


def test_standard_error_of_the_mean():
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1.0 / math.sqrt(3.0))
    assert standard_error([0.5, float("inf"), 0.5, float("nan")]) == 0.0  # non-finite left out
    assert math.isnan(standard_error([1.0])) and math.isnan(standard_error([]))


def test_noise_mode_and_speed_source_are_checked_and_applied(tiny_checkpoint):
    with pytest.raises(ValueError, match="noise must be one of"):
        run(checkpoint=tiny_checkpoint, noise="frozen", progress=False)
    with pytest.raises(ValueError, match="speed must be one of"):
        run(checkpoint=tiny_checkpoint, speed="gps", progress=False)
    with pytest.raises(ValueError, match="drift_chunks must be >= 0"):
        run(checkpoint=tiny_checkpoint, drift_chunks=-1, progress=False)
    result = run(checkpoint=tiny_checkpoint, episodes=1, horizon=1, families=("merge",),
                 stable_chunks=2, steer_chunks=0, throttle_chunks=0, drift_chunks=0,
                 noise="fixed", speed="kinematic", progress=False)
    assert (result["settings"]["noise"], result["settings"]["speed"]) == ("fixed", "kinematic")
    assert "drift_end_model" not in result["overall"]  # the probe skipped
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--noise", "fixed"]).noise == "fixed"
    assert parser.parse_args([]).noise is None
