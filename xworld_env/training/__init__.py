"""Training stages of the world model: autoencoder, then DiT and heads on its latents, then the
bundle the environment loads. Each stage is resumable and driven by ``configs/train/``."""

STAGES = ("autoencoder", "world-model", "heads", "bundle")


def _scoped(override: str) -> str:
    """``steps=100`` -> ``train.steps=100``: a stage's keys live in the ``train`` group."""
    prefix = override[: len(override) - len(override.lstrip("+~"))]
    body = override[len(prefix):]
    return override if body.startswith("train.") else f"{prefix}train.{body}"


def run_stage(stage: str, overrides: list[str]) -> dict:
    """Runs one stage with hydra overrides of ``configs/train/<stage>.yaml``."""
    from xworld_env.config import build, compose

    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; accepted: {', '.join(STAGES)}")
    node = compose(f"train/{stage.replace('-', '_')}", [_scoped(o) for o in overrides]).train
    if stage == "autoencoder":
        from xworld_env.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

        return train_autoencoder(build(AutoencoderTrainConfig, node))
    if stage == "world-model":
        from xworld_env.training.world_model import WorldModelTrainConfig, train_world_model

        return train_world_model(build(WorldModelTrainConfig, node))
    if stage == "heads":
        from xworld_env.training.heads import HeadsTrainConfig, train_heads

        return train_heads(build(HeadsTrainConfig, node))
    from xworld_env.training.bundle import BundleConfig, assemble

    return {"checkpoint": str(assemble(build(BundleConfig, node)))}
