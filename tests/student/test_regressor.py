import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dreamteacher.errors import UserError
from dreamteacher.student import (
    Backbone,
    FeatureRegressor,
    FusedLogits,
    LevelwiseLogits,
    Segmenter,
    Student,
)


@pytest.mark.parametrize("head", ["uper", "light"])
def test_regressor_logit_head_and_label_only(head):
    """mix: feature heads + a stride-4 logit head; label only: no feature heads, and every
    parameter still gets a gradient from the logits alone (DDP-safe)."""
    bb = Backbone("resnet18")
    x = torch.rand(2, 3, 64, 96)
    reg = FeatureRegressor(bb.channels, [8, 8, 8, 8], ch=32, num_classes=5, logit_head=head)
    assert isinstance(reg.logit_head, FusedLogits if head == "uper" else LevelwiseLogits)
    preds, logits = Student(bb, reg)(x)
    assert len(preds) == 4 and logits.shape == (2, 5, 16, 24)
    reg = FeatureRegressor(bb.channels, [], ch=32, num_classes=5, logit_head=head)
    label = Student(Backbone("resnet18"), reg)
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


def _levels(ch: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, ch, 12 // s, 20 // s, generator=g) for s in (1, 2, 3, 6)]


@pytest.mark.parametrize("train", [False, True])
def test_levelwise_logits_equal_a_1x1_fusion_of_the_upsampled_concat(train):
    """The light head computes each level's 1x1 conv before upsampling; the reference
    upsamples first, concatenates and applies one 1x1 conv with the stacked weights (the
    UPerNet order). Equal up to float rounding, with BatchNorm in eval (running statistics)
    and in train mode (batch statistics). Non-integer ratios (12x20 from 2x3) included."""
    torch.manual_seed(0)
    head = LevelwiseLogits(16, 4, 5)
    head.norm.running_mean.normal_()
    head.norm.running_var.uniform_(0.5, 2.0)
    head.train(train)
    ps = _levels()
    w = torch.cat([p.weight for p in head.proj], 1)  # 16, 4 * 16, 1, 1
    size = ps[0].shape[-2:]
    cat = torch.cat(
        [ps[0]] + [F.interpolate(p, size, mode="bilinear", align_corners=False) for p in ps[1:]],
        1,
    )
    ref_norm = torch.nn.BatchNorm2d(16)
    ref_norm.load_state_dict(head.norm.state_dict())
    ref_norm.train(train)
    with torch.no_grad():
        ref = head.cls(F.relu(ref_norm(F.conv2d(cat, w))))
        out = head(ps)
    assert out.shape == (2, 5, 12, 20)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _macs(module: torch.nn.Module, ps: list[torch.Tensor]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(ps)
    return counter.get_total_flops() // 2


def test_light_logit_head_costs_a_small_fraction_of_uppernets():
    """At 256 channels the fused 3x3 conv over the 4 concatenated levels is 9 x 1024 x 256
    MACs per stride-4 pixel; the light head's 1x1 convs are 256 x 256 at each level's own
    resolution: 26x fewer MACs here (the 1x1 class convs included), counted."""
    ps = [torch.randn(1, 256, 16 // s, 20 // s) for s in (1, 2, 4, 8)]
    uper = _macs(FusedLogits(256, 4, 11, dropout=0.0).eval(), ps)
    light = _macs(LevelwiseLogits(256, 4, 11).eval(), ps)
    pixels = 16 * 20
    assert uper == pixels * (9 * 1024 * 256 + 256 * 11)
    assert uper / light > 20, (uper, light)


def test_unknown_logit_head():
    with pytest.raises(UserError, match="unknown logit_head 'fpn'; choose one of uper, light"):
        FeatureRegressor([64, 128, 256, 512], [], num_classes=3, logit_head="fpn")
