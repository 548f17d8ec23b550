"""The scripted lane-keeping policy of the demo and the benchmarks."""

import numpy as np

from xworld_env.envs.policies import LaneKeeper


def test_lane_keeper_batch_acts_per_world():
    ego = np.array([[25.0, 0.3, 0.01], [20.0, -0.2, 0.0], [31.0, 0.0, -0.05]], np.float32)
    policy = LaneKeeper()
    batch = policy.batch({"ego": ego}, "merge")
    assert batch.shape == (3, 2) and batch.dtype == np.float32
    for i in range(3):
        assert np.array_equal(batch[i], policy({"ego": ego[i]}, "merge"))
    # Left of the lane centre steers right; below the cruise speed accelerates.
    assert batch[0, 1] < 0 < batch[1, 1] and batch[1, 0] > 0
