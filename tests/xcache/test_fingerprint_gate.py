"""Fingerprint and gate math against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from xworld_env.xcache.fingerprint import (
    Fingerprint,
    axis_counts,
    fingerprint,
    structure_sample,
    uniform_indices,
)
from xworld_env.xcache.gate import (
    cosine_threshold,
    entry_cosine,
    fit_gain,
    gate_metrics,
    max_deviation,
    min_cosine,
    predicted_error,
    relative_change,
    reuse_decision,
    update_ema,
)


def test_small_grid_is_kept_whole():
    assert axis_counts((2, 4, 4), 32) == (2, 4, 4)


def test_budget_split_in_proportion_to_shape():
    assert axis_counts((4, 8, 8), 32) == (2, 4, 4)  # every axis keeps half: 2*4*4 = 32
    counts = axis_counts((1, 16, 16), 32)
    assert counts[0] == 1 and math.prod(counts) <= 32 and math.prod(counts) >= 24
    assert axis_counts((8, 8, 8), 1) == (1, 1, 1)
    with pytest.raises(ValueError, match="budget"):
        axis_counts((2, 2), 0)


def test_uniform_indices():
    assert uniform_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert uniform_indices(3, 5).tolist() == [0, 1, 2]


def test_structure_sample_takes_the_cartesian_product():
    x = torch.arange(1 * 1 * 4 * 8 * 8 * 1, dtype=torch.float32).reshape(1, 1, 4, 8, 8, 1)
    s = structure_sample(x, budget=32)
    f_idx, h_idx, w_idx = [1, 3], [1, 3, 5, 7], [1, 3, 5, 7]
    expected = torch.tensor(
        [fi * 64 + hi * 8 + wi for fi in f_idx for hi in h_idx for wi in w_idx], dtype=torch.float32
    )
    assert s.shape == (1, 32, 1)
    torch.testing.assert_close(s[0, :, 0], expected)


def test_fingerprint_entries():
    x = torch.zeros(2, 3, 1, 2, 2, 4)
    x[:, 0] = 1.0
    x[:, 2] = 3.0
    fp = fingerprint(x, groups=[[0, 1], [2]], action=torch.ones(2, 5))
    assert [s.shape for s in fp.samples] == [(2, 8, 4), (2, 4, 4)]
    torch.testing.assert_close(fp.means[0], torch.full((2, 4), 0.5))
    torch.testing.assert_close(fp.means[1], torch.full((2, 4), 3.0))
    assert fp.action.shape == (2, 5)


def test_entry_cosine_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(entry_cosine(a, b), torch.tensor([0.0, 1.0, 1.0, 0.0]))


def make_fp(sample, mean, action):
    return Fingerprint((torch.tensor(sample),), (torch.tensor(mean),), torch.tensor(action))


def test_min_cosine_is_the_worst_entry():
    prev = make_fp([[[1.0, 0.0]]], [[1.0, 0.0]], [[1.0, 0.0]])
    # Sample unchanged, mean at 60 degrees, action at 90 degrees: the action entry decides.
    now = make_fp([[[2.0, 0.0]]], [[0.5, math.sqrt(3) / 2]], [[0.0, 1.0]])
    torch.testing.assert_close(min_cosine(now, prev), torch.tensor([0.0]))
    now = make_fp([[[2.0, 0.0]]], [[0.5, math.sqrt(3) / 2]], [[1.0, 0.0]])
    torch.testing.assert_close(min_cosine(now, prev), torch.tensor([0.5]))


def test_zero_action_twice_counts_as_equal():
    prev = make_fp([[[1.0, 0.0]]], [[1.0, 0.0]], [[0.0, 0.0]])
    now = make_fp([[[1.0, 0.0]]], [[1.0, 0.0]], [[0.0, 0.0]])
    torch.testing.assert_close(min_cosine(now, prev), torch.tensor([1.0]))


def test_max_deviation_value():
    prev = Fingerprint(
        (torch.tensor([[[1.0, -3.0]]]), torch.tensor([[[2.0, 2.0]]])),
        (torch.zeros(1, 2), torch.zeros(1, 2)),
        torch.zeros(1, 1),
    )
    now = Fingerprint(
        (torch.tensor([[[1.5, -3.0]]]), torch.tensor([[[2.0, 5.0]]])),
        prev.means,
        prev.action,
    )
    # group 0: 0.5 / 2 = 0.25; group 1: 3 / 2 = 1.5; the maximum wins.
    torch.testing.assert_close(max_deviation(now, prev), torch.tensor([1.5]), atol=1e-5, rtol=0)


def test_relative_change_value():
    prev = Fingerprint(
        (torch.tensor([[[1.0, -3.0]]]), torch.tensor([[[2.0, 2.0]]])),
        (torch.zeros(1, 2), torch.zeros(1, 2)),
        torch.zeros(1, 1),
    )
    now = Fingerprint(
        (torch.tensor([[[1.5, -3.0]]]), torch.tensor([[[2.0, 2.4]]])),
        prev.means,
        prev.action,
    )
    # group 0: mean|d| 0.25 / mean|prev| 2 = 0.125; group 1: 0.2 / 2 = 0.1; the maximum wins.
    torch.testing.assert_close(relative_change(now, prev), torch.tensor([0.125]), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(relative_change(prev, prev), torch.tensor([0.0]))


@pytest.mark.parametrize(
    "groups",
    [[[0, 1], [2, 3, 4, 5], [6]],  # consecutive cameras: the packing is built with the samples
     [[6], [1, 0], [2, 3, 4, 5]]],  # any other grouping: packed from the entries
)
@pytest.mark.parametrize("shift", [0.0, 0.05, 1.0])
def test_gate_metrics_equal_the_reference_functions(shift, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 2, 4, 4, 16, generator=g)
    action = torch.randn(3, 8, generator=g)
    prev = fingerprint(x, groups, action, budget=8)
    x_now = x + shift * torch.randn(x.shape, generator=g)
    action_now = action.clone()
    action_now[1] = -action_now[1]  # one world turns its action around
    now = fingerprint(x_now, groups, action_now, budget=8)
    assert (now.layout is not None) == (groups[0] == [0, 1])
    cos, dev, rel = (torch.from_numpy(m) for m in gate_metrics(now, prev))
    torch.testing.assert_close(cos, min_cosine(now, prev), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dev, max_deviation(now, prev), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rel, relative_change(now, prev), atol=1e-5, rtol=1e-5)
    # Hand-made fingerprints whose groups differ in length (no common per-camera row).
    odd_prev = Fingerprint((torch.tensor([[[1.0, -3.0, 2.0]]]), torch.tensor([[[2.0, 2.0]]])),
                           (torch.ones(1, 2), torch.ones(1, 2)), torch.zeros(1, 1))
    odd_now = Fingerprint((torch.tensor([[[1.5, -3.0, 2.0]]]), torch.tensor([[[2.0, 2.4]]])),
                          odd_prev.means, odd_prev.action)
    for got, ref in zip(gate_metrics(odd_now, odd_prev),
                        (min_cosine(odd_now, odd_prev), max_deviation(odd_now, odd_prev),
                         relative_change(odd_now, odd_prev))):
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-5, rtol=1e-5)


def test_ema_threshold_and_decision():
    ema = np.array([0.99, 0.99], dtype=np.float32)
    cos = np.array([0.95, 1.0], dtype=np.float32)
    new = update_ema(ema, cos, alpha=0.3, fresh=np.array([False, True]))
    np.testing.assert_allclose(new, [0.3 * 0.95 + 0.7 * 0.99, 1.0], rtol=1e-6)
    tau = cosine_threshold(new, margin=0.02, floor=0.97)
    np.testing.assert_allclose(tau, [0.97, 0.98], rtol=1e-6)
    decision = reuse_decision(
        np.array([0.975, 0.975, 0.99]), np.array([0.1, 2.0, 0.1]),
        np.array([0.97, 0.97, 0.995]), tau_dev=2.0,
    )
    assert decision.tolist() == [True, False, False]
    # The relative change, where given, must pass as well.
    decision = reuse_decision(
        np.array([0.99, 0.99]), np.array([0.1, 0.1]), np.array([0.97, 0.97]),
        tau_dev=2.0, rel=np.array([0.004, 0.02]), tau_rel=0.01,
    )
    assert decision.tolist() == [True, False]


@pytest.mark.parametrize("groups", [[[0, 1], [2, 3, 4], [5, 6]], [[0, 2], [1, 3, 4], [5, 6]]])
def test_extrapolated_fingerprint_continues_the_line_and_packs_like_its_tensors(groups):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 7, 2, 4, 4, 16, generator=g)
    x1 = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    action = torch.randn(3, 8, generator=g)
    before, last = fingerprint(x0, groups, action, 8), fingerprint(x1, groups, -action, 8)
    ahead = np.array([0.0, 1.0, 2.5], dtype=np.float32)
    line = last.extrapolate(before, ahead)
    for a, b, got in zip(last.samples, before.samples, line.samples):
        torch.testing.assert_close(got[0], a[0], rtol=0, atol=0)  # ahead 0: the last one
        torch.testing.assert_close(got[1], 2 * a[1] - b[1])
        torch.testing.assert_close(got[2], a[2] + 2.5 * (a[2] - b[2]))
    for a, b, got in zip(last.means, before.means, line.means):
        torch.testing.assert_close(got[1:], a[1:] + torch.tensor([[1.0], [2.5]]) * (a[1:] - b[1:]))
    assert torch.equal(line.action, last.action)  # the action entry is not extrapolated
    # The gate reads the packed layout built from the extrapolated rows: it must agree with
    # the reference metrics on the extrapolated tensors.
    now = fingerprint(x1 + 0.05 * torch.randn(x1.shape, generator=g), groups, -action, 8)
    plain = Fingerprint(line.samples, line.means, line.action)
    for got, ref in zip(gate_metrics(now, line), gate_metrics(now, plain)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(gate_metrics(now, line)[2]),
                               relative_change(now, plain), rtol=1e-5, atol=1e-6)


def test_gain_fit_and_predicted_error():
    num, den = np.zeros(2), np.zeros(2)
    # Nothing fitted yet: the prediction is infinite, so no world can pass the gate.
    assert np.isinf(predicted_error(num, den, np.array([0.1, 0.1], np.float32))).all()
    # World 0 sees err = 3 * rel twice; world 1 sees (rel, err) = (1, 1), then (2, 6).
    num, den = fit_gain(num, den, np.array([0.01, 1.0], np.float32), np.array([0.03, 1.0]), 0.5)
    num, den = fit_gain(num, den, np.array([0.02, 2.0], np.float32), np.array([0.06, 6.0]), 0.5)
    # Decayed least squares through the origin: (0.5 * 1 * 1 + 2 * 6) / (0.5 * 1 + 4) = 25 / 9.
    np.testing.assert_allclose(num / den, [3.0, 12.5 / 4.5], rtol=1e-6)
    pred = predicted_error(num, den, np.array([0.5, 0.9], np.float32))
    assert pred.dtype == np.float32
    np.testing.assert_allclose(pred, [1.5, 0.9 * 12.5 / 4.5], rtol=1e-6)
