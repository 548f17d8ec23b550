"""The in-process baseline of ``xworld bench rllib`` (no Ray needed) on the tiny world model."""

import torch

from xworld_env.bench.rllib import in_process_throughput


def test_in_process_baseline_steps_the_batched_env_and_restores_threads(tiny_checkpoint):
    threads = torch.get_num_threads()
    got = in_process_throughput(worlds=2, steps=3, cache="xcache",
                                checkpoint=str(tiny_checkpoint), device="cpu", family="highway")
    assert got["steps_per_s"] > 0 and 0.0 <= got["skip_rate"] <= 1.0
    assert torch.get_num_threads() == threads
