"""Losses against hand-computed values (docs/method.md, "Losses")."""

import math

import pytest
import torch
import torch.nn.functional as F

from dreamteacher.losses import (
    at_level,
    attention_map,
    dice_loss,
    feature_distillation_loss,
    label_distillation_loss,
    match_size,
    mix_distillation_loss,
    mse_level,
    segmentation_loss,
    whiten,
)


def test_whiten_matches_hand_computation():
    """Two pixels of very different scale: each is normalised over its own channels (whitening
    over the sample's pixels together would give other values)."""
    f = torch.tensor([[1.0, 10.0], [3.0, 30.0]]).view(1, 2, 1, 2)  # C = 2, pixels A and B
    # A: channels (1, 3), mean 2, var 1; B: channels (10, 30), mean 20, var 100
    expect = torch.tensor(
        [[-1 / math.sqrt(1 + 1e-5), -10 / math.sqrt(100 + 1e-5)],
         [1 / math.sqrt(1 + 1e-5), 10 / math.sqrt(100 + 1e-5)]]
    ).view(1, 2, 1, 2)  # fmt: skip
    assert torch.allclose(whiten(f), expect, atol=1e-6)


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


def test_perfect_regression_and_its_attention_term():
    """A prediction equal to the whitened teacher has zero MSE; its per-pixel energy is C
    everywhere, so its attention map is uniform and L_AT against the raw teacher equals the
    hand value mean((1/sqrt(HW) - Q_t)^2): the term on the regressor's prediction pulls it
    away from what the MSE term asks (docs/method.md, "Losses")."""
    t = torch.tensor([[1.0, 3.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # raw energies 1 and 9
    out = feature_distillation_loss([whiten(t)], [t])
    assert out["mse"].item() < 1e-10
    q_t = torch.tensor([1.0, 9.0]) / math.sqrt(1.0**2 + 9.0**2)
    q_s = torch.full((2,), 1 / math.sqrt(2))
    assert out["at"].item() == pytest.approx((q_s - q_t).pow(2).mean().item(), rel=1e-4)
    assert out["at"].item() > 0.1


def test_teacher_resized_bilinearly_to_student():
    t = torch.arange(16.0).view(1, 1, 4, 4)
    r = match_size(t, torch.zeros(1, 1, 2, 2))
    assert r.shape == (1, 1, 2, 2)
    assert r[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)


# label distillation (docs/method.md, "Label distillation and mix distillation")


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("tau_squared", [True, False])
def test_label_distillation_hand_value(tau_squared):
    """Two pixels, three classes: H(softmax(z_t / 4), softmax(z_s / 4)), mean over pixels."""
    zs = [[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]]
    zt = [[3.0, -1.0, 0.0], [2.0, 2.0, 2.0]]
    tau = 4.0
    hs = []
    for s, t in zip(zs, zt, strict=True):
        ps, pt = _softmax([v / tau for v in s]), _softmax([v / tau for v in t])
        hs.append(-sum(a * math.log(b) for a, b in zip(pt, ps, strict=True)))
    expect = sum(hs) / 2 * (tau**2 if tau_squared else 1)
    # B=1, K=3, H=1, W=2
    s = torch.tensor(zs).T.reshape(1, 3, 1, 2)
    t = torch.tensor(zt).T.reshape(1, 3, 1, 2)
    got = label_distillation_loss(s, t, tau=tau, tau_squared=tau_squared)
    assert got.item() == pytest.approx(expect, rel=1e-6)


def test_label_distillation_temperature_and_gradient_scale():
    """Softer targets at higher tau; with tau^2 the gradient keeps its size as tau grows
    (without it, it shrinks about as 1/tau^2)."""
    torch.manual_seed(0)
    zt = torch.randn(2, 5, 4, 4)
    zs0 = zt + 0.1 * torch.randn(2, 5, 4, 4)
    norms = {}
    for tau in (2.0, 8.0):
        for sq in (True, False):
            zs = zs0.clone().requires_grad_(True)
            label_distillation_loss(zs, zt, tau=tau, tau_squared=sq).backward()
            norms[(tau, sq)] = zs.grad.norm().item()
    assert norms[(8.0, True)] == pytest.approx(norms[(2.0, True)], rel=0.15)
    assert norms[(8.0, False)] < 0.1 * norms[(2.0, False)]


def test_label_distillation_is_minimal_at_the_teacher_and_resizes():
    """L_ld(z_s, z_t) - L_ld(z_t, z_t) is tau^2 KL(p_t || p_s), the teacher's distribution
    first (the reverse KL differs); its gradient vanishes at the teacher's logits."""
    torch.manual_seed(0)
    zt, zs = torch.randn(1, 4, 2, 2) * 3, torch.randn(1, 4, 2, 2) * 3
    tau = 1.0
    p_t, p_s = F.softmax(zt / tau, 1), F.softmax(zs / tau, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * tau**2
    reverse = (p_s * (p_s.log() - p_t.log())).sum(1).mean() * tau**2
    got = label_distillation_loss(zs, zt, tau) - label_distillation_loss(zt.clone(), zt, tau)
    assert got.item() == pytest.approx(kl.item(), rel=1e-4)
    assert abs(kl - reverse) > 0.05 * kl  # the two directions are told apart
    z = zt.clone().requires_grad_(True)
    label_distillation_loss(z, zt, tau).backward()
    assert z.grad.abs().max() < 1e-6
    # a stride-4 teacher map against an 8x8 student map: bilinear resize, no error
    assert label_distillation_loss(torch.zeros(1, 4, 8, 8), zt).isfinite()


def test_dice_hand_value_and_ignore():
    # K=2, one row of 3 pixels; the third is ignored
    logits = torch.tensor([[[[0.0, 0.0, 5.0]], [[0.0, math.log(3.0), -5.0]]]])
    target = torch.tensor([[[0, 1, 255]]])
    p1 = [0.5, 0.75]  # P(class 1) at the two valid pixels
    p0 = [0.5, 0.25]
    d0 = (2 * 0.5 + 1) / (sum(p0) + 1 + 1)  # class 0: truth at pixel 0
    d1 = (2 * 0.75 + 1) / (sum(p1) + 1 + 1)  # class 1: truth at pixel 1
    assert dice_loss(logits, target).item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert dice_loss(perfect, torch.tensor([[[0, 1]]]), eps=0.0).item() == pytest.approx(
        0, abs=1e-6
    )


def test_segmentation_loss_is_ce_plus_3_dice():
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    out = segmentation_loss(logits, target)
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert out["loss"].item() == pytest.approx((ce + 3 * dice_loss(logits, target)).item())


def test_mix_is_feature_plus_lambda_label():
    torch.manual_seed(0)
    preds = [torch.randn(2, 4, 4, 4)]
    targets = [torch.randn(2, 4, 4, 4)]
    zs, zt = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    feat = feature_distillation_loss(preds, targets)["loss"]
    ld = label_distillation_loss(zs, zt)
    mix = mix_distillation_loss(preds, targets, zs, zt, lambda_ld=0.5)
    assert mix["loss"].item() == pytest.approx((feat + 0.5 * ld).item(), rel=1e-6)
    assert mix_distillation_loss(preds, targets)["loss"].item() == pytest.approx(feat.item())
    label_only = mix_distillation_loss([], targets, zs, zt)
    assert label_only["loss"].item() == pytest.approx(ld.item()) and "mse" not in label_only


def test_attention_transfer_on_other_maps_than_the_regressed_ones():
    """at_student (e.g. the backbone's stages, any channel count) replaces the predictions in
    L_AT only; L_mse stays on the predictions."""
    torch.manual_seed(0)
    preds = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    teacher = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    stages = [torch.randn(2, 16, 6, 6), torch.randn(2, 32, 3, 3)]
    plain = feature_distillation_loss(preds, teacher, 10.0)
    out = feature_distillation_loss(preds, teacher, 10.0, at_student=stages)
    assert torch.equal(out["mse"], plain["mse"])
    at = sum(at_level(s, t) for s, t in zip(stages, teacher, strict=True)) / 2
    assert out["at"].item() == pytest.approx(at.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((plain["mse"] + 10 * at).item(), rel=1e-6)
    assert out["at"].item() != pytest.approx(plain["at"].item(), rel=1e-3)
