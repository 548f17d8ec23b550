"""``xworld bench sim``: how fast the teacher simulator renders and steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xworld_env.bench.machine import machine_info
from xworld_env.sim.driver import PerturbedDriver
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.types import FAMILIES


def run(steps: int = 40, families: tuple[str, ...] = FAMILIES, seed: int = 0) -> dict:
    """Times renders of all seven views and whole env steps, per family.

    Each family is driven by the data-collection driver for ``steps`` steps (a new episode
    when one ends); then the renderer alone is timed on the same states.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    env = XWorldSimEnv()
    per_family = {}
    for family in families:
        env.reset(seed=seed, options={"family": family})
        driver = PerturbedDriver(seed)
        driver.reset(env.scenario)
        step_time, render_time, frames = 0.0, 0.0, 0
        for i in range(steps):
            action = driver.act(env.scenario)
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            step_time += time.perf_counter() - t0
            t0 = time.perf_counter()
            env.renderer.render(env.scenario.pose(), env.scenario.vehicle_boxes())
            render_time += time.perf_counter() - t0
            frames += 1
            if terminated or truncated:
                env.reset(seed=seed + i + 1, options={"family": family})
                driver.reset(env.scenario)
        per_family[family] = {
            "frames_per_s": frames / render_time,
            "steps_per_s": steps / step_time,
        }
    env.close()
    return {
        "frames_per_s": float(np.median([r["frames_per_s"] for r in per_family.values()])),
        "steps_per_s": float(np.median([r["steps_per_s"] for r in per_family.values()])),
        "frames_per_step": env.scenario_config.frames_per_chunk,
        "families": per_family,
        "steps_per_family": steps,
        "machine": machine_info(),
    }


def main(steps: int = 40, json_path: str | None = None) -> dict:
    result = run(steps=steps)
    print(f"{'family':<14}{'7-view frames/s':>18}{'env steps/s':>14}")
    for family, row in result["families"].items():
        print(f"{family:<14}{row['frames_per_s']:>18.1f}{row['steps_per_s']:>14.1f}")
    print(f"{'median':<14}{result['frames_per_s']:>18.1f}{result['steps_per_s']:>14.1f}")
    print(f"({result['frames_per_step']} frames rendered per env step; "
          f"{result['machine']['cpu_count']} CPU cores)")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")
    return result
