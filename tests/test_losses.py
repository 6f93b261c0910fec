"""Losses against hand-computed values (METHOD.md section 3)."""

import math

import pytest
import torch

from dreamteacher.losses import (
    at_level,
    attention_map,
    feature_distillation_loss,
    match_size,
    mse_level,
    whiten,
)


def test_whiten_matches_hand_computation():
    f = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 4, 1, 1)  # one pixel, C = 4
    mu, var = 3.0, (4 + 1 + 0 + 9) / 4  # 3.5
    expect = torch.tensor([(v - mu) / math.sqrt(var + 1e-5) for v in (1, 2, 3, 6)])
    assert torch.allclose(whiten(f).flatten(), expect, atol=1e-6)


def test_whiten_is_per_pixel():
    f = torch.randn(2, 8, 3, 5) * 7 + 3
    w = whiten(f)
    assert torch.allclose(w.mean(1), torch.zeros(2, 3, 5), atol=1e-5)
    assert torch.allclose(w.pow(2).mean(1), torch.ones(2, 3, 5), atol=1e-3)


def test_attention_map_hand_values():
    # 1 sample, 2 channels, 1x2 pixels: pixel a = (1, 2), pixel b = (3, 0)
    f = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])
    q = torch.tensor([1 + 4, 9 + 0], dtype=torch.float)  # sum_c A_c^2
    assert torch.allclose(attention_map(f), (q / q.norm()).view(1, 2))


def test_at_level_hand_value():
    s = torch.tensor([[[[1.0, 0.0]]]])  # Q_s = (1, 0)
    t = torch.tensor([[[[1.0, 1.0]]]])  # Q_t = (1, 1) / sqrt(2)
    r = 1 / math.sqrt(2)
    expect = ((1 - r) ** 2 + r**2) / 2
    assert at_level(s, t).item() == pytest.approx(expect, rel=1e-6)


def test_attention_is_per_sample():
    """Scaling one sample's features must not change any attention map (per-sample norm)."""
    f = torch.rand(2, 3, 4, 4)
    g = f.clone()
    g[1] *= 100
    assert torch.allclose(attention_map(f), attention_map(g), atol=1e-6)


def test_whitened_teacher_attention_is_constant():
    """Why AT uses the raw teacher: after whitening every pixel has energy C."""
    q = attention_map(whiten(torch.randn(1, 16, 4, 4)))
    assert torch.allclose(q, torch.full_like(q, 1 / 4), atol=1e-4)


def test_feature_loss_total_and_terms():
    torch.manual_seed(0)
    s = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    t = [torch.randn(2, 4, 8, 8) * 3, torch.randn(2, 6, 4, 4) + 1]
    out = feature_distillation_loss(s, t, lambda_at=10.0)
    mse = ((s[0] - whiten(t[0])).pow(2).mean() + (s[1] - whiten(t[1])).pow(2).mean()) / 2
    at = (at_level(s[0], t[0]) + at_level(s[1], t[1])) / 2
    assert out["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["at"].item() == pytest.approx(at.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(mse.item() + 10 * at.item(), rel=1e-6)
    assert out["mse_l1"].item() == pytest.approx(mse_level(s[1], t[1]).item(), rel=1e-6)


def test_loss_is_zero_for_perfect_student():
    t = [torch.randn(2, 5, 6, 6)]
    out = feature_distillation_loss([whiten(t[0])], t)
    assert out["mse"].item() < 1e-10
    # the whitened map's attention differs from the raw one, so AT stays > 0 in general
    assert out["at"].item() >= 0


def test_teacher_resized_bilinearly_to_student():
    t = torch.arange(16.0).view(1, 1, 4, 4)
    r = match_size(t, torch.zeros(1, 1, 2, 2))
    assert r.shape == (1, 1, 2, 2)
    assert r[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
