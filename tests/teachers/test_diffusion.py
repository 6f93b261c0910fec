"""The diffusion teacher's noise schedule against its closed form, and one noise draw per
image serving both the regression targets and the interpreter's soft labels."""

import math

import torch

from dreamteacher.engine.pretrain import distill_losses
from dreamteacher.losses import (
    LAMBDA_AT,
    at_level,
    label_distillation_loss,
    mix_distillation_loss,
)
from dreamteacher.randomness import keyed_hflip
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import create_teacher
from dreamteacher.teachers.interpreter import FeatureInterpreter


def test_alpha_bar_is_the_linear_ddpm_closed_form():
    """abar_t = prod_{s<=t} (1 - beta_s), beta linear from 1e-4 to 0.02 over 1000 steps (Ho et
    al. 2020)."""
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    betas = [1e-4 + (0.02 - 1e-4) * k / 999 for k in range(1000)]
    abar = [math.prod(1 - b for b in betas[: t + 1]) for t in (0, 50, 250, 999)]
    got = teacher.alphas_cumprod[[0, 50, 250, 999]].double()
    assert torch.allclose(got, torch.tensor(abar, dtype=torch.float64), rtol=1e-5)
    assert 0.98 < math.sqrt(abar[1]) < 0.99  # at t = 50 the image still dominates x_t


def test_soft_labels_and_targets_come_from_one_noise_draw():
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    interp = FeatureInterpreter(teacher.channels, 3, ch=16).eval()
    bb = Backbone("resnet18")
    student = Student(bb, FeatureRegressor(bb.channels, teacher.channels, 32, 3)).eval()
    x, keys = torch.rand(2, 3, 32, 32), [3, 7]
    calls = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    out = distill_losses(student, teacher, x, keys, interpreter=interp)
    assert len(calls) == 1  # the teacher runs once per micro-batch
    # by hand: the same flip, one encoding, the interpreter on those very features
    (xf,) = keyed_hflip(keys, x)
    feats = teacher(xf, keys)
    preds, logits = student(xf)
    with torch.no_grad():
        ref = mix_distillation_loss(preds, feats, logits, interp(feats), LAMBDA_AT)
        other = label_distillation_loss(logits, interp(teacher(xf, [k + 1 for k in keys])))
    assert abs(out["ld"] - ref["ld"]) < 1e-6 and abs(out["mse"] - ref["mse"]) < 1e-6
    assert abs(out["ld"] - other) > 1e-5  # another draw gives other soft labels


def test_attention_transfer_from_the_backbone_stages():
    """at_source=backbone: L_AT between the backbone's C2..C5 and the teacher's raw maps of the
    same draw, and its gradient reaches the backbone."""
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    bb = Backbone("resnet18")
    student = Student(bb, FeatureRegressor(bb.channels, teacher.channels, 32))
    x, keys = torch.rand(2, 3, 32, 32), [1, 2]
    out = distill_losses(student, teacher, x, keys, lambda_at=1.0, at_source="backbone")
    (xf,) = keyed_hflip(keys, x)
    feats, stages = teacher(xf, keys), bb(xf)
    hand = sum(at_level(s, t) for s, t in zip(stages, feats, strict=True)) / 4
    assert abs(out["at"] - hand) < 1e-6
    student.zero_grad()
    out["at"].backward()
    assert bb.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.regressor.parameters())  # AT skips the regressor
