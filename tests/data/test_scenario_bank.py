"""Scenario bank: starts cut from validation episodes, saved and loaded intact."""

from __future__ import annotations

import numpy as np
import pytest

from xworld_env.data.scenario_bank import ScenarioBank, build_scenario_bank, main
from xworld_env.data.shards import MANIFEST_NAME, is_validation_seed, shard_name
from xworld_env.types import FAMILIES


@pytest.fixture(scope="module")
def bank_path(tiny_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.npz"
    build_scenario_bank(tiny_dataset[0], path, starts_per_family=8, context_chunks=2)
    return path


def test_round_trip(tiny_dataset, bank_path):
    root = tiny_dataset[0]
    bank = ScenarioBank.load(bank_path)
    assert len(bank) == 8 * len(FAMILIES) and bank.families == FAMILIES
    assert bank_path.stat().st_size < 8e6
    shards = {}
    for i in range(4):
        with np.load(root / shard_name(i)) as npz:
            for e, seed in enumerate(npz["seed"]):
                shards[int(seed)] = {key: npz[key][e] for key in ("frames", "actions", "ego",
                                                                   "collision", "off_road")}
    for start in bank:
        assert is_validation_seed(start.seed)
        episode = shards[start.seed]
        k = slice(start.start, start.start + 2)
        assert start.frames.shape == (2, 2, 7, 64, 64, 3) and start.frames.dtype == np.uint8
        np.testing.assert_array_equal(start.frames, episode["frames"][k])
        np.testing.assert_array_equal(start.actions, episode["actions"][k])
        np.testing.assert_array_equal(start.ego, episode["ego"][k])
        assert not (episode["collision"][k] | episode["off_road"][k]).any()


def test_sample(bank_path):
    bank = ScenarioBank.load(bank_path)
    rng = np.random.default_rng(0)
    assert {bank.sample(None, rng).family for _ in range(200)} == set(FAMILIES)
    assert all(bank.sample("merge", rng).family == "merge" for _ in range(10))
    with pytest.raises(ValueError, match="unknown scenario family 'city'.*accepted: highway"):
        bank.sample("city", rng)


def test_family_subset_and_missing_family(tiny_dataset, tmp_path):
    bank = build_scenario_bank(tiny_dataset[0], tmp_path / "b.npz", starts_per_family=1,
                               context_chunks=1, families=("roundabout",))
    assert bank.families == ("roundabout",) and len(bank) == 1
    with pytest.raises(ValueError, match="accepted: roundabout"):
        bank.sample("highway", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown scenario family 'city'"):
        build_scenario_bank(tiny_dataset[0], tmp_path / "c.npz", families=("city",))


def test_corrupt_or_missing_bank(bank_path, tmp_path):
    raw = bytearray(bank_path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.npz is unreadable or corrupt"):
        ScenarioBank.load(bad)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        ScenarioBank.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="not found"):
        ScenarioBank.load(tmp_path / "none.npz")


def test_cli_main(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    assert main([f"dataset={tiny_dataset[0]}", f"out={out}", "starts_per_family=2"]) == 0
    assert "8 starts" in capsys.readouterr().out and out.is_file()
    assert main([f"dataset={tmp_path}", f"out={out}"]) == 2
    assert MANIFEST_NAME in capsys.readouterr().err
