"""Evaluation: confusion-matrix mIoU."""

from dreamteacher.eval.metrics import confusion_matrix, iou_per_class, mean_iou

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou"]
