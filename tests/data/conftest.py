"""A tiny generated dataset shared by the data tests (generated once per session)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from xworld_env.config import build, compose
from xworld_env.data.generate import GenerateConfig, generate


def tiny_config(out: Path, **changes) -> tuple[GenerateConfig, dict]:
    """The ``data=tiny`` config (through hydra, as the CLI builds it) writing to ``out``."""
    cfg = compose("generate", ["data=tiny", f"data.out={out}"])
    data = dataclasses.replace(build(GenerateConfig, cfg.data), **changes)
    return data, cfg.sim


@pytest.fixture
def make_config():
    """``make_config(out, **changes)``: see :func:`tiny_config`."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, GenerateConfig, dict]:
    """(folder, data config, sim config) of a complete tiny dataset; do not modify it."""
    out = tmp_path_factory.mktemp("tiny") / "dataset"
    data, sim = tiny_config(out)
    generate(data, sim, progress=False)
    return out, data, sim


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset, for tests that damage it."""
    return Path(shutil.copytree(tiny_dataset[0], tmp_path / "copy"))
