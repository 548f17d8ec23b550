"""Generation: round trip, resume after an interruption, determinism, refusing foreign folders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from xworld_env.config import build, compose
from xworld_env.data.generate import (
    GenerateConfig,
    generate,
    main,
    make_sim_env,
    record_episode,
)
from xworld_env.data.shards import (
    MANIFEST_NAME,
    SHARD_ARRAYS,
    DatasetError,
    episode_seed,
    shard_name,
)
from xworld_env.sim.driver import DriverConfig, PerturbedDriver
from xworld_env.types import FAMILIES


def _arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _manifest(root):
    return json.loads((root / MANIFEST_NAME).read_text())


class _Interrupt(Exception):
    pass


def test_shards_hold_what_the_simulator_produced(tiny_dataset):
    root, data, sim = tiny_dataset
    manifest = _manifest(root)
    assert manifest["complete"] and len(manifest["shards"]) == data.num_shards == 4
    shard = _arrays(root / shard_name(1))
    assert set(shard) == set(SHARD_ARRAYS)
    t = data.chunks_per_episode
    assert shard["frames"].shape == (2, t, 2, 7, 64, 64, 3) and shard["frames"].dtype == np.uint8
    for key, shape, dtype in [("actions", (2, t, 2), np.float32), ("ego", (2, t, 3), np.float32),
                              ("reward", (2, t), np.float32), ("collision", (2, t), bool),
                              ("off_road", (2, t), bool), ("valid", (2, t), bool),
                              ("seed", (2,), np.int64)]:
        assert shard[key].shape == shape and shard[key].dtype == dtype, key
    # Families are interleaved: shard 1 holds episode 0 of the last two families.
    assert shard["family"].tolist() == ["roundabout", "intersection"]
    assert shard["seed"].tolist() == [episode_seed(0, "roundabout", 0),
                                      episode_seed(0, "intersection", 0)]

    env = make_sim_env(sim)
    fresh = record_episode(env, "roundabout", int(shard["seed"][0]), t)
    for key in ("frames", "actions", "ego", "reward", "collision", "off_road", "valid"):
        np.testing.assert_array_equal(shard[key][0], fresh[key], err_msg=key)
    entry = manifest["shards"][1]["episodes"][0]
    assert entry["length"] == int(fresh["valid"].sum()) and entry["end"] == fresh["end"]
    # Chunk 0 is the result of the first action: its frames differ from the reset view.
    env.reset(seed=int(shard["seed"][0]), options={"family": "roundabout"})
    assert not np.array_equal(env.last_chunk[-1], shard["frames"][0, 0, -1])


def test_padding_after_the_episode_ended(tiny_dataset):
    root, _, _ = tiny_dataset
    for entry in _manifest(root)["shards"]:
        shard = _arrays(root / entry["file"])
        for e, episode in enumerate(entry["episodes"]):
            n = episode["length"]
            assert shard["valid"][e, :n].all() and not shard["valid"][e, n:].any()
            assert not shard["frames"][e, n:].any() and not shard["actions"][e, n:].any()


def test_same_config_same_arrays(tiny_dataset, make_config, tmp_path):
    root, _, _ = tiny_dataset
    data, sim = make_config(tmp_path / "again", families=("highway",), episodes_per_family=1)
    generate(data, sim, progress=False)
    again = _arrays(tmp_path / "again" / shard_name(0))
    reference = _arrays(root / shard_name(0))
    for key in SHARD_ARRAYS:
        np.testing.assert_array_equal(again[key][0], reference[key][0], err_msg=key)


def test_episode_depends_on_its_seed_only(tiny_dataset, monkeypatch):
    from highway_env.vehicle.behavior import IDMVehicle

    env = make_sim_env(tiny_dataset[2])
    runs = []
    # highway-env's intersection env sets these class constants when it resets; an episode
    # simulated afterwards in the same process must not see them.
    for constants in ({"DISTANCE_WANTED": 10.0, "COMFORT_ACC_MAX": 3.0, "COMFORT_ACC_MIN": -5.0},
                      {"DISTANCE_WANTED": 7, "COMFORT_ACC_MAX": 6, "COMFORT_ACC_MIN": -3}):
        for name, value in constants.items():
            monkeypatch.setattr(IDMVehicle, name, value)
        runs.append(record_episode(env, "highway", 7, 3))
    for key in ("frames", "actions", "ego"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)


def test_interrupted_run_resumes_at_the_first_missing_shard(tiny_dataset, make_config, tmp_path):
    root, _, _ = tiny_dataset
    out = tmp_path / "resumed"
    data, sim = make_config(out)

    def stop_after_first(index, entry):
        if index == 0:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        generate(data, sim, progress=False, on_shard=stop_after_first)
    manifest = _manifest(out)
    assert not manifest["complete"] and [e["file"] for e in manifest["shards"]] == [shard_name(0)]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, shard_name(0)]
    first = (out / shard_name(0)).read_bytes()
    (out / (shard_name(1) + ".tmp")).write_bytes(b"half a shard")

    summary = generate(data, sim, progress=False)
    assert summary.resumed_shards == 1 and summary.shards == data.num_shards
    assert summary.episodes == 8 and summary.chunks == sum(
        e["length"] for s in _manifest(root)["shards"] for e in s["episodes"])
    assert (out / shard_name(0)).read_bytes() == first
    assert not list(out.glob("*.tmp")) and _manifest(out)["complete"]
    for i in range(data.num_shards):
        resumed, reference = _arrays(out / shard_name(i)), _arrays(root / shard_name(i))
        for key in SHARD_ARRAYS:
            np.testing.assert_array_equal(resumed[key], reference[key], err_msg=f"{i} {key}")


def test_lost_shard_is_regenerated(dataset_copy, make_config):
    data, sim = make_config(dataset_copy)
    kept = (dataset_copy / shard_name(0)).read_bytes()
    before = _arrays(dataset_copy / shard_name(2))
    (dataset_copy / shard_name(2)).unlink()
    summary = generate(data, sim, progress=False)
    assert summary.resumed_shards == 3 and summary.generated_chunks > 0
    assert (dataset_copy / shard_name(0)).read_bytes() == kept
    after = _arrays(dataset_copy / shard_name(2))
    np.testing.assert_array_equal(after["frames"], before["frames"])


def test_resume_with_another_config_is_refused(dataset_copy, make_config):
    data, sim = make_config(dataset_copy, chunks_per_episode=5)
    with pytest.raises(DatasetError, match=r"another configuration.*chunks_per_episode"):
        generate(data, sim, progress=False)
    sim = {**sim, "rig": {**sim["rig"], "height": 32}}
    data, _ = make_config(dataset_copy)
    with pytest.raises(DatasetError, match=r"sim\.rig\.height"):
        generate(data, sim, progress=False)


def test_driver_mix_is_recorded_and_changes_the_actions(tiny_dataset, make_config, tmp_path):
    out, data, sim = tiny_dataset
    explore = build(DriverConfig, compose("generate", ["driver=explore"]).driver)
    assert explore.random > DriverConfig().random and explore.follow < DriverConfig().follow
    other, _ = make_config(tmp_path / "explore")
    generate(other, sim, explore, progress=False)
    manifest = _manifest(tmp_path / "explore")
    assert manifest["config"]["driver"] == dataclasses.asdict(explore)
    assert _manifest(out)["config"]["driver"] == dataclasses.asdict(DriverConfig())
    env = make_sim_env(sim)
    actions = [record_episode(env, "highway", 5, 12, d)["actions"] for d in (None, explore)]
    env.close()
    assert not np.array_equal(*actions)
    # The same folder resumed with another driver is another dataset.
    with pytest.raises(DatasetError, match=r"driver\.random"):
        generate(other, sim, progress=False)


def test_pedal_segments_hold_one_pedal_value_while_the_autopilot_steers():
    pedal = build(DriverConfig, compose("generate", ["driver=pedal"]).driver)
    assert pedal.pedal > 0 and DriverConfig().pedal == 0
    only_pedal = DriverConfig(follow=0, lane_change=0, brake=0, noisy=0, random=0, pedal=1,
                              min_segment=4, max_segment=4)
    env = make_sim_env()
    env.reset(seed=1, options={"family": "roundabout"})
    driver = PerturbedDriver(1, only_pedal)
    driver.reset(env.scenario)
    segments: list[list[np.ndarray]] = []
    for _ in range(14):
        action = driver.act(env.scenario)
        if driver.kind == "pedal":
            if driver.left == 3:
                segments.append([])
            segments[-1].append(action)
        if env.step(action)[2]:
            break
    env.close()
    assert len(segments) >= 2
    for segment in segments:
        assert all(a[0] == segment[0][0] for a in segment)
    assert segments[0][0][0] != segments[1][0][0]
    steering = [a[1] for segment in segments for a in segment]
    assert len(set(steering)) > 3


def test_manifest_without_the_newer_driver_settings_still_resumes(dataset_copy, make_config):
    manifest = _manifest(dataset_copy)
    del manifest["config"]["driver"]["random_segment"]  # as written before it existed
    (dataset_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    data, sim = make_config(dataset_copy)
    assert generate(data, sim, progress=False).resumed_shards == data.num_shards
    manifest["config"]["driver"]["random"] = 0.3
    (dataset_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"driver\.random is 0\.3 there"):
        generate(data, sim, progress=False)


def test_driver_config_validation():
    with pytest.raises(ValueError, match="driver weight random must be a number >= 0"):
        DriverConfig(random=-0.1)
    with pytest.raises(ValueError, match="positive sum"):
        DriverConfig(follow=0, lane_change=0, brake=0, noisy=0, random=0)
    with pytest.raises(ValueError, match=r"max_segment \(2\) must be >= min_segment \(3\)"):
        DriverConfig(max_segment=2)
    with pytest.raises(ValueError, match="random_segment must be an integer >= 1"):
        DriverConfig(random_segment=0)
    with pytest.raises(ValueError, match=r"unknown DriverConfig setting.*accepted"):
        build(DriverConfig, {"randomness": 0.5})


def test_foreign_folder_is_refused(make_config, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    data, sim = make_config(tmp_path)
    with pytest.raises(DatasetError, match="non-empty folder"):
        generate(data, sim, progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown scenario family 'city'"):
        GenerateConfig(families=("city",))
    with pytest.raises(ValueError, match="chunks_per_episode must be an integer >= 1"):
        GenerateConfig(chunks_per_episode=0)
    with pytest.raises(ValueError, match="unknown sim section"):
        make_sim_env({"physics": {}})
    seeds = [s for _, s in GenerateConfig(episodes_per_family=3).episodes()]
    assert len(set(seeds)) == 3 * len(FAMILIES)


def test_cli_main(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["data=tiny", f"data.out={out}", "data.families=[merge]", "data.episodes_per_family=1",
            "data.chunks_per_episode=2"]
    assert main(argv) == 0
    assert "1 episodes" in capsys.readouterr().out
    assert main(argv[:-1] + ["data.chunks_per_episode=3"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main(["data.no_such_key=1"]) == 2
