"""Export round trip: strict load into timm.create_model(name), identical features."""

import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file

import dreamteacher as dt
from dreamteacher.errors import UserError
from dreamteacher.student import Backbone


def test_export_strict_roundtrip(pretrain_run, tmp_path):
    bb_dir = dt.export(pretrain_run, tmp_path / "bb")
    cfg = json.loads((bb_dir / "config.json").read_text())
    assert cfg["architecture"] == "resnet18"
    assert set(cfg["untrained_keys"]) == {"fc.weight", "fc.bias"}
    sd = load_file(str(bb_dir / "model.safetensors"))
    assert not any(k.startswith(("module.", "backbone.", "model.")) for k in sd)

    model = timm.create_model("resnet18")
    model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key
    model.eval()

    final = torch.load(pretrain_run / "final.pt", weights_only=False)
    student = Backbone("resnet18")
    student.model.load_state_dict(final["backbone_state"], strict=True)
    student.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = student(x)
        theirs = model.forward_intermediates(
            (x - student.mean) / student.std, indices=[1, 2, 3, 4], intermediates_only=True
        )
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # and the weights really are the pretrained ones, not a fresh init
    fresh = timm.create_model("resnet18").state_dict()
    assert not torch.equal(fresh["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])

    # the same file through timm's own loader and through our helper
    via_timm = timm.create_model(
        "resnet18",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(bb_dir / "model.safetensors")},
    )
    assert torch.equal(via_timm.state_dict()["conv1.weight"], sd["conv1.weight"])
    helper = dt.load_backbone(bb_dir, num_classes=0)
    assert helper.num_classes == 0 and torch.equal(helper.conv1.weight, sd["conv1.weight"])


def test_export_without_pretrain(tmp_path):
    with pytest.raises(UserError, match="final.pt not found"):
        dt.export(tmp_path, tmp_path / "bb")


def test_export_of_a_corrupt_final(tmp_path):
    (tmp_path / "final.pt").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(UserError, match="final.pt is unreadable"):
        dt.export(tmp_path, tmp_path / "bb")


@pytest.mark.parametrize("key", ["strides", "image_size", "backbone_state"])
def test_export_of_a_final_missing_a_key(pretrain_run, tmp_path, key):
    state = torch.load(pretrain_run / "final.pt", weights_only=False)
    del state[key]
    torch.save(state, tmp_path / "final.pt")
    with pytest.raises(UserError, match=r"final\.pt is unreadable \(KeyError\)"):
        dt.export(tmp_path, tmp_path / "bb")
    assert not (tmp_path / "bb").exists()  # nothing half-written


def test_export_never_overwrites_a_folder_that_is_not_an_export(
    pretrain_run, teacher_run, tmp_path, capsys
):
    """Exporting into a teacher's unet/ would replace its config.json: refused without --force;
    a second export over an export is allowed and said so."""
    unet = tmp_path / "teacher" / "unet"
    shutil.copytree(teacher_run / "unet", unet)
    before = {p.name: p.read_bytes() for p in unet.iterdir()}
    with pytest.raises(
        UserError, match=r"unet is not empty and not an export .*config.json.*--force"
    ):
        dt.export(pretrain_run, unet)
    assert {p.name: p.read_bytes() for p in unet.iterdir()} == before
    bb = dt.export(pretrain_run, tmp_path / "bb")
    assert "replacing" not in capsys.readouterr().out
    first = (bb / "model.safetensors").read_bytes()
    dt.export(pretrain_run, bb)
    assert f"replacing the export in {bb}" in capsys.readouterr().out
    assert (bb / "model.safetensors").read_bytes() == first  # the same run, the same bytes
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("mine")
    dt.export(pretrain_run, notes, force=True)
    assert (notes / "readme.txt").read_text() == "mine" and (notes / "model.safetensors").exists()
