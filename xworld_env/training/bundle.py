"""``xworld train bundle``: the three trained stages as one checkpoint the env loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xworld_env.engine import NOISE_MODES
from xworld_env.model.checkpoint import (
    WorldModelBundle,
    build_config,
    is_checkpoint,
    load_bundle,
    load_training_state,
    read_config,
    save_bundle,
)
from xworld_env.model.heads import Heads, HeadsConfig
from xworld_env.training.world_model import load_autoencoder, load_dit


@dataclass(frozen=True)
class BundleConfig:
    """Where the stages are and where the checkpoint goes.

    Every stage can also be taken from an existing checkpoint folder (the shipped
    ``xworld_env/assets/default``, for one), with that checkpoint's record of its training: a
    DiT fine-tuned from the shipped model is bundled with the shipped autoencoder and heads.

    Attributes:
        autoencoder: ``autoencoder.pt`` of the autoencoder run, or a checkpoint folder.
        world_model: world-model run folder, or a checkpoint folder.
        heads: heads run folder, or a checkpoint folder.
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


def _record(source: str, stage: str, run_dir: Path) -> dict:
    """A stage's training record: the checkpoint's own when ``source`` is a checkpoint folder,
    else the last logged values of its run."""
    if is_checkpoint(source):
        return dict(read_config(source)["metadata"].get(stage, {}))
    return _last_log(run_dir)


def _autoencoder_record(source: str, _seen: frozenset[Path] = frozenset()) -> dict:
    """The autoencoder's training record; a decoder fine-tune's names the autoencoder it
    started from (``finetune_decoder``) and carries that one's record in ``init_record``, as
    a fine-tuned DiT's does."""
    run_dir = Path(source).parent
    record = _record(source, "autoencoder", run_dir)
    config_path = run_dir / "config.json"
    if is_checkpoint(source) or not config_path.is_file():
        return record
    start = json.loads(config_path.read_text()).get("finetune_decoder")
    if start:
        record["finetune_decoder"] = start
        seen = _seen | {run_dir.resolve()}
        if Path(start).exists() and Path(start).resolve().parent not in seen:
            record["init_record"] = _autoencoder_record(start, seen)
    return record


def _heads(source: str) -> Heads:
    if is_checkpoint(source):
        return load_bundle(source).heads
    path = Path(source) / "state.pt"
    state = load_training_state(path)
    heads = Heads(build_config(HeadsConfig, state["config"], path, "config"))
    heads.load_state_dict(state["model"])
    return heads


def _world_model(source: str, _seen: frozenset[Path] = frozenset()) -> tuple[dict, dict]:
    """The sampler and cache the DiT was trained for (the engine defaults to them) and its
    training record. A fine-tuned DiT's record names the run's ``init_from`` and, in
    ``init_record``, the record of the DiT it started from (with that one's own
    ``init_record``, and so on): the path alone would not say which model it was once the
    folder is overwritten, as a shipped checkpoint is by its successor."""
    keys = ("num_steps", "shift", "window")
    if is_checkpoint(source):
        metadata = read_config(source)["metadata"]
        return {key: metadata["engine"][key] for key in keys}, dict(
            metadata.get("world_model", {})
        )
    run_config = json.loads((Path(source) / "config.json").read_text())
    record = _last_log(Path(source))
    init = run_config.get("init_from")
    if init:
        record["init_from"] = init
        seen = _seen | {Path(source).resolve()}
        if (Path(init) / "config.json").is_file() and Path(init).resolve() not in seen:
            record["init_record"] = _world_model(init, seen)[1]
    return {key: run_config[key] for key in keys}, record


def assemble(cfg: BundleConfig) -> Path:
    """Writes the checkpoint; its metadata records each stage's steps and last metrics (and,
    for a DiT fine-tuned from another model, where it started: ``init_from``)."""
    ae = load_autoencoder(cfg.autoencoder, "cpu")
    dit = load_dit(cfg.world_model, "cpu")
    engine, world_model = _world_model(cfg.world_model)
    metadata = {
        "engine": engine | {"noise": cfg.noise},
        "autoencoder": _autoencoder_record(cfg.autoencoder),
        "world_model": world_model,
        "heads": _record(cfg.heads, "heads", Path(cfg.heads)),
    }
    bundle = WorldModelBundle(ae, dit, _heads(cfg.heads).eval(), metadata)
    return save_bundle(cfg.out, bundle, storage_dtype=cfg.storage_dtype)
