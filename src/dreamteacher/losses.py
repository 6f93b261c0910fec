"""DreamTeacher losses (docs/method.md, "Losses" and "Label distillation and mix distillation").

L_feat = L_mse + lambda_AT * L_AT with lambda_AT = 10, both averaged over the feature levels;
L_ld, the label distillation loss, and the interpreter's CE + Dice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamteacher.defaults import AT_SOURCES, DICE_WEIGHT, LAMBDA_AT, LAMBDA_LD, TAU

__all__ = ["AT_SOURCES", "DICE_WEIGHT", "LAMBDA_AT", "LAMBDA_LD", "TAU"]


def whiten(f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """W(f): non-learnable LayerNorm over channels at every pixel. # B, C, H, W -> same."""
    mu = f.mean(dim=1, keepdim=True)
    var = f.var(dim=1, unbiased=False, keepdim=True)
    return (f - mu) / torch.sqrt(var + eps)


def match_size(teacher: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of a teacher map to the student prediction's H, W when they differ."""
    if teacher.shape[-2:] == like.shape[-2:]:
        return teacher
    return F.interpolate(teacher, like.shape[-2:], mode="bilinear", align_corners=False)


def mse_level(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """One level of L_mse = mean over B, C, H, W of (f_s - W(f_t))^2."""
    return F.mse_loss(student, whiten(teacher))


def attention_map(f: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Q = vec(sum_c |A_c|^p) normalised to unit L2 norm per sample
    (Zagoruyko & Komodakis 2017, eq. 2 with F_sum^p). # B, C, H, W -> B, H*W"""
    q = f.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(q, dim=1)


def at_level(student: torch.Tensor, teacher_raw: torch.Tensor, p: int = 2) -> torch.Tensor:
    """One level of L_AT: mean over B, H*W of (Q_s - Q_t)^2. The teacher's map comes from its
    RAW features: after whitening every pixel has the same channel energy (sum_c A_c^2 = C),
    so the whitened map would be constant (docs/method.md, "Losses")."""
    return (attention_map(student, p) - attention_map(teacher_raw, p)).pow(2).mean()


def feature_distillation_loss(
    student: list[torch.Tensor],
    teacher_raw: list[torch.Tensor],
    lambda_at: float = LAMBDA_AT,
    at_student: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """L_feat = L_mse + lambda_AT * L_AT; returns the total, each term and each level's terms.
    L_AT compares `at_student` (e.g. the backbone's C2..C5, any channels) with the teacher's
    raw maps when given, else the regressor's predictions `student`."""
    out: dict[str, torch.Tensor] = {}
    mses, ats = [], []
    at_from = student if at_student is None else at_student
    for i, (s, t, a_s) in enumerate(zip(student, teacher_raw, at_from, strict=True)):
        t = match_size(t.float(), s)
        m, a = mse_level(s.float(), t), at_level(a_s.float(), match_size(t, a_s))
        out[f"mse_l{i}"], out[f"at_l{i}"] = m.detach(), a.detach()
        mses.append(m)
        ats.append(a)
    mse, at = torch.stack(mses).mean(), torch.stack(ats).mean()
    out.update(loss=mse + lambda_at * at, mse=mse, at=at)
    return out


# Label distillation (docs/method.md, "Label distillation and mix distillation")


def label_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = TAU,
    tau_squared: bool = True,
) -> torch.Tensor:
    """L_ld = H(softmax(z_t / tau), softmax(z_s / tau)), the cross-entropy between the
    temperature-softened distributions at every pixel, averaged over B, H, W.

    logits # B, K, H, W; the teacher's are resized (bilinear) to the student's H, W. With
    `tau_squared` the loss is multiplied by tau^2 (Hinton et al. 2015): the gradient of the
    softened cross-entropy w.r.t. the student's logits shrinks as 1/tau^2, and the factor keeps
    its size independent of tau, so lambda_ld keeps its meaning when tau changes."""
    teacher_logits = match_size(teacher_logits.float(), student_logits)
    p_t = F.softmax(teacher_logits / tau, dim=1)
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    loss = -(p_t * log_p_s).sum(dim=1).mean()
    return loss * tau**2 if tau_squared else loss


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, eps: float = 1.0
) -> torch.Tensor:
    """Soft multi-class Dice loss: 1 - mean over classes of (2 sum p g + eps) / (sum p + sum g
    + eps), sums over every labelled pixel of the batch. logits # B, K, H, W; target # B, H, W
    (class ids; `ignore_index` pixels count for nothing)."""
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # B, 1, H, W
    p = F.softmax(logits.float(), dim=1) * valid
    g = F.one_hot(target.clamp(0, k - 1) * valid[:, 0], k).permute(0, 3, 1, 2) * valid
    inter = (p * g).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + g.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    dice_weight: float = DICE_WEIGHT,
) -> dict[str, torch.Tensor]:
    """The feature interpreter's loss, CE + 3 x Dice (docs/method.md, "Label distillation and
    mix distillation")."""
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    dice = dice_loss(logits, target, ignore_index)
    return {"loss": ce + dice_weight * dice, "ce": ce, "dice": dice}


def mix_distillation_loss(
    preds: list[torch.Tensor],
    teacher_raw: list[torch.Tensor],
    student_logits: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    lambda_at: float = LAMBDA_AT,
    lambda_ld: float = LAMBDA_LD,
    tau: float = TAU,
    tau_squared: bool = True,
    at_student: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """L = L_feat (when there are feature predictions) + lambda_ld * L_ld (when there are
    logits): feature distillation, label distillation, or both ("mix"; docs/method.md, "Label
    distillation and mix distillation")."""
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=teacher_raw[0].device if teacher_raw else None)
    if preds:
        out = feature_distillation_loss(preds, teacher_raw, lambda_at, at_student)
        total = out["loss"]
    if student_logits is not None:
        ld = label_distillation_loss(student_logits, teacher_logits, tau, tau_squared)
        out["ld"] = ld.detach()
        total = total + lambda_ld * ld
    out["loss"] = total
    return out
