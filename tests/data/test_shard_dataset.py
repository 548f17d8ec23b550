"""ShardDataset: values read equal values written, split by seed, clear errors on bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xworld_env.data.dataset import ShardDataset, ShardGroupedSampler
from xworld_env.data.shards import MANIFEST_NAME, DatasetError, is_validation_seed, shard_name
from xworld_env.types import FAMILIES


def _shards(root):
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    out = []
    for entry in manifest["shards"]:
        with np.load(root / entry["file"]) as npz:
            out.append({key: npz[key] for key in npz.files})
    return out


def test_windows_equal_the_shards(tiny_dataset):
    root = tiny_dataset[0]
    shards = _shards(root)
    by_seed = {int(s["seed"][e]): (s, e) for s in shards for e in range(len(s["seed"]))}
    for split in ("train", "val"):
        data = ShardDataset(root, split, window=2, stride=1)
        assert len(data) > 0
        for i in range(len(data)):
            item = data[i]
            shard, e = by_seed[int(item["seed"])]
            k = slice(int(item["start"]), int(item["start"]) + 2)
            assert item["frames"].dtype == torch.uint8
            assert item["frames"].shape == (2, 2, 7, 64, 64, 3)
            assert item["actions"].shape == (2, 2) and item["actions"].dtype == torch.float32
            assert item["ego"].shape == (2, 3) and item["ego"].dtype == torch.float32
            for key in ("frames", "actions", "ego", "reward", "collision", "off_road", "valid"):
                np.testing.assert_array_equal(item[key].numpy(), shard[key][e, k], err_msg=key)
            assert item["valid"].all()
            assert data.families[int(item["family"])] == shard["family"][e]


def test_every_full_window_is_indexed_once(tiny_dataset):
    root = tiny_dataset[0]
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    lengths = [e["length"] for s in manifest["shards"] for e in s["episodes"]]
    for window, stride in ((1, 1), (2, 1), (2, 2), (3, 1)):
        counted = sum(len(ShardDataset(root, split, window=window, stride=stride))
                      for split in ("train", "val"))
        assert counted == sum(len(range(0, n - window + 1, stride)) for n in lengths)


def test_split_by_seed_has_no_overlap(tiny_dataset):
    root, data, _ = tiny_dataset
    train, val = ShardDataset(root, "train", window=1), ShardDataset(root, "val", window=1)
    assert not set(train.seeds) & set(val.seeds)
    assert sorted(train.seeds + val.seeds) == sorted(s for _, s in data.episodes())
    assert all(is_validation_seed(s) for s in val.seeds)
    assert not any(is_validation_seed(s) for s in train.seeds)
    assert {int(val[i]["seed"]) for i in range(len(val))} <= set(val.seeds)
    # Episode 0 of every family is held out.
    assert len(val.seeds) == len(FAMILIES)


def test_cache_is_bounded_and_sampler_groups_shards(tiny_dataset):
    data = ShardDataset(tiny_dataset[0], "train", window=1, cache_shards=1)
    order = list(ShardGroupedSampler(data, seed=3))
    assert sorted(order) == list(range(len(data)))
    shards = [data.shard_of(i) for i in order]
    changes = sum(a != b for a, b in zip(shards, shards[1:]))
    assert changes == len(set(shards)) - 1
    for i in order:
        data[i]
        assert len(data._cache) == 1
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=ShardGroupedSampler(data))
    batch = next(iter(loader))
    assert batch["frames"].shape[:2] == (2, 1) and batch["family"].shape == (2,)


def test_bad_arguments(tiny_dataset):
    root = tiny_dataset[0]
    with pytest.raises(ValueError, match="split must be one of"):
        ShardDataset(root, "test")
    with pytest.raises(ValueError, match="longer than the episodes"):
        ShardDataset(root, window=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ShardDataset(root / "nowhere")
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        ShardDataset(root.parent)


def test_corrupt_shard_is_named(dataset_copy):
    path = dataset_copy / shard_name(1)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    data = ShardDataset(dataset_copy, "val", window=1, stride=1)
    index = next(i for i in range(len(data)) if data.shard_of(i) == 1)
    with pytest.raises(DatasetError, match=rf"shard .*{shard_name(1)} is unreadable or corrupt"):
        data[index]


def test_truncated_or_missing_shard_is_named(dataset_copy):
    path = dataset_copy / shard_name(2)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=rf"{shard_name(2)} has 1000 bytes"):
        ShardDataset(dataset_copy, window=1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shard_name(2)} is listed in the manifest"):
        ShardDataset(dataset_copy, window=1)


def test_shard_with_wrong_contents_is_named(dataset_copy):
    path = dataset_copy / shard_name(0)
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["actions"] = arrays["actions"][:, :, :1]
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    manifest = json.loads((dataset_copy / MANIFEST_NAME).read_text())
    manifest["shards"][0]["bytes"] = path.stat().st_size
    (dataset_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    data = ShardDataset(dataset_copy, "val", window=1)
    with pytest.raises(DatasetError, match=r"array 'actions' is float32 .*expected .*\(2, 3, 2\)"):
        data[0]


def test_wrong_format_version_is_refused(dataset_copy):
    manifest = json.loads((dataset_copy / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (dataset_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="format version 99"):
        ShardDataset(dataset_copy, window=1)
    (dataset_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        ShardDataset(dataset_copy, window=1)
