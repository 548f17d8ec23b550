"""``xworld bench env`` measured for real on the tiny world model (speeds are not asserted)."""

import pytest

from xworld_env.bench import env as bench_env


def test_single_and_batched_rows_with_motion_under_a_chosen_noise(tiny_checkpoint):
    result = bench_env.run(steps=4, sizes=(2,), checkpoint=str(tiny_checkpoint),
                           noise="fresh", progress=False)
    assert result["noise"] == "fresh"
    assert set(result["single"]) == {"xcache", "none"}
    assert set(result["batched"]["2"]) == {"xcache", "xcache_all", "none"}
    assert all(rate > 0 for rate in result["single"].values())
    # Fresh noise every chunk keeps even a random world model's views changing.
    assert set(result["motion"]) == {"xcache", "none"}
    assert all(m > 0 for m in result["motion"].values())
    with pytest.raises(ValueError, match="noise must be one of"):
        bench_env.run(steps=1, sizes=(), checkpoint=str(tiny_checkpoint), noise="still",
                      progress=False)
