"""XWorld-v0 under Ray RLlib: PPO with a remote env runner on the tiny world model."""

import json

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason='Ray RLlib is an optional extra: pip install -e ".[distributed]"'
)

from agents.rllib.callbacks import deterministic_actions  # noqa: E402
from agents.rllib.config import RLlibTrainConfig  # noqa: E402
from agents.train_rllib import load_algorithm  # noqa: E402
from agents.train_rllib import main as train_main  # noqa: E402
from xworld_env.types import CAMERA_NAMES  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _sample_episodes(algo, steps: int = 4):
    return algo.env_runner_group.foreach_env_runner(
        lambda runner: runner.sample(num_timesteps=steps), local_env_runner=False
    )


def test_ppo_trains_samples_views_and_restores(local_ray, tiny_env_kwargs, tmp_path):
    overrides = ["rllib=tiny", f"rllib.run_dir={tmp_path}",
                 f"rllib.checkpoint={tiny_env_kwargs['checkpoint']}",
                 f"rllib.scenario_bank={tiny_env_kwargs['scenario_bank']}"]
    assert train_main(overrides) == 0
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in log] == [1, 2]
    assert log[-1]["env_steps"] >= 2 * 16  # two train batches of 16 env steps
    assert 0.0 <= log[-1]["xcache_skip_rate"] <= 1.0
    assert np.isfinite(log[-1]["policy_loss"])
    # The policy's deterministic actions over each sample, as the SB3 trainer logs them.
    assert 0.0 <= log[-1]["action_spread"] <= 1.0
    assert -1.0 <= log[-1]["mean_throttle"] <= 1.0 and -1.0 <= log[-1]["mean_steer"] <= 1.0

    algo = load_algorithm(tmp_path / "checkpoint_final")
    try:
        assert algo.iteration == 2
        # The env runner is remote and steps a batched XWorldVectorEnv of 2 worlds.
        assert algo.config.num_env_runners == 1
        assert algo.env_runner_group.foreach_env_runner(
            lambda r: (type(r.env.unwrapped).__name__, r.env.num_envs), local_env_runner=False
        ) == [("XWorldVectorEnv", 2)]
        episodes = [ep for batch in _sample_episodes(algo) for ep in batch]
        assert episodes
        actions = algo.env_runner_group.foreach_env_runner(
            lambda r: deterministic_actions(r.module, r.sample(num_timesteps=4), samples=3),
            local_env_runner=False)[0]
        assert actions.shape == (3, 2) and np.all(np.abs(actions) <= 1.0)
        obs = episodes[0].get_observations()
        assert set(CAMERA_NAMES) <= set(obs)
        for name in CAMERA_NAMES:
            assert obs[name].shape[1:] == (64, 64, 3) and obs[name].dtype == np.uint8
        # The restored weights are the trained ones, on the learner and on the runner.
        restored = algo.get_module().state_dict()
        runner = algo.env_runner_group.foreach_env_runner(
            lambda r: r.module.state_dict(), local_env_runner=False
        )[0]
        for key, value in restored.items():
            np.testing.assert_allclose(runner[key].cpu().numpy(), value.cpu().numpy())
    finally:
        algo.stop()


def test_missing_resume_checkpoint_fails_before_starting_ray(tmp_path, capsys):
    assert train_main(["rllib=tiny", f"rllib.resume={tmp_path / 'nope'}",
                       f"rllib.run_dir={tmp_path}"]) == 2
    assert "no RLlib algorithm checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_invalid_settings_name_the_bad_values():
    with pytest.raises(ValueError, match="minibatch_size"):
        RLlibTrainConfig(train_batch_size=16, minibatch_size=32)
    with pytest.raises(ValueError, match="runner_device"):
        RLlibTrainConfig(runner_device="tpu")
    with pytest.raises(ValueError, match="world_dtype must be one of"):
        RLlibTrainConfig(world_dtype="int4")
    with pytest.raises(ValueError, match="world_decode_dtype must be one of"):
        RLlibTrainConfig(world_decode_dtype="int8")


def _module(**model_config):
    import torch
    from gymnasium import spaces

    from agents.rllib.module import XWorldPPOModule

    views = {n: spaces.Box(0, 255, (64, 64, 3), np.uint8) for n in CAMERA_NAMES}
    obs_space = spaces.Dict({**views, "ego": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    module = XWorldPPOModule(observation_space=obs_space,
                             action_space=spaces.Box(-1, 1, (2,), np.float32),
                             model_config={"features_dim": 32, "view_dim": 16, "hidden": 32,
                                           **model_config})
    torch.manual_seed(0)
    obs = {n: torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8) for n in CAMERA_NAMES}
    return module, {"obs": obs | {"ego": torch.zeros(3, 3)}}


def test_gsde_exploration_holds_its_noise_between_draws():
    import torch
    from ray.rllib.core.columns import Columns

    module, batch = _module(exploration="gsde", sde_sample_freq=3)
    with torch.no_grad():
        outs = [module.forward_exploration(batch) for _ in range(7)]
    actions = [out[Columns.ACTIONS] for out in outs]
    # The same observations: the action stays put until the noise is drawn again (every 3
    # steps, per world), then moves.
    assert torch.equal(actions[0], actions[1]) and torch.equal(actions[1], actions[2])
    assert not torch.equal(actions[2], actions[3]) and torch.equal(actions[3], actions[5])
    assert not torch.equal(actions[5], actions[6])
    assert not torch.equal(actions[0][0], actions[0][1])  # every world has its own noise
    # The log-probability stored for PPO is that of the distribution the loss sees.
    dist = module.get_exploration_action_dist_cls().from_logits(outs[0][Columns.ACTION_DIST_INPUTS])
    assert torch.allclose(dist.logp(actions[0]), outs[0][Columns.ACTION_LOGP], atol=1e-5)
    # Gaussian exploration leaves the sampling to RLlib (independent noise every step).
    gaussian, batch = _module(exploration="gaussian")
    assert Columns.ACTIONS not in gaussian.forward_exploration(batch)
    with pytest.raises(ValueError, match=r"exploration must be one of \['gsde', 'gaussian'\]"):
        _module(exploration="boltzmann")


def test_resuming_with_another_exploration_names_the_setting(local_ray, tiny_env_kwargs,
                                                              tmp_path, capsys):
    tiny = ["rllib=tiny", "rllib.iterations=1",
            f"rllib.checkpoint={tiny_env_kwargs['checkpoint']}",
            f"rllib.scenario_bank={tiny_env_kwargs['scenario_bank']}"]
    assert train_main([*tiny, f"rllib.run_dir={tmp_path / 'gsde'}"]) == 0
    resumed = [*tiny, f"rllib.run_dir={tmp_path / 'gaussian'}", "rllib.exploration=gaussian",
               f"rllib.resume={tmp_path / 'gsde' / 'checkpoint_final'}"]
    assert train_main(resumed) == 2
    err = capsys.readouterr().err
    assert "policy built with other settings" in err and "rllib.exploration" in err
