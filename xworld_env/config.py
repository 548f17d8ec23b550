"""Hydra configuration: where the config groups live and how YAML becomes our dataclasses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

#: The top-level ``configs/`` folder of the repository (override with ``XWORLD_CONFIG_DIR``).
CONFIG_DIR = Path(
    os.environ.get("XWORLD_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)

T = TypeVar("T")


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Composes ``configs/<config_name>.yaml`` with hydra command-line style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(
            f"config {config_name!r} not found in {CONFIG_DIR}; set XWORLD_CONFIG_DIR to the "
            "repository's configs/ folder"
        )
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except HydraException as err:
        raise ValueError(f"bad configuration override: {err}") from None


def to_plain(node: Any) -> Any:
    """A DictConfig (or anything) as plain Python containers."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build_settings(cls: type[T], value: Any) -> T:
    """``cls`` from None (its defaults), an instance (returned as is) or a dict of its settings
    (unknown keys named in the error, as :func:`build`); anything else is a ``TypeError``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return build(cls, value)
    raise TypeError(f"expected a {cls.__name__} or a dict of its settings, got {type(value)}")


def build(cls: type[T], node: Any) -> T:
    """Builds dataclass ``cls`` from a config node, naming unknown keys in the error."""
    values = to_plain(node) or {}
    if hasattr(cls, "from_dict"):
        return cls.from_dict(values)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} setting(s) {sorted(unknown)}; accepted: {sorted(names)}"
        )
    return cls(**values)
