import pytest
import torch

from dreamteacher.errors import UserError
from dreamteacher.student import Backbone, FeatureRegressor, Segmenter, Student


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnext_tiny"])
def test_backbone_and_regressor_shapes(name):
    bb = Backbone(name)
    teacher_channels = [48, 96, 128, 160]
    student = Student(bb, FeatureRegressor(bb.channels, teacher_channels, ch=64))
    x = torch.rand(2, 3, 64, 96)
    feats = bb(x)
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == bb.channels
    preds = student(x)
    assert [tuple(p.shape) for p in preds] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(teacher_channels, (4, 8, 16, 32), strict=True)
    ]
    loss = sum(p.mean() for p in preds)
    loss.backward()  # every parameter gets a gradient (DDP-safe: no unused parameters)
    assert all(p.grad is not None for p in student.parameters())


def test_segmenter_output_is_full_resolution():
    m = Segmenter(Backbone("resnet18"), num_classes=7, ch=32)
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 7, 64, 64)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'resnet_51'"):
        Backbone("resnet_51")
