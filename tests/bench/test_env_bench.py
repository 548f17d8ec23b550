"""``xworld bench env`` measured for real on the tiny world model (speeds are not asserted)."""

import math

import pytest

from xworld_env.bench import env as bench_env


def test_single_and_batched_rows_with_motion_under_a_chosen_noise(calm_checkpoint):
    result = bench_env.run(steps=4, sizes=(2,), checkpoint=str(calm_checkpoint),
                           noise="fresh", progress=False)
    assert result["noise"] == "fresh"
    assert set(result["single"]) == {"xcache", "none"}
    assert set(result["batched"]["2"]) == {"xcache", "xcache_all", "none"}
    assert all(rate > 0 for rate in result["single"].values())
    # Its episodes run on, so every step of the second half has one before it to compare with.
    assert set(result["motion"]) == {"xcache", "none"}
    assert all(math.isfinite(m) and m >= 0 for m in result["motion"].values())
    with pytest.raises(ValueError, match="noise must be one of"):
        bench_env.run(steps=1, sizes=(), checkpoint=str(calm_checkpoint), noise="still",
                      progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an int >= 1"),
    ({"sizes": (4, 0)}, "sizes must be distinct ints >= 1"),
    ({"sizes": (2, 2)}, "sizes must be distinct ints >= 1"),
    ({"repeats": 0}, "repeats must be an int >= 1"),
])
def test_bad_arguments_fail_before_anything_runs(kwargs, message):
    # No checkpoint is read: a missing one would fail later, with another message.
    with pytest.raises(ValueError, match=message):
        bench_env.run(checkpoint="/nonexistent", progress=False, **kwargs)


def test_motion_leaves_out_the_jump_of_a_reset(tiny_checkpoint):
    # The random heads end every episode at its first step: no two steps within one episode.
    precision = ("float32", "auto", "auto")
    _, _, motion = bench_env._single("none", 4, 0, str(tiny_checkpoint), precision, "fresh")
    assert math.isnan(motion)
