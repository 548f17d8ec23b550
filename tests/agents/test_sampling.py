"""python -m agents.sampling on the tiny world model."""

import math

import pytest

from agents.sampling import EXPLORATIONS, format_table, main, run


def test_sampling_compares_explorations_with_and_without_xcache(tiny_env_kwargs):
    # The tiny model's random heads would end episodes at once; with no events every world
    # drives the whole rollout past X-Cache's warmup.
    result = run(worlds=2, steps=5, progress=False,
                 env_kwargs={"reward": {"event_threshold": 0.999999}}, **tiny_env_kwargs)
    assert list(result["explorations"]) == list(EXPLORATIONS)
    for row in result["explorations"].values():
        for cache in ("xcache", "none"):
            assert row[cache]["steps_per_s"] > 0
        assert 0.0 <= row["xcache"]["skip_rate"] <= 1.0 and row["none"]["skip_rate"] is None
        assert math.isclose(row["speedup"],
                            row["xcache"]["steps_per_s"] / row["none"]["steps_per_s"])
    rows = result["explorations"]
    # gSDE's noise weights stay fixed for several steps: its actions change far less from one
    # step to the next than with independent noise every step.
    for name in ("gsde", "gsde_rollout"):
        assert rows[name]["xcache"]["mean_action_change"] < (
            0.5 * rows["gaussian"]["xcache"]["mean_action_change"])
    assert "gsde" in format_table(result)


def test_sampling_rejects_bad_arguments(capsys):
    with pytest.raises(ValueError, match="accepted: \\['gaussian', 'gsde', 'gsde_rollout'\\]"):
        run(explorations=("boltzmann",))
    with pytest.raises(ValueError, match="no exploration given"):
        run(explorations=())
    with pytest.raises(ValueError, match="steps >= 2"):
        run(steps=1)
    assert main(["--steps", "1"]) == 2
    assert "steps >= 2" in capsys.readouterr().err
