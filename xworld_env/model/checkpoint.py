"""Saving and loading a world model bundle; the only code that touches weight files.

A checkpoint is a directory holding

* ``model.safetensors``: the weights of the autoencoder, DiT and heads, keys prefixed with
  ``autoencoder.``, ``dit.`` and ``heads.``;
* ``config.json``: ``format_version``, the three architecture configs, the SHA-256 of the weights
  file, and free-form ``metadata`` (training run, data, ...).

Everything that can go wrong on loading (missing file, other format version, config that does not
fit the weights, corrupted or truncated file) raises :class:`CheckpointError` naming the path and
what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xworld_env.model.autoencoder import Autoencoder, AutoencoderConfig
from xworld_env.model.dit import CausalDiT, DiTConfig
from xworld_env.model.heads import Heads, HeadsConfig

#: Version of the on-disk layout; bump it when the layout or the meaning of a field changes.
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_Config = TypeVar("_Config")


class CheckpointError(Exception):
    """A checkpoint is missing, of another format version, inconsistent or corrupted."""


@dataclass
class WorldModelBundle:
    """The three trained networks of a world model.

    Attributes:
        autoencoder: image <-> latent autoencoder.
        dit: the causal diffusion transformer.
        heads: ego-state and event heads.
        metadata: free-form JSON-serialisable information saved with the weights.
    """

    autoencoder: Autoencoder
    dit: CausalDiT
    heads: Heads
    metadata: dict[str, Any] = field(default_factory=dict)

    def modules(self) -> dict[str, nn.Module]:
        """The networks by their key prefix in the weights file."""
        return {"autoencoder": self.autoencoder, "dit": self.dit, "heads": self.heads}

    def to(self, device: torch.device | str) -> WorldModelBundle:
        """Moves every network to ``device`` (in place) and returns the bundle."""
        for module in self.modules().values():
            module.to(device)
        return self

    def eval(self) -> WorldModelBundle:
        """Puts every network in eval mode and returns the bundle."""
        for module in self.modules().values():
            module.eval()
        return self


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Storage dtypes of floating-point weights; loading converts back to the modules' dtype.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_bundle(
    path: str | os.PathLike, bundle: WorldModelBundle, storage_dtype: str = "float32"
) -> Path:
    """Writes ``bundle`` as a checkpoint directory (created if needed, files replaced atomically).

    Args:
        path: checkpoint directory.
        bundle: networks and metadata to save.
        storage_dtype: dtype of the stored floating-point tensors (``float16`` halves the file;
            the loaded model is then the rounded one).

    Returns:
        The checkpoint directory.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}"
        )
    store = STORAGE_DTYPES[storage_dtype]
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{prefix}.{name}": (value.to(store) if value.is_floating_point() else value)
        .detach()
        .to("cpu")
        .contiguous()
        for prefix, module in bundle.modules().items()
        for name, value in module.state_dict().items()
    }
    weights = directory / WEIGHTS_NAME
    tmp_weights = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format_version": str(FORMAT_VERSION)})
    config = {
        "format_version": FORMAT_VERSION,
        "autoencoder": dataclasses.asdict(bundle.autoencoder.config),
        "dit": dataclasses.asdict(bundle.dit.config),
        "heads": dataclasses.asdict(bundle.heads.config),
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(tmp_weights),
                    "storage_dtype": storage_dtype},
        "metadata": bundle.metadata,
    }
    tmp_config = directory / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_weights, weights)
    os.replace(tmp_config, directory / CONFIG_NAME)
    return directory


# Config fields added after format version 1 was fixed, with the value that gives the behaviour
# of checkpoints written before they existed.
_ADDED_FIELDS: dict[type, dict[str, Any]] = {
    AutoencoderConfig: {"decoder_channels": None},
    DiTConfig: {"action_field": False},
    HeadsConfig: {"temporal": False},
}


def build_config(cls: type[_Config], values: Any, path: str | os.PathLike, section: str) -> _Config:
    """``cls`` from the JSON-style dict ``values`` (lists become tuples; fields added since
    format version 1 take their earlier behaviour), read from ``section`` of ``path``: a
    checkpoint's config or a training run's state. Mismatched fields raise
    :class:`CheckpointError` naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: section {section!r} must be an object of {cls.__name__}")
    values = {**_ADDED_FIELDS.get(cls, {}), **values}
    unknown, missing = set(values) - names, names - set(values)
    if unknown or missing:
        raise CheckpointError(
            f"{path}: section {section!r} does not match {cls.__name__} "
            f"(unknown fields {sorted(unknown)}, missing fields {sorted(missing)}); "
            f"it was written by another version of the code"
        )
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid {cls.__name__} in {section!r}: {err}") from err


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a checkpoint's ``config.json``.

    Args:
        path: checkpoint directory.

    Returns:
        The parsed config, with ``autoencoder``, ``dit`` and ``heads`` as config dataclasses.
    """
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path}: no such file; a checkpoint is a directory with {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}"
        )
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: not a readable JSON file: {err}") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {version!r}, expected {FORMAT_VERSION}; "
            "re-export the checkpoint with this version of xworld-env"
        )
    raw["autoencoder"] = build_config(
        AutoencoderConfig, raw.get("autoencoder"), config_path, "autoencoder"
    )
    raw["dit"] = build_config(DiTConfig, raw.get("dit"), config_path, "dit")
    raw["heads"] = build_config(HeadsConfig, raw.get("heads"), config_path, "heads")
    weights = raw.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise CheckpointError(f"{config_path}: missing 'weights' entry with the file's sha256")
    return raw


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint directory (``config.json`` and ``model.safetensors``),
    as opposed to, for example, a training run's folder (which has no weights file)."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> WorldModelBundle:
    """Loads a checkpoint directory written by :func:`save_bundle`.

    Args:
        path: checkpoint directory.
        device: device to place the networks on.

    Returns:
        The networks in eval mode, and the saved metadata.

    Raises:
        CheckpointError: the checkpoint is missing, of another format version, its config does not
            fit its weights, or the weights file is corrupted or truncated.
    """
    directory = Path(path)
    config = read_config(directory)
    weights = directory / config["weights"].get("file", WEIGHTS_NAME)
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: no such file; expected the weights named in {CONFIG_NAME}"
        )
    if _sha256(weights) != config["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights}: SHA-256 does not match {CONFIG_NAME}; the file is corrupted, truncated "
            "or not the one saved with this config"
        )
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for malformed files
        raise CheckpointError(f"{weights}: not a readable safetensors file: {err}") from err

    bundle = WorldModelBundle(
        autoencoder=Autoencoder(config["autoencoder"]),
        dit=CausalDiT(config["dit"]),
        heads=Heads(config["heads"]),
        metadata=config.get("metadata") or {},
    )
    stray = [name for name in tensors if name.split(".", 1)[0] not in bundle.modules()]
    if stray:
        raise CheckpointError(
            f"{weights}: unexpected tensors {stray[:5]}; expected prefixes {list(bundle.modules())}"
        )
    for prefix, module in bundle.modules().items():
        state = {
            name[len(prefix) + 1 :]: value
            for name, value in tensors.items()
            if name.startswith(prefix + ".")
        }
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"{weights}: weights of {prefix!r} do not fit the config in {CONFIG_NAME}: {err}"
            ) from err
    return bundle.to(device).eval()


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes a resumable training state (weights, optimiser, step, RNG) atomically.

    The file is written next to its destination and renamed into place, so an interrupted save
    never replaces a good state with a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a state written by :func:`save_training_state`.

    Raises:
        CheckpointError: missing, truncated or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"training state {path} is unreadable ({type(err).__name__}: {err}); delete it to "
            "start the run afresh"
        ) from None
