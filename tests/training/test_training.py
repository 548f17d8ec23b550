"""Training stages on a tiny dataset and tiny configs of the real networks."""

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xworld_env.config import build, compose
from xworld_env.data.generate import GenerateConfig, generate
from xworld_env.engine import EngineConfig, WorldModelEngine
from xworld_env.model.checkpoint import (
    CheckpointError,
    load_bundle,
    load_training_state,
    save_training_state,
)
from xworld_env.model.dit import CausalDiT, dit_config
from xworld_env.model.sampler import FlowSampler, SamplerConfig, draw_noise
from xworld_env.training import run_stage
from xworld_env.training.autoencoder import (
    AutoencoderTrainConfig,
    train_autoencoder,
    widen_decoder,
)
from xworld_env.training.bundle import BundleConfig, assemble
from xworld_env.training.heads import HeadsTrainConfig, auroc, event_windows, train_heads
from xworld_env.training.losses import flow_matching_loss, sample_flow_times
from xworld_env.training.world_model import (
    WorldModelTrainConfig,
    batch_of,
    encode_split,
    ends_on_event,
    generate_last_chunk,
    latents_key,
    load_autoencoder,
    load_dit,
    pick_windows,
    rollout_context,
    shared_chunk_noise,
    train_world_model,
    window_starts,
)


def log_rows(run_dir) -> list[dict]:
    """The lines of a run's ``log.jsonl``."""
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


AE_SMALL = {"channels": (4, 8, 8), "latent_channels": 4, "batch_images": 8, "val_images": 16}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "dataset"
    cfg = compose("generate", ["data=tiny", f"data.out={out}"])
    data = dataclasses.replace(
        build(GenerateConfig, cfg.data), families=("highway",), chunks_per_episode=6
    )
    generate(data, cfg.sim, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    ae = AutoencoderTrainConfig(data=str(dataset), run_dir=str(runs / "ae"), steps=3, **AE_SMALL)
    train_autoencoder(ae, progress=False)
    common = {"data": str(dataset), "autoencoder": str(runs / "ae" / "autoencoder.pt"),
              "latents_dir": str(runs / "latents")}
    wm = WorldModelTrainConfig(**common, run_dir=str(runs / "wm"), preset="test", window=2,
                               chunks=3, batch=2, steps=2, save_every=1)
    train_world_model(wm, progress=False)
    heads = HeadsTrainConfig(**common, run_dir=str(runs / "heads"), steps=3, batch=4)
    metrics = train_heads(heads, progress=False)
    return runs, common, metrics


def test_autoencoder_stage_resumes(dataset, tmp_path):
    cfg = AutoencoderTrainConfig(
        data=str(dataset), run_dir=str(tmp_path), steps=2, log_every=1, **AE_SMALL
    )
    first = train_autoencoder(cfg, progress=False)
    assert first["steps"] == 2 and first["val_psnr"] > 0
    more = train_autoencoder(dataclasses.replace(cfg, steps=4), progress=False)
    assert more["steps"] == 4
    rows = log_rows(tmp_path)
    # Two steps, then two more: nothing trained twice.
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_decoder_fine_tune_keeps_the_encoder_and_latents(trained, tmp_path):
    _, common, _ = trained
    cfg = AutoencoderTrainConfig(data=common["data"], run_dir=str(tmp_path), steps=2,
                                 batch_images=8, val_images=16,
                                 finetune_decoder=common["autoencoder"])
    out = train_autoencoder(cfg, progress=False)
    assert out["val_psnr"] > 0
    base = load_autoencoder(common["autoencoder"], "cpu").state_dict()
    tuned = load_autoencoder(tmp_path / "autoencoder.pt", "cpu").state_dict()
    assert base.keys() == tuned.keys()
    # Encoder weights and the latent calibration untouched, the decoder trained.
    assert all(torch.equal(base[k], tuned[k]) for k in base if not k.startswith("decoder."))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))


def test_a_wider_decoder_trains_on_the_frozen_encoders_latents(trained, tmp_path):
    runs, common, _ = trained
    base = load_autoencoder(common["autoencoder"], "cpu")
    widths = tuple(2 * w for w in base.config.decoder_widths)
    cfg = AutoencoderTrainConfig(data=common["data"], run_dir=str(tmp_path), steps=2,
                                 batch_images=8, val_images=16,
                                 finetune_decoder=common["autoencoder"], decoder_channels=widths)
    assert train_autoencoder(cfg, progress=False)["val_psnr"] > 0
    tuned = load_autoencoder(tmp_path / "autoencoder.pt", "cpu")
    assert tuned.config.decoder_widths == widths
    assert tuned.config.channels == base.config.channels
    images = torch.rand(3, 64, 64, 3)
    assert torch.equal(tuned.encode(images), base.encode(images))
    assert tuned(images).shape == images.shape
    # Widening alone keeps the reconstructions; training then moves them.
    widened = widen_decoder(base, widths)
    torch.testing.assert_close(widened(images), base(images), rtol=0, atol=1e-6)
    assert not torch.allclose(tuned(images), base(images), atol=1e-4)
    with pytest.raises(ValueError, match="at least the width"):
        widen_decoder(base, tuple(w - 1 for w in base.config.decoder_widths))
    # Bundled, the record names the autoencoder the decoder started from, with its record.
    bundle = load_bundle(assemble(BundleConfig(
        autoencoder=str(tmp_path / "autoencoder.pt"), world_model=str(runs / "wm"),
        heads=str(runs / "heads"), out=str(tmp_path / "bundle"), noise="fixed")))
    record = bundle.metadata["autoencoder"]
    assert record["step"] == 2 and record["finetune_decoder"] == common["autoencoder"]
    assert record["init_record"]["step"] == json.loads(
        (Path(common["autoencoder"]).parent / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert bundle.autoencoder.config.decoder_widths == widths


def test_a_run_state_with_another_architecture_names_its_fields(trained, tmp_path):
    _, common, _ = trained
    state = load_training_state(common["autoencoder"])
    state["config"] = state["config"] | {"colour": "red"}
    save_training_state(tmp_path / "autoencoder.pt", state)
    with pytest.raises(CheckpointError, match=r"unknown fields \['colour'\]"):
        load_autoencoder(tmp_path / "autoencoder.pt", "cpu")


def test_latents_cache_is_read_only_for_the_autoencoder_and_data_it_was_made_from(trained,
                                                                                 tmp_path):
    runs, common, _ = trained
    ae = load_autoencoder(common["autoencoder"], "cpu")
    cache = tmp_path / "val.pt"
    first = encode_split(ae, common["data"], "val", cache)
    assert "key" not in first
    stored = torch.load(cache, weights_only=True)
    assert stored["key"] == latents_key(ae, common["data"], "val")
    # The same weights read the cache (a marked cache comes back as stored).
    torch.save(stored | {"latents": torch.zeros_like(stored["latents"])}, cache)
    assert not encode_split(ae, common["data"], "val", cache)["latents"].any()
    # Other weights encode afresh and replace it.
    other = copy.deepcopy(ae)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    fresh = encode_split(other, common["data"], "val", None)["latents"]
    assert not torch.equal(fresh, first["latents"])
    assert torch.equal(encode_split(other, common["data"], "val", cache)["latents"], fresh)
    assert torch.load(cache, weights_only=True)["key"] == latents_key(other, common["data"], "val")


def test_training_writes_sample_sheets(trained):
    from PIL import Image

    runs, _, _ = trained
    ae_sheets = sorted(p.name for p in (runs / "ae" / "samples").iterdir())
    assert ae_sheets == ["autoencoder_000003.png"]
    wm_sheets = sorted(p.name for p in (runs / "wm" / "samples").iterdir())
    assert wm_sheets == ["world_model_000001.png", "world_model_000002.png"]
    sheet = np.asarray(Image.open(runs / "wm" / "samples" / wm_sheets[-1]))
    # Two windows, each a data row and a model row of seven views (scale 2, 64 px views).
    assert sheet.shape[0] > 4 * 128 and sheet.shape[1] > 7 * 128 and sheet.std() > 0


def test_generated_chunk_is_seeded_and_shaped(trained):
    runs, common, _ = trained
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "val", None)
    batch = batch_of(data, window_starts(data["valid"], 3)[:2], 3)
    model = load_dit(runs / "wm")
    sampler = FlowSampler(SamplerConfig())
    first = generate_last_chunk(model, batch, 2, sampler)
    again = generate_last_chunk(model, batch, 2, sampler)
    assert first.shape == batch["latents"][:, -1].shape and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, generate_last_chunk(model, batch, 2, sampler, seed=9))


def test_one_step_lowers_the_flow_loss(trained):
    runs, common, _ = trained
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "train", None)
    batch = batch_of(data, window_starts(data["valid"], 3)[:2], 3)
    torch.manual_seed(0)
    model = CausalDiT(dit_config("test", latent_channels=ae.config.latent_channels))
    times = FlowSampler(SamplerConfig()).timesteps()[:-1]
    t = sample_flow_times(6, times, 3.0, 0.5, torch.Generator().manual_seed(0)).view(2, 3)

    def loss():
        return flow_matching_loss(model, batch["latents"], batch["actions"], batch["speed"], t,
                                  window=2, generator=torch.Generator().manual_seed(1))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
        # Noise passed in is the noise used: the generator's own draw gives the same loss.
        drawn = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(1))
        given = flow_matching_loss(model, batch["latents"], batch["actions"], batch["speed"], t,
                                   window=2, generator=torch.Generator(), noise=drawn)
        other = flow_matching_loss(model, batch["latents"], batch["actions"], batch["speed"], t,
                                   window=2, generator=torch.Generator(), noise=-drawn)
    assert after.item() < before.item()
    assert given.item() == after.item() and other.item() != after.item()


def test_world_model_trains_in_bfloat16_with_float32_weights(trained, tmp_path):
    runs, common, _ = trained
    cfg = WorldModelTrainConfig(**common, run_dir=str(tmp_path), preset="test", window=2,
                                chunks=3, batch=2, steps=3, save_every=3, log_every=1,
                                dtype="bfloat16")
    out = train_world_model(cfg, progress=False)
    rows = log_rows(tmp_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(out["val_loss"])
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values()} == {torch.float32}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_rollout_context_is_the_models_own_cached_rollout(trained):
    runs, common, _ = trained
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "val", None)
    batch = batch_of(data, window_starts(data["valid"], 4)[:2], 4)
    model = load_dit(runs / "wm").train()
    sampler = FlowSampler(SamplerConfig())
    out, out_noise = rollout_context(model, batch, 2, sampler, torch.Generator().manual_seed(7))
    again, _ = rollout_context(model, batch, 2, sampler, torch.Generator().manual_seed(7))
    assert model.training  # the mode it was called in is restored
    assert torch.equal(out, again)
    clean = batch["latents"]
    assert torch.equal(out[:, 0], clean[:, 0]) and torch.equal(out[:, 3], clean[:, 3])

    # Reference: the same sampling through the block-causal sequence pass, which sees each
    # generated chunk's window of committed chunks without any cache.
    seeds = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(7))
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    noise = [draw_noise(clean.shape[2:], generators) for _ in range(sampler.num_steps)]
    assert torch.equal(out_noise, torch.stack(noise))
    expected = clean.clone()
    with torch.no_grad():
        for j in (1, 2):
            def denoise(x, t, s, j=j):
                times = torch.zeros(2, j + 1)
                times[:, -1] = t
                noisy = torch.cat([expected[:, :j], x[:, None]], dim=1)
                return model.forward_sequence(
                    expected[:, : j + 1], batch["actions"][:, : j + 1],
                    batch["speed"][:, : j + 1], window=2, noisy=noisy, t=times,
                )[:, -1]

            expected[:, j] = sampler.sample(denoise, noise[0], generators, noise[1:])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out[:, 1:3], clean[:, 1:3], atol=1e-2)


def test_shared_chunk_noise_takes_the_nearest_sampler_steps_draw():
    times = torch.tensor([1.0, 0.9, 0.75, 0.5])
    window_noise = torch.arange(4 * 2, dtype=torch.float32).view(4, 2, 1, 1, 1, 1, 1)
    t = torch.tensor([[1.0, 0.74, 0.2], [0.9, 0.97, 0.52]])
    out = shared_chunk_noise(window_noise, t, times)
    assert out.shape == (2, 3, 1, 1, 1, 1, 1)
    # window_noise[s, b] = 2 s + b.
    assert out.flatten().tolist() == [0.0, 4.0, 6.0, 3.0, 1.0, 7.0]


@pytest.mark.parametrize("rollout_noise", ["independent", "shared"])
def test_world_model_fine_tunes_from_a_run_with_rollout_context(trained, tmp_path,
                                                                 rollout_noise):
    runs, common, _ = trained
    cfg = WorldModelTrainConfig(**common, run_dir=str(tmp_path), preset="test", window=2,
                                chunks=3, batch=2, steps=1, lr=0.0, rollout_fraction=1.0,
                                rollout_noise=rollout_noise, init_from=str(runs / "wm"))
    out = train_world_model(cfg, progress=False)
    assert math.isfinite(out["val_loss"])
    rows = log_rows(tmp_path)
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    # With a zero learning rate the run keeps the weights it started from.
    start, tuned = load_dit(runs / "wm").state_dict(), load_dit(tmp_path).state_dict()
    assert all(torch.equal(start[k], tuned[k]) for k in start)
    with pytest.raises(ValueError, match="holds a DiT of another architecture"):
        train_world_model(dataclasses.replace(cfg, run_dir=str(tmp_path / "other"),
                                              preset="tiny"), progress=False)


def test_world_model_fine_tune_adds_a_zero_action_field(trained, tmp_path):
    runs, common, _ = trained
    cfg = WorldModelTrainConfig(**common, run_dir=str(tmp_path / "field"), preset="test",
                                window=2, chunks=3, batch=2, steps=1, lr=0.0,
                                init_from=str(runs / "wm"), action_field=True)
    train_world_model(cfg, progress=False)
    start, tuned = load_dit(runs / "wm"), load_dit(tmp_path / "field")
    assert not start.config.action_field and tuned.config.action_field
    assert not tuned.action_field.weight.any()
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    # A run resumes only with the architecture it was started with.
    with pytest.raises(ValueError, match="another architecture than this run's settings"):
        train_world_model(dataclasses.replace(cfg, init_from="", action_field=False, steps=2),
                          progress=False)
    # A DiT with a field cannot lose it by fine-tuning.
    with pytest.raises(ValueError, match="fine-tune it with action_field=true"):
        train_world_model(dataclasses.replace(cfg, run_dir=str(tmp_path / "lose"),
                                              init_from=str(tmp_path / "field"),
                                              action_field=False), progress=False)


def test_world_model_rejects_bad_rollout_settings():
    with pytest.raises(ValueError, match=r"rollout_fraction must be in \[0, 1\], got 1.5"):
        WorldModelTrainConfig(rollout_fraction=1.5)
    with pytest.raises(ValueError, match="rollout_fraction > 0 needs chunks >= 3"):
        WorldModelTrainConfig(rollout_fraction=0.5, chunks=2)
    with pytest.raises(ValueError, match=r"rollout_noise must be one of \['independent'"):
        WorldModelTrainConfig(rollout_noise="fixed")


def test_windows_that_end_on_an_event_are_found_and_drawn():
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False  # episode 1 ends on its chunk 3
    collision, off_road = torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.bool)
    collision[0, 2], off_road[1, 3] = True, True
    data = {"valid": valid, "collision": collision, "off_road": off_road}
    starts = window_starts(valid, 3)
    events = ends_on_event(data, starts, 3)
    # Windows of 3: episode 0 starts 0-3, episode 1 starts 0-1; ends on 2 (collision), 3 (off road).
    assert starts[events].tolist() == [[0, 0], [1, 1]]

    def draw(fraction, seed=0):
        return pick_windows(starts, events, 4000, fraction, torch.Generator().manual_seed(seed))

    uniform = starts[torch.randint(len(starts), (4000,),
                                   generator=torch.Generator().manual_seed(0))]
    assert torch.equal(draw(0.0), uniform)  # the uniform draw of runs without the option
    assert ends_on_event(data, draw(1.0), 3).all()
    share = ends_on_event(data, draw(0.25), 3).float().mean().item()
    # A quarter from the events plus the uniform draw's own share (2 of 6) of the rest.
    assert share == pytest.approx(0.25 + 0.75 * 2 / 6, abs=0.03)


def test_event_fraction_is_checked_against_the_data(trained, tmp_path):
    runs, common, _ = trained
    with pytest.raises(ValueError, match=r"event_fraction must be in \[0, 1\], got -0.1"):
        WorldModelTrainConfig(event_fraction=-0.1)
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "train", None)
    starts = window_starts(data["valid"], 3)
    # The tiny highway episodes run their whole length without a collision or leaving the road.
    assert not ends_on_event(data, starts, 3).any()
    cfg = WorldModelTrainConfig(**common, run_dir=str(tmp_path), preset="test", window=2,
                                chunks=3, batch=2, steps=1, event_fraction=0.5)
    with pytest.raises(ValueError, match="event_fraction=0.5 needs windows of 3 chunks"):
        train_world_model(cfg, progress=False)
    assert not (tmp_path / "state.pt").exists()


def test_world_model_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float32'\]"):
        WorldModelTrainConfig(dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        run_stage("world-model", ["dtype=int8"])


def test_speed_conditioning_is_the_speed_before_each_chunk(trained):
    runs, common, _ = trained
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "train", None)
    starts = torch.tensor([[0, 0], [0, 2]])
    batch = batch_of(data, starts, 3)
    ego_speed = data["ego"][0, :, 0]
    assert batch["speed"][0].tolist() == [ego_speed[0], ego_speed[0], ego_speed[1]]
    assert batch["speed"][1].tolist() == [ego_speed[1], ego_speed[2], ego_speed[3]]


def test_heads_metrics(trained):
    _, _, metrics = trained
    for key in ("speed_mae", "lane_offset_mae", "collision_accuracy", "off_road_accuracy"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN


def test_heads_train_on_generated_latents(trained, tmp_path, monkeypatch):
    runs, common, _ = trained
    cfg = HeadsTrainConfig(**common, run_dir=str(tmp_path), steps=2, batch=4,
                           world_model=str(runs / "wm"), generated_fraction=0.5,
                           generated_windows=3, rollout_chunks=4, context_chunks=2)
    out = train_heads(cfg, progress=False)
    assert out["generated_speed_mae"] == out["generated_speed_mae"]  # present and not NaN
    pool = torch.load(tmp_path / "generated.pt", weights_only=True)["train"]
    # Three windows, two generated chunks each, labelled with the simulator chunks they stand
    # for (those windows, in the order the run drew them).
    ae = load_autoencoder(common["autoencoder"], torch.device("cpu"))
    data = encode_split(ae, common["data"], "train", None)
    starts = event_windows(data, 4, 3, torch.Generator().manual_seed(cfg.seed + 1))
    idx = starts[:, 1:] + torch.arange(2, 4)[None]
    assert torch.equal(pool["ego"], data["ego"][starts[:, :1], idx].flatten(0, 1))
    assert torch.equal(pool["collision"], data["collision"][starts[:, :1], idx].flatten(0, 1))
    real = data["latents"][starts[:, :1], idx].flatten(0, 1)
    assert pool["latents"].shape == real.shape and torch.isfinite(pool["latents"]).all()
    assert not torch.allclose(pool["latents"], real, atol=1e-2)
    # A resumed run reuses the latents it generated.
    monkeypatch.setattr("xworld_env.training.heads.load_dit", lambda *a, **k: 1 / 0)
    assert train_heads(dataclasses.replace(cfg, steps=3), progress=False)["steps"] == 3
    with pytest.raises(ValueError, match="needs world_model"):
        HeadsTrainConfig(generated_fraction=0.5)
    with pytest.raises(ValueError, match="context_chunks < rollout_chunks"):
        HeadsTrainConfig(context_chunks=6, rollout_chunks=6)


def test_event_windows_come_first():
    valid = torch.ones(3, 8, dtype=torch.bool)
    collision = torch.zeros(3, 8, dtype=torch.bool)
    off_road = torch.zeros(3, 8, dtype=torch.bool)
    collision[1, 6], off_road[2, 3] = True, True
    data = {"valid": valid, "collision": collision, "off_road": off_road}
    starts = event_windows(data, 4, 5, torch.Generator().manual_seed(0))
    assert len(starts) == 5
    assert {tuple(s) for s in starts[:2].tolist()} == {(1, 3), (2, 0)}
    assert len({tuple(s) for s in starts.tolist()}) == 5


def test_auroc_values():
    import numpy as np

    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_bundle_loads_into_the_engine(trained, tmp_path):
    runs, common, _ = trained
    path = assemble(BundleConfig(autoencoder=common["autoencoder"], world_model=str(runs / "wm"),
                                 heads=str(runs / "heads"), out=str(tmp_path / "bundle"),
                                 noise="fixed"))
    bundle = load_bundle(path)
    assert bundle.metadata["world_model"]["step"] == 2
    assert bundle.metadata["engine"]["noise"] == "fixed"
    engine = WorldModelEngine.from_bundle(EngineConfig(), bundle)
    context = torch.zeros(1, 1, *engine.frame_shape, dtype=torch.uint8)
    engine.start(context, torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), seeds=[0])
    out = engine.step_chunk(torch.zeros(1, 2))
    assert out.frames.shape == (1, *engine.frame_shape)


def test_a_checkpoint_folder_is_a_source_for_every_stage(trained, tmp_path):
    runs, common, _ = trained
    shipped = assemble(BundleConfig(autoencoder=common["autoencoder"],
                                    world_model=str(runs / "wm"), heads=str(runs / "heads"),
                                    out=str(tmp_path / "shipped"), noise="fixed"))
    source = load_bundle(shipped)
    for name, module in (("ae", load_autoencoder(shipped, "cpu")), ("dit", load_dit(shipped))):
        expected = (source.autoencoder if name == "ae" else source.dit).state_dict()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items()), name
    # Fine-tune the checkpoint's DiT on its own autoencoder's latents (lr 0 keeps the weights).
    cfg = WorldModelTrainConfig(data=common["data"], autoencoder=str(shipped),
                                latents_dir=str(tmp_path / "latents"), run_dir=str(tmp_path / "wm"),
                                preset="test", window=2, chunks=3, batch=2, steps=1, lr=0.0,
                                init_from=str(shipped))
    train_world_model(cfg, progress=False)
    tuned = load_dit(tmp_path / "wm").state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in source.dit.state_dict().items())
    # Bundled with the checkpoint's autoencoder and heads, which keep their records.
    out = load_bundle(assemble(BundleConfig(autoencoder=str(shipped),
                                            world_model=str(tmp_path / "wm"), heads=str(shipped),
                                            out=str(tmp_path / "tuned"), noise="fixed")))
    assert out.metadata["autoencoder"] == source.metadata["autoencoder"]
    assert out.metadata["heads"] == source.metadata["heads"]
    assert out.metadata["world_model"]["step"] == 1
    assert out.metadata["world_model"]["init_from"] == str(shipped)
    # The record of the DiT it started from travels with it, as that checkpoint recorded it.
    assert out.metadata["world_model"]["init_record"] == source.metadata["world_model"]
    assert out.metadata["engine"] == source.metadata["engine"]
    for prefix, module in out.modules().items():
        expected = source.modules()[prefix].state_dict()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items()), prefix
    # A checkpoint folder as the DiT's source: its weights, engine settings and record.
    again = load_bundle(assemble(BundleConfig(autoencoder=str(shipped), world_model=str(shipped),
                                              heads=str(shipped), out=str(tmp_path / "again"),
                                              noise="fixed")))
    assert again.metadata == source.metadata
    with pytest.raises(CheckpointError, match="neither a world-model run folder"):
        load_dit(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither an autoencoder run's autoencoder.pt nor a"):
        load_autoencoder(tmp_path / "missing" / "autoencoder.pt", "cpu")


def test_bundle_rejects_an_unknown_noise_mode():
    with pytest.raises(ValueError, match="noise must be 'fresh' or 'fixed'"):
        BundleConfig(noise="random")


def test_unknown_stage_and_bad_override():
    with pytest.raises(ValueError, match="accepted: autoencoder, world-model, heads, bundle"):
        run_stage("vae", [])
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        run_stage("heads", ["steps=0"])
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        run_stage("heads", ["train.steps=0"])
    with pytest.raises(ValueError, match="bad configuration override"):
        run_stage("heads", ["stepz=10"])
