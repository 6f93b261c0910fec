import json

import pytest
import torch

import dreamteacher as dt
from dreamteacher.engine.finetune import build_segmenter
from dreamteacher.errors import UserError


@pytest.fixture(scope="module")
def exported(pretrain_run, tmp_path_factory):
    return dt.export(pretrain_run, tmp_path_factory.mktemp("bb") / "bb")


def test_weights_are_loaded_into_the_segmenter(exported, pretrain_run):
    seg = build_segmenter("resnet18", str(exported), num_classes=5, ch=32)
    final = torch.load(pretrain_run / "final.pt", weights_only=False)["backbone_state"]
    got = seg.backbone.model.state_dict()
    assert all(torch.equal(got[k], final[k]) for k in got)
    scratch = build_segmenter("resnet18", "scratch", num_classes=5, ch=32)
    assert not torch.equal(scratch.backbone.model.conv1.weight, got["conv1.weight"])


def test_backbone_mismatch_is_a_clear_error(exported):
    with pytest.raises(UserError, match="holds a resnet18 but --backbone is resnet50"):
        build_segmenter("resnet50", str(exported), num_classes=5)


def test_finetune_metrics_and_label_subset(scenes, tmp_path):
    m = dt.finetune(
        data=str(scenes),
        out=str(tmp_path / "ft"),
        backbone="resnet18",
        weights="scratch",
        labels=3,
        seed=4,
        image_size=[32],
        steps=2,
        batch_size=2,
        head_channels=32,
        device="cpu",
    )
    saved = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert saved == m and m["labels"] == 3 and m["split"] == "test"
    ious = [v for v in m["per_class_iou"].values() if v is not None]
    assert m["miou"] == pytest.approx(sum(ious) / len(ious))
    ids = json.loads((tmp_path / "ft" / "labeled_ids.json").read_text())["ids"]
    test_ids = json.loads((scenes / "splits.json").read_text())["test"]
    assert len(ids) == 3 and not set(ids) & set(test_ids)


def test_evaluation_with_images_of_different_sizes(scenes, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    d = tmp_path / "seg"
    shutil.copytree(scenes, d)
    test_ids = json.loads((d / "splits.json").read_text())["test"]
    for i in test_ids[:2]:  # two test images (and masks) of another size
        Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(d / "images" / f"{i}.png")
        Image.fromarray(np.zeros((24, 40), np.uint8)).save(d / "masks" / f"{i}.png")
    (d / "images" / f"{test_ids[2]}.png").write_bytes(b"")  # one unreadable: skipped, counted
    m = dt.finetune(
        data=str(d),
        out=str(tmp_path / "ft"),
        backbone="resnet18",
        steps=1,
        batch_size=2,
        image_size=[32],
        head_channels=32,
        device="cpu",
    )
    assert m["split"] == "test" and 0 <= m["miou"] <= 100
    assert m["eval_images"] == len(test_ids) - 1 and m["eval_images_skipped"] == 1


def test_frozen_protocol_trains_the_head_only(exported, scenes, tmp_path):
    """freeze_backbone: backbone weights and BatchNorm statistics stay as exported; the head
    changes."""
    dt.finetune(
        data=str(scenes),
        out=str(tmp_path / "fz"),
        backbone="resnet18",
        weights=str(exported),
        labels=4,
        image_size=[32],
        steps=3,
        batch_size=2,
        head_channels=32,
        freeze_backbone=True,
        device="cpu",
    )
    trained = torch.load(tmp_path / "fz" / "model.pt", weights_only=False)
    start = build_segmenter("resnet18", str(exported), num_classes=5, ch=32).state_dict()
    bb = [k for k in start if k.startswith("backbone.")]
    head = [k for k in start if k.startswith("head.") and start[k].is_floating_point()]
    assert any("running_mean" in k for k in bb)
    assert all(torch.equal(trained[k], start[k]) for k in bb)
    assert any(not torch.equal(trained[k], start[k]) for k in head)
    metrics = json.loads((tmp_path / "fz" / "metrics.json").read_text())
    assert metrics["freeze_backbone"] is True


def test_evaluation_with_loader_workers_counts_the_same_pixels(scenes):
    """Loader processes (what a GPU run uses) change nothing in the confusion matrix: it is
    the one counted image by image in the main process, over every labelled pixel."""
    from dreamteacher.data import MaskFolder
    from dreamteacher.engine.supervised import evaluate

    folder = MaskFolder(str(scenes))
    data = folder.dataset(folder.splits["test"], [32, 32], full_res_masks=True)
    torch.manual_seed(0)
    seg = build_segmenter("resnet18", "scratch", num_classes=folder.num_classes, ch=32)
    args = (seg, data, folder.num_classes, folder.ignore_index, torch.device("cpu"))
    one_by_one = evaluate(*args, batch_size=1)
    assert torch.equal(evaluate(*args, batch_size=3, num_workers=2), one_by_one)
    labelled = sum(int((data[i][1] != folder.ignore_index).sum()) for i in range(len(data)))
    assert int(one_by_one.sum()) == labelled > 0
