"""``xworld train heads``: ego state and event heads on clean latents of the autoencoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from xworld_env.model.heads import Heads, HeadsConfig
from xworld_env.training.autoencoder import lr_at
from xworld_env.training.common import RunLog, resolve_device, resume, save_state, seed_everything
from xworld_env.training.world_model import encode_split, load_autoencoder

STATE_NAME = "state.pt"


@dataclass(frozen=True)
class HeadsTrainConfig:
    """Training run of the heads (the ``train`` config group, stage ``heads``).

    Attributes:
        event_pos_weight: weight of the rare positive examples of collision and off-road.
        Others as in the world-model stage.
    """

    data: str = "data/xworld_sim"
    autoencoder: str = "runs/autoencoder/autoencoder.pt"
    latents_dir: str = "runs/latents"
    run_dir: str = "runs/heads"
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    event_pos_weight: float = 5.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    save_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _flat(data: dict) -> dict[str, torch.Tensor]:
    valid = data["valid"]
    return {
        "latents": data["latents"][valid],
        "ego": data["ego"][valid],
        "collision": data["collision"][valid],
        "off_road": data["off_road"][valid],
    }


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic); NaN when only one class is present."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def evaluate_heads(heads: Heads, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Ego errors and event AUROC / accuracy on chunks of clean latents."""
    heads.eval()
    device = next(heads.parameters()).device
    outs = [heads(z.to(device)) for z in data["latents"].split(256)]
    ego = torch.cat([o.ego for o in outs]).cpu()
    col = torch.sigmoid(torch.cat([o.collision_logit for o in outs])).cpu().numpy()
    off = torch.sigmoid(torch.cat([o.off_road_logit for o in outs])).cpu().numpy()
    err = (ego - data["ego"]).abs().mean(dim=0)
    labels_c, labels_o = data["collision"].numpy(), data["off_road"].numpy()
    return {
        "speed_mae": float(err[0]),
        "lane_offset_mae": float(err[1]),
        "heading_error_mae": float(err[2]),
        "collision_auroc": auroc(col, labels_c),
        "off_road_auroc": auroc(off, labels_o),
        "collision_accuracy": float(((col > 0.5) == labels_c).mean()),
        "off_road_accuracy": float(((off > 0.5) == labels_o).mean()),
    }


def train_heads(cfg: HeadsTrainConfig, progress: bool = True) -> dict:
    """Trains (or resumes) the heads; returns held-out metrics."""
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    ae = load_autoencoder(cfg.autoencoder, device)
    train = _flat(encode_split(ae, cfg.data, "train", Path(cfg.latents_dir) / "train.pt"))
    val = _flat(encode_split(ae, cfg.data, "val", Path(cfg.latents_dir) / "val.pt"))
    heads = Heads(HeadsConfig(latent_channels=ae.config.latent_channels)).to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=1e-4)
    state_path = run_dir / STATE_NAME
    step = resume(state_path, heads, optimizer, generator)
    scale = torch.tensor(heads.config.ego_scale, device=device)
    pos_weight = torch.tensor(cfg.event_pos_weight, device=device)
    log = RunLog(run_dir, cfg)
    bar = tqdm(total=cfg.steps, initial=step, desc="train heads", disable=not progress)
    while step < cfg.steps:
        heads.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        idx = torch.randint(len(train["ego"]), (cfg.batch,), generator=generator)
        out = heads(train["latents"][idx].to(device))
        ego = train["ego"][idx].to(device)
        ego_loss = F.smooth_l1_loss(out.ego / scale, ego / scale)
        col = F.binary_cross_entropy_with_logits(
            out.collision_logit, train["collision"][idx].float().to(device), pos_weight=pos_weight
        )
        off = F.binary_cross_entropy_with_logits(
            out.off_road_logit, train["off_road"][idx].float().to(device), pos_weight=pos_weight
        )
        loss = ego_loss + col + off
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(step, loss=loss.item(), ego=ego_loss.item(), collision=col.item(),
                      off_road=off.item())
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_state(state_path, heads, optimizer, generator, step, config=asdict(heads.config))
    bar.close()
    metrics = evaluate_heads(heads, val)
    log.write(step, **metrics)
    return {"steps": step, "run_dir": str(run_dir), **metrics}
