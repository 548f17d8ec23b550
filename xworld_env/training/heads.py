"""``xworld train heads``: ego state and event heads on clean latents of the autoencoder.

The env reads the heads on latents the world model generated, which are blurrier than the
autoencoder's latents of simulator frames. With ``generated_fraction`` > 0 a share of every
batch comes from the model's own rollouts of training windows (``world_model``), labelled with
the simulator chunks they stand for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from xworld_env.model.heads import Heads, HeadsConfig
from xworld_env.model.sampler import FlowSampler, SamplerConfig
from xworld_env.training.autoencoder import lr_at
from xworld_env.training.common import RunLog, resolve_device, resume, save_state, seed_everything
from xworld_env.training.world_model import (
    batch_of,
    encode_split,
    ends_on_event,
    load_autoencoder,
    load_dit,
    rollout_latents,
    window_starts,
)

STATE_NAME = "state.pt"
GENERATED_NAME = "generated.pt"
_LABELS = ("ego", "collision", "off_road")


@dataclass(frozen=True)
class HeadsTrainConfig:
    """Training run of the heads (the ``train`` config group, stage ``heads``).

    Attributes:
        event_pos_weight: weight of the rare positive examples of collision and off-road.
        world_model: world-model run whose DiT generates latents to train on ("" for none).
        generated_fraction: share of each batch drawn from generated latents (0: none).
        generated_windows: training windows rolled out for them (those that end on a collision
            or off-road chunk first; held-out metrics use up to 64 validation windows).
        rollout_chunks: chunks per window; the first ``context_chunks`` come from the data,
            the model generates the others under the recorded actions.
        context_chunks: see above.
        window, num_steps, shift: KV window and sampler of the rollouts (the engine's).
        temporal: heads whose trunk reads each camera's two frames together
            (``HeadsConfig.temporal``), so that it can see motion.
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
    world_model: str = ""
    generated_fraction: float = 0.0
    generated_windows: int = 256
    rollout_chunks: int = 6
    context_chunks: int = 2
    window: int = 2
    num_steps: int = 4
    shift: float = 3.0
    temporal: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "save_every", "generated_windows", "window",
                     "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.generated_fraction <= 1.0:
            raise ValueError(f"generated_fraction must be in [0, 1], got {self.generated_fraction}")
        if self.generated_fraction > 0 and not self.world_model:
            raise ValueError("generated_fraction > 0 needs world_model: the run that generates")
        if not 1 <= self.context_chunks < self.rollout_chunks:
            raise ValueError(
                f"need 1 <= context_chunks < rollout_chunks, got {self.context_chunks} and "
                f"{self.rollout_chunks}"
            )


def _flat(data: dict) -> dict[str, torch.Tensor]:
    valid = data["valid"]
    return {
        "latents": data["latents"][valid],
        "ego": data["ego"][valid],
        "collision": data["collision"][valid],
        "off_road": data["off_road"][valid],
    }


def event_windows(data: dict, length: int, count: int,
                  generator: torch.Generator) -> torch.Tensor:
    """(episode, start) of up to ``count`` windows of ``length`` valid chunks: every window that
    ends on a collision or off-road chunk first (events are rare), then others at random."""
    starts = window_starts(data["valid"], length)
    event = ends_on_event(data, starts, length)
    order = torch.randperm(len(starts), generator=generator)
    ranked = torch.cat([order[event[order]], order[~event[order]]])
    return starts[ranked[:count]]


@torch.no_grad()
def generated_latents(
    model, data: dict, starts: torch.Tensor, cfg: HeadsTrainConfig, generator: torch.Generator,
    device: torch.device, progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The DiT's rollouts of the given windows: the generated chunks, flat, with the labels of
    the simulator chunks they stand for (``latents``, ``ego``, ``collision``, ``off_road``)."""
    sampler = FlowSampler(SamplerConfig(cfg.num_steps, cfg.shift))
    length, first = cfg.rollout_chunks, cfg.context_chunks
    out: dict[str, list[torch.Tensor]] = {key: [] for key in ("latents", *_LABELS)}
    for pick in tqdm(starts.split(16), desc="generate latents", disable=not progress,
                     leave=False):
        batch = {k: v.to(device) for k, v in batch_of(data, pick, length).items()}
        rolled = rollout_latents(model, batch, cfg.window, sampler, generator, context=first)
        out["latents"].append(rolled[:, first:].flatten(0, 1).cpu())
        idx = pick[:, 1:] + torch.arange(first, length)[None]
        for key in _LABELS:
            out[key].append(data[key][pick[:, :1], idx].flatten(0, 1))
    return {key: torch.cat(values) for key, values in out.items()}


def _generated_pools(
    cfg: HeadsTrainConfig, train: dict, val: dict, device: torch.device, progress: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Generated training and validation latents, made once per run and kept in it."""
    path = Path(cfg.run_dir) / GENERATED_NAME
    if path.is_file():
        pools = torch.load(path, weights_only=True)
        return pools["train"], pools["val"]
    model = load_dit(cfg.world_model, device)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    pools = {
        name: generated_latents(
            model, data, event_windows(data, cfg.rollout_chunks, count, generator), cfg,
            generator, device, progress,
        )
        for name, data, count in (("train", train, cfg.generated_windows),
                                  ("val", val, min(cfg.generated_windows, 64)))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pools, path)
    return pools["train"], pools["val"]


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
    train_split = encode_split(ae, cfg.data, "train", Path(cfg.latents_dir) / "train.pt")
    val_split = encode_split(ae, cfg.data, "val", Path(cfg.latents_dir) / "val.pt")
    train, val = _flat(train_split), _flat(val_split)
    n_generated = round(cfg.batch * cfg.generated_fraction)
    gen_train = gen_val = None
    if n_generated:
        gen_train, gen_val = _generated_pools(cfg, train_split, val_split, device, progress)
    heads = Heads(HeadsConfig(latent_channels=ae.config.latent_channels,
                              temporal=cfg.temporal)).to(device)
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
        batch = _draw(train, cfg.batch - n_generated, generator)
        if n_generated:
            more = _draw(gen_train, n_generated, generator)
            batch = {k: torch.cat([batch[k], more[k]]) for k in batch}
        batch = {k: v.to(device) for k, v in batch.items()}
        out = heads(batch["latents"])
        ego_loss = F.smooth_l1_loss(out.ego / scale, batch["ego"] / scale)
        col = F.binary_cross_entropy_with_logits(
            out.collision_logit, batch["collision"].float(), pos_weight=pos_weight
        )
        off = F.binary_cross_entropy_with_logits(
            out.off_road_logit, batch["off_road"].float(), pos_weight=pos_weight
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
    if gen_val is not None:
        metrics.update({f"generated_{k}": v for k, v in evaluate_heads(heads, gen_val).items()})
    log.write(step, **metrics)
    return {"steps": step, "run_dir": str(run_dir), **metrics}


def _draw(data: dict[str, torch.Tensor], n: int, generator: torch.Generator) -> dict:
    """``n`` random examples (with replacement) of a flat set."""
    idx = torch.randint(len(data["ego"]), (n,), generator=generator)
    return {key: data[key][idx] for key in ("latents", *_LABELS)}
