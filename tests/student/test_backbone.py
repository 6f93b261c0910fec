"""The backbone contract: every backbone the tests use (conftest.BACKBONES) gives C2..C5 at
strides 4..32 with the channels it reports, carries a regressor whose every parameter gets a
gradient, and exports to weights that timm loads strictly, with only its classifier untrained."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import dreamteacher as dt
from dreamteacher.student import Backbone, FeatureRegressor, Student
from tests.conftest import BACKBONES

# the modules pretraining does not train: the classifier head each family's Backbone prunes
UNTRAINED = {
    "resnet18": {"fc"},
    "resnet50": {"fc"},
    "convnext_tiny": {"head"},
    "test_efficientnet": {"conv_head", "bn2", "classifier"},
}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_contract(name, tmp_path):
    torch.manual_seed(0)
    bb = Backbone(name)
    assert bb.strides == [4, 8, 16, 32]
    teacher_channels = [48, 96, 128, 160]
    student = Student(bb, FeatureRegressor(bb.channels, teacher_channels, ch=64))
    x = torch.rand(2, 3, 64, 96)
    feats = bb(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == bb.channels
    preds, logits = student(x)
    assert logits is None  # no logit head unless asked for
    assert [tuple(p.shape) for p in preds] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(teacher_channels, (4, 8, 16, 32), strict=True)
    ]
    sum(p.mean() for p in preds).backward()
    # every parameter gets a gradient (DDP-safe: no unused parameters)
    assert all(p.grad is not None for p in student.parameters())

    # export: every key of timm's model, the pruned head restored at timm's initialisation
    final = {
        "backbone": name,
        "strides": bb.strides,
        "image_size": [64, 96],
        "backbone_state": bb.state_dict_for_export(),
    }
    torch.save(final, tmp_path / "final.pt")
    out = dt.export(tmp_path, tmp_path / "bb")
    sd = load_file(str(out / "model.safetensors"))
    model = timm.create_model(name)
    model.load_state_dict(sd, strict=True)
    trained = final["backbone_state"]
    assert all(torch.equal(sd[k], v) for k, v in trained.items())
    untrained = json.loads((out / "config.json").read_text())["untrained_keys"]
    fresh = {k for k in set(sd) - set(trained) if not k.endswith("num_batches_tracked")}
    assert set(untrained) == fresh and untrained
    assert {k.split(".")[0] for k in untrained} == UNTRAINED[name]
    clf = model.pretrained_cfg["classifier"]
    head = (clf if isinstance(clf, str) else clf[0]).split(".")[0] + "."
    classifier = {k for k in sd if k.startswith(head)}  # always among the untrained
    assert classifier and classifier <= set(untrained)
