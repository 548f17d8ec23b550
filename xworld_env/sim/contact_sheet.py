"""A contact sheet of the simulator: one row of the seven views per scenario family."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from xworld_env.mosaic import contact_sheet
from xworld_env.sim.driver import PerturbedDriver
from xworld_env.sim.sim_env import XWorldSimEnv
from xworld_env.types import FAMILIES


def render_sheet(out: str | Path, seed: int = 0, warmup_steps: int = 6, scale: int = 3) -> Path:
    """Drives each family a few steps with the autopilot, then writes the seven views as PNG."""
    env = XWorldSimEnv()
    rows = []
    for family in FAMILIES:
        env.reset(seed=seed, options={"family": family})
        driver = PerturbedDriver(seed)
        driver.reset(env.scenario)
        for _ in range(warmup_steps):
            _, _, terminated, truncated, _ = env.step(driver.autopilot.act(env.scenario))
            if terminated or truncated:
                break
        rows.append((family, env.last_chunk[-1]))
    env.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(rows, env.rig.names, scale=scale)).save(out)
    return out
