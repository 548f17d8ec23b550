"""What every training stage shares: episode arrays in memory, seeding, logging, resuming."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch

from xworld_env.data.dataset import load_shard
from xworld_env.data.shards import is_validation_seed, read_manifest

#: Compute precisions of the training passes (autocast; the weights stay float32): the
#: engine's, less float16, which would need loss scaling.
TRAIN_DTYPES = ("bfloat16", "float32")


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, numpy and torch; returns a torch generator for batch sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code draws from it)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when there is one; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use cpu")
    return device


def load_split(root: str | Path, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All episodes of one split, arrays concatenated along the episode axis.

    Args:
        root: dataset folder written by ``xworld generate``.
        split: ``"train"`` or ``"val"`` (by episode seed, as ``ShardDataset`` splits).
        keys: shard arrays to load (``valid`` and ``seed`` always are).
    """
    root = Path(root)
    manifest = read_manifest(root)
    val_every = manifest["config"]["data"].get("val_every", 10)
    wanted = tuple(dict.fromkeys((*keys, "valid")))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*wanted, "seed")}
    for entry in manifest["shards"]:
        arrays = load_shard(root / entry["file"], manifest["layout"], entry, keys=wanted)
        keep = np.array([is_validation_seed(int(s), val_every) == (split == "val")
                         for s in arrays["seed"]])
        for k in parts:
            parts[k].append(arrays[k][keep])
    if not parts["seed"] or sum(len(p) for p in parts["seed"]) == 0:
        raise ValueError(f"dataset {root} has no {split} episodes")
    return {k: np.concatenate(v) for k, v in parts.items()}


class RunLog:
    """Appends one JSON line per logged step to ``<run>/log.jsonl`` and keeps the run config."""

    def __init__(self, run_dir: Path, config: object) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        values = asdict(config) if is_dataclass(config) else dict(config)
        (self.run_dir / "config.json").write_text(json.dumps(values, indent=2, default=str))
        self._t0 = time.perf_counter()

    def write(self, step: int, **values: float) -> None:
        row = {"step": step, "elapsed_s": round(time.perf_counter() - self._t0, 2)}
        row.update({k: float(v) for k, v in values.items()})
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def write_samples(
    run_dir: Path, stage: str, step: int, rows: list[tuple[str, torch.Tensor]],
    names: Sequence[str],
) -> Path:
    """Writes a labelled sheet of sample images, ``<run>/samples/<stage>_<step>.png``.

    Args:
        rows: (label, (n, H, W, 3) float images in [0, 1]) pairs, one sheet row each.
        names: column labels (one per image of a row).
    """
    from PIL import Image

    from xworld_env.model.autoencoder import to_uint8
    from xworld_env.mosaic import contact_sheet

    sheet = contact_sheet(
        [(label, to_uint8(images.detach().float()).cpu().numpy()) for label, images in rows],
        names,
        scale=2,
    )
    path = Path(run_dir) / "samples" / f"{stage}_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block; afterwards every submodule gets back its own
    mode (a model trained in part, such as a decoder under a frozen encoder, stays so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two float images in [0, 1]."""
    mse = torch.mean((a.float() - b.float()) ** 2).clamp_min(1e-10)
    return float(10.0 * torch.log10(1.0 / mse))


def resume(state_path: Path, model, optimizer, generator: torch.Generator) -> int:
    """Loads a saved training state if there is one; returns the step to continue from."""
    from xworld_env.model.checkpoint import load_training_state

    if not Path(state_path).is_file():
        return 0
    state = load_training_state(state_path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            f"{state_path} holds a model of another architecture than this run's settings make; "
            f"resume it with the settings it was started with (its config.json records them), or "
            f"give another run_dir: {err}"
        ) from err
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["step"])


def save_state(
    state_path: Path, model, optimizer, generator: torch.Generator, step: int, **extra
) -> None:
    """Saves what :func:`resume` needs (and ``extra`` entries) atomically."""
    from xworld_env.model.checkpoint import save_training_state

    save_training_state(
        state_path,
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
         "generator": generator.get_state(), **extra},
    )
