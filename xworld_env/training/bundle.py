"""``xworld train bundle``: the three trained stages as one checkpoint the env loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xworld_env.engine import NOISE_MODES
from xworld_env.model.checkpoint import WorldModelBundle, load_training_state, save_bundle
from xworld_env.model.heads import Heads, HeadsConfig
from xworld_env.training.world_model import load_autoencoder, load_dit


@dataclass(frozen=True)
class BundleConfig:
    """Where the stages are and where the checkpoint goes.

    Attributes:
        autoencoder: ``autoencoder.pt`` of the autoencoder run.
        world_model: world-model run folder.
        heads: heads run folder.
        out: checkpoint folder to write (``xworld_env/assets/default`` ships with the package).
        storage_dtype: dtype of the stored weights (``float16`` keeps the shipped file small).
        noise: the engine's default noise per episode, ``fresh`` (new noise every chunk) or
            ``fixed`` (one draw per episode, reused every chunk); envs and benchmarks take it
            unless told otherwise.
    """

    autoencoder: str = "runs/autoencoder/autoencoder.pt"
    world_model: str = "runs/world_model"
    heads: str = "runs/heads"
    out: str = "runs/bundle"
    storage_dtype: str = "float16"
    noise: str = "fresh"

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            accepted = " or ".join(repr(mode) for mode in NOISE_MODES)
            raise ValueError(f"noise must be {accepted}, got {self.noise!r}")


def _last_log(run_dir: Path) -> dict:
    lines = (run_dir / "log.jsonl").read_text().splitlines() if (run_dir / "log.jsonl").is_file() \
        else []
    merged: dict = {}
    for line in lines:
        merged.update(json.loads(line))
    return merged


def assemble(cfg: BundleConfig) -> Path:
    """Writes the checkpoint; its metadata records each stage's steps and last metrics."""
    ae = load_autoencoder(cfg.autoencoder, "cpu")
    dit = load_dit(cfg.world_model, "cpu")
    heads_state = load_training_state(Path(cfg.heads) / "state.pt")
    heads_cfg = dict(heads_state["config"])
    heads_cfg["ego_scale"] = tuple(heads_cfg["ego_scale"])
    heads = Heads(HeadsConfig(**heads_cfg))
    heads.load_state_dict(heads_state["model"])
    wm_config = json.loads((Path(cfg.world_model) / "config.json").read_text())
    metadata = {
        # The sampler and cache the DiT was trained for; the engine defaults to them.
        "engine": {key: wm_config[key] for key in ("num_steps", "shift", "window")}
        | {"noise": cfg.noise},
        "autoencoder": _last_log(Path(cfg.autoencoder).parent),
        "world_model": _last_log(Path(cfg.world_model)),
        "heads": _last_log(Path(cfg.heads)),
    }
    bundle = WorldModelBundle(ae, dit, heads.eval(), metadata)
    return save_bundle(cfg.out, bundle, storage_dtype=cfg.storage_dtype)
