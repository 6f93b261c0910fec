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
    preds, logits = student(x)
    assert logits is None  # no logit head unless asked for
    assert [tuple(p.shape) for p in preds] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(teacher_channels, (4, 8, 16, 32), strict=True)
    ]
    loss = sum(p.mean() for p in preds)
    loss.backward()  # every parameter gets a gradient (DDP-safe: no unused parameters)
    assert all(p.grad is not None for p in student.parameters())


def test_regressor_logit_head_and_label_only():
    """mix: feature heads + a stride-4 logit head; label only: no feature heads, and every
    parameter still gets a gradient from the logits alone (DDP-safe)."""
    bb = Backbone("resnet18")
    x = torch.rand(2, 3, 64, 96)
    mix = Student(bb, FeatureRegressor(bb.channels, [8, 8, 8, 8], ch=32, num_classes=5))
    preds, logits = mix(x)
    assert len(preds) == 4 and logits.shape == (2, 5, 16, 24)
    label = Student(Backbone("resnet18"), FeatureRegressor(bb.channels, [], ch=32, num_classes=5))
    preds, logits = label(x)
    assert preds == [] and logits.shape == (2, 5, 16, 24)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in label.parameters())


def test_segmenter_output_is_full_resolution():
    m = Segmenter(Backbone("resnet18"), num_classes=7, ch=32)
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 7, 64, 64)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'resnet_51'"):
        Backbone("resnet_51")
