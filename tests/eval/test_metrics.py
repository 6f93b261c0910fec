import math

import pytest
import torch

from dreamteacher.eval import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_counts_and_ignore():
    target = torch.tensor([0, 0, 1, 1, 2, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 0])
    cm = confusion_matrix(pred, target, 3, ignore_index=255)
    expect = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert torch.equal(cm, expect)


def test_iou_from_known_confusion_matrix():
    cm = torch.tensor([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    iou = iou_per_class(cm)
    assert iou[0].item() == pytest.approx(50 / (60 + 55 - 50))
    assert iou[1].item() == pytest.approx(30 / (40 + 40 - 30))
    # class 2 is never true; predicted 5 times -> IoU 0, counted in the mean
    assert iou[2].item() == 0.0
    assert mean_iou(cm) == pytest.approx(100 * (50 / 65 + 30 / 50 + 0) / 3)


def test_absent_class_is_excluded_from_mean():
    cm = torch.tensor([[4, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert math.isnan(iou_per_class(cm)[2].item())
    assert mean_iou(cm) == pytest.approx(100.0)
