"""DreamTeacher losses (METHOD.md section 3).

L_feat = L_mse + lambda_AT * L_AT with lambda_AT = 10, both averaged over the feature levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    so the whitened map would be constant (METHOD.md section 3)."""
    return (attention_map(student, p) - attention_map(teacher_raw, p)).pow(2).mean()


def feature_distillation_loss(
    student: list[torch.Tensor], teacher_raw: list[torch.Tensor], lambda_at: float = 10.0
) -> dict[str, torch.Tensor]:
    """L_feat = L_mse + lambda_AT * L_AT; returns the total, each term and each level's terms."""
    out: dict[str, torch.Tensor] = {}
    mses, ats = [], []
    for i, (s, t) in enumerate(zip(student, teacher_raw, strict=True)):
        t = match_size(t.float(), s)
        m, a = mse_level(s.float(), t), at_level(s.float(), t)
        out[f"mse_l{i}"], out[f"at_l{i}"] = m.detach(), a.detach()
        mses.append(m)
        ats.append(a)
    mse, at = torch.stack(mses).mean(), torch.stack(ats).mean()
    out.update(loss=mse + lambda_at * at, mse=mse, at=at)
    return out
