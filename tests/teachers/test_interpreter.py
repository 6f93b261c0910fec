"""The feature interpreter (docs/method.md, "Label distillation and mix distillation") on
every teacher configuration of the contract test: stride-4 logits, gradients only into the
interpreter, save/load round trip."""

import pytest
import torch

from dreamteacher.errors import UserError
from dreamteacher.teachers import create_teacher
from dreamteacher.teachers.interpreter import (
    FeatureInterpreter,
    TeacherSegmenter,
    load_interpreter,
    save_interpreter,
)
from tests.teachers.test_contract import CASES


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_interpreter_shapes_for_teacher_configs(name, cfg):
    torch.manual_seed(0)
    teacher = create_teacher(name, **cfg)
    h, w = cfg["image_size"]
    interp = FeatureInterpreter(teacher.channels, num_classes=7, ch=32)
    assert len(interp.fuses) == len(teacher.channels) - 1
    logits = interp(teacher(torch.rand(2, 3, h, w)))
    assert logits.shape == (2, 7, h // 4, w // 4)  # the finest teacher stride
    seg = TeacherSegmenter(teacher, interp)
    out = seg(torch.rand(2, 3, h, w))
    assert out.shape == (2, 7, h, w)
    out.square().mean().backward()
    assert all(p.grad is not None for p in interp.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    # only the interpreter is saved; the teacher stays in its own folder
    assert set(seg.state_dict()) == {f"interpreter.{k}" for k in interp.state_dict()}


def test_interpreter_fuse_layer_parts():
    interp = FeatureInterpreter([16, 24, 40, 40], num_classes=3, ch=64)
    f = interp.fuses[0]
    assert f.proj.kernel_size == (1, 1) and f.proj.in_channels == 40  # the coarsest map
    assert f.depthwise.groups == f.depthwise.in_channels == 64 + 40  # depthwise 3x3
    assert f.pointwise.kernel_size == (1, 1) and f.norm.num_groups == 32
    assert interp.fuses[-1].depthwise.in_channels == 64 + 16  # concat with the finest map
    assert interp.dropout.p == 0.1


def test_interpreter_is_scale_invariant_per_level():
    """Inputs are whitened, so raw UNet activations of any scale give the same logits."""
    torch.manual_seed(0)
    interp = FeatureInterpreter([8, 8], num_classes=3, ch=16).eval()
    fs = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    assert torch.allclose(interp(fs), interp([fs[0] * 50 + 3, fs[1] * 0.2 - 1]), atol=1e-3)


def test_interpreter_rejects_other_channels():
    interp = FeatureInterpreter([8, 16], num_classes=3, ch=16)
    with pytest.raises(UserError, match=r"expects teacher channels \[8, 16\]"):
        interp([torch.randn(1, 8, 8, 8), torch.randn(1, 12, 4, 4)])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    interp = FeatureInterpreter([8, 16, 16], num_classes=4, ch=16).eval()
    save_interpreter(tmp_path / "interpreter.pt", interp, {"t": [50], "strides": [4, 8, 16]})
    loaded, meta = load_interpreter(tmp_path)
    fs = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    assert torch.equal(loaded(fs), interp(fs)) and meta["t"] == [50]
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with pytest.raises(UserError, match="train-interpreter"):
        load_interpreter(tmp_path / "nowhere")
