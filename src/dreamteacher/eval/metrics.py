"""Segmentation metrics from a confusion matrix accumulated over a whole split."""

from __future__ import annotations

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """cm[i, j] = pixels of true class i predicted as j; ignore_index pixels are skipped."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    valid = (t >= 0) & (t < num_classes)
    idx = t[valid] * num_classes + p[valid]
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_k = cm[k,k] / (row_k + col_k - cm[k,k]); NaN for a class absent from both."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU in percent over the classes present in the ground truth or the prediction."""
    iou = iou_per_class(cm)
    return float(iou[~iou.isnan()].mean() * 100) if (~iou.isnan()).any() else 0.0
