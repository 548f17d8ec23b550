"""``xworld bench quality`` on a tiny random world model: result layout, PNG, copy baseline."""

import argparse
import json
import math

import numpy as np
import pytest

from xworld_env.bench.heldout import record_heldout
from xworld_env.bench.quality import add_arguments, copy_baseline, run, standard_error
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
    wanted = {"collision_auroc", "off_road_accuracy", "speed_mae", "lane_offset_mae"}
    for heads in (fam["heads_sim"], fam["heads_model"], result["overall"]["heads_sim"]):
        assert wanted <= heads.keys()
    assert set(result["bars"]) == {
        "ae_psnr_ge_30", "model_beats_copy_everywhere", "action_sensitivity_positive_everywhere"
    }
    assert all(type(v) is bool for v in result["bars"].values())


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
    args = parser.parse_args(["--families", "merge", "--stable-chunks", "5", "--json", "q.json"])
    assert args.families == ["merge"] and args.stable_chunks == 5


def test_standard_error_of_the_mean():
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1.0 / math.sqrt(3.0))
    assert standard_error([0.5, float("inf"), 0.5, float("nan")]) == 0.0  # non-finite left out
    assert math.isnan(standard_error([1.0])) and math.isnan(standard_error([]))
