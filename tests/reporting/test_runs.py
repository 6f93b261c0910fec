"""The reports of tiny real runs: what each kind of run folder shows, the files behind its
figures (samples over training, feature PCA, confusion matrix, examples), a rebuild from the
folder alone, and the errors."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import torch
from PIL import Image

import dreamteacher as dt
from dreamteacher.cli import main
from dreamteacher.data import MaskFolder
from dreamteacher.losses import match_size, whiten
from dreamteacher.reporting import pca_rgb
from dreamteacher.reporting.runs import kind, throughput, wall_time
from dreamteacher.teachers import load_teacher


def images_of(html: str) -> list[tuple[int, int]]:
    """The sizes of the page's embedded PNGs (each must decode)."""
    data = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(d))).size for d in data]


def test_teacher_run_report_shows_samples_over_training_and_its_levels(teacher_run):
    # TINY_TEACHER: 4 steps, a checkpoint every 2: a grid at step 2, the last is samples.png
    grids = sorted(p.name for p in (teacher_run / "samples").iterdir())
    assert grids == ["step_00000002.png"]
    assert (
        Image.open(teacher_run / "samples" / grids[0]).size
        == Image.open(teacher_run / "samples.png").size
    )
    info = json.loads((teacher_run / "teacher.json").read_text())
    teacher = load_teacher(teacher_run)
    assert info["levels"] == {"strides": teacher.strides, "channels": teacher.channels}
    assert info["parameters"] == sum(p.numel() for p in teacher.unet.parameters())
    html = (teacher_run / "report.html").read_text()
    assert kind(teacher_run) == "train-teacher"
    assert "Samples over training" in html and "step 2" in html
    # loss, lr, throughput charts and the two sample grids
    assert len(images_of(html)) == 5


def test_pretrain_features_are_the_teachers_targets_and_the_students_predictions(
    pretrain_run, scenes
):
    z = np.load(pretrain_run / "features.npz")
    strides = list(z["strides"])
    assert strides == [4, 8, 16, 32]
    images = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).float() / 255  # B, 3, H, W
    assert images.shape == (4, 3, 32, 32)
    teacher = load_teacher(_teacher_of(pretrain_run))
    targets = teacher(images, [0, 1, 2, 3])
    for i, s in enumerate(strides):
        t_rgb, s_rgb = z[f"teacher_{i}"], z[f"student_{i}"]
        assert t_rgb.shape == s_rgb.shape == (4, 32 // s, 32 // s, 3)
        # recomputed from the saved images (uint8: the same within rounding of the input)
        like = torch.zeros(4, 1, 32 // s, 32 // s)
        (again,) = pca_rgb(whiten(match_size(targets[i].float(), like)))
        close = (again.int() - torch.from_numpy(t_rgb).int()).abs().le(8).float().mean()
        assert close > 0.9
        assert s_rgb.std() > 0  # the student's map is not blank
    html = (pretrain_run / "report.html").read_text()
    assert "Teacher and student features" in html and kind(pretrain_run) == "pretrain"
    assert "mse_l0" in html or "per-level terms" in html


def _teacher_of(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["teacher"]


def test_finetune_report_has_the_confusion_matrix_and_examples_of_the_split(finetune_run, scenes):
    m = json.loads((finetune_run / "metrics.json").read_text())
    cm = np.array(m["confusion"])
    folder = MaskFolder(str(scenes))
    test = folder.splits["test"]
    masks = [folder.load_mask(i) for i in test]
    labelled = sum(int((mk != folder.ignore_index).sum()) for mk in masks)
    assert cm.sum() == labelled  # every scored pixel counted once
    for c in range(folder.num_classes):  # row sums: the class's pixels
        assert cm[c].sum() == sum(int((mk == c).sum()) for mk in masks)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    for c, name in enumerate(folder.class_names):
        want = m["per_class_iou"][name]
        assert (want is None) == (union[c] == 0)
        if union[c]:
            assert abs(inter[c] / union[c] * 100 - want) < 1e-6
    z = np.load(finetune_run / "examples.npz")
    assert len(z["images"]) == 4 and z["images"].dtype == np.uint8
    assert np.array_equal(z["truth"], np.stack(masks[:4]))
    assert z["pred"].shape == z["truth"].shape and z["pred"].max() < folder.num_classes
    html = (finetune_run / "report.html").read_text()
    assert kind(finetune_run) == "finetune" and "confusion matrix" in html
    # IoU bars, confusion matrix, examples, loss and lr, throughput
    assert len(images_of(html)) == 6


def test_a_report_is_rebuilt_from_the_run_folder_alone(pretrain_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(pretrain_run, copy, ignore=shutil.ignore_patterns("*.pt", "report.html"))
    assert main(["report", str(copy), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'r.html'}"
    rebuilt = images_of((tmp_path / "r.html").read_text())
    assert rebuilt == images_of((pretrain_run / "report.html").read_text())


def test_report_off_and_errors(scenes, tmp_path, capsys):
    out = tmp_path / "ft"
    dt.finetune(
        data=str(scenes), out=str(out), backbone="resnet18", labels=4, steps=1, batch_size=4,
        image_size=[32], device="cpu", head_channels=16, warmup_steps=0, report=False,
    )  # fmt: skip
    assert (out / "metrics.json").exists() and not (out / "report.html").exists()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run or benchmark folder" in err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_wall_time_and_throughput_across_a_resume():
    records = [
        {"step": 10, "images_seen": 160, "time": 10.0},
        {"step": 20, "images_seen": 320, "time": 20.0},
        {"step": 30, "images_seen": 480, "time": 4.0},  # resumed at step 20: the clock restarts
        {"step": 40, "images_seen": 640, "time": 12.0},
    ]
    assert wall_time(records) == 20.0 + 12.0
    assert throughput(records) == ([20, 40], [16.0, 20.0])  # no rate across the restart
