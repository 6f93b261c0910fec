"""End to end through the real CLI (subprocesses): train-teacher -> pretrain -> export ->
finetune on a generated mask folder at 32 px. About a minute on 2 CPU cores."""

import json
import subprocess
import sys

import yaml
from diffusers import UNet2DModel
from PIL import Image

from dreamteacher.data.synthetic import CLASSES, make_scenes
from tests.conftest import read_log


def cli(*args):
    p = subprocess.run(
        [sys.executable, "-m", "dreamteacher", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_cli_end_to_end(tmp_path):
    data = make_scenes(tmp_path / "data", n=40, image_size=(32, 32), seed=3)
    runs = tmp_path / "runs"
    cli(
        "train-teacher",
        "--data",
        data / "images",
        "--out",
        runs / "teacher",
        "--image-size",
        32,
        "--preset",
        "tiny",
        "--steps",
        6,
        "--batch-size",
        4,
        "--save-every",
        3,
        "num_samples=4",
        "sample_steps=3",
        "log_every=1",
    )
    cli(
        "pretrain",
        "--data",
        data / "images",
        "--teacher",
        runs / "teacher",
        "--backbone",
        "resnet18",
        "--out",
        runs / "pretrain",
        "--epochs",
        1,
        "--batch-size",
        8,
        "--t",
        50,
        100,
        "warmup_epochs=0",
        "log_every=1",
    )
    cli("export", runs / "pretrain", "--out", runs / "bb")
    p = cli(
        "finetune",
        "--data",
        data,
        "--backbone",
        "resnet18",
        "--weights",
        runs / "bb",
        "--out",
        runs / "ft",
        "--labels",
        5,
        "--seed",
        2,
        "--steps",
        4,
        "--batch-size",
        4,
        "--image-size",
        32,
        "log_every=1",
    )

    # teacher: diffusers format + sample grid (2x2 of 32 px with torchvision's 2 px padding)
    UNet2DModel.from_pretrained(runs / "teacher" / "unet")
    assert Image.open(runs / "teacher" / "samples.png").size == (70, 70)
    # every run: resolved config + metrics log
    for name, key in (("teacher", "loss"), ("pretrain", "at_l3"), ("ft", "loss")):
        cfg = yaml.safe_load((runs / name / "config.yaml").read_text())
        assert cfg["out"] == str(runs / name)
        lines = read_log(runs / name)
        assert lines and key in lines[-1]
    pre_cfg = yaml.safe_load((runs / "pretrain" / "config.yaml").read_text())
    assert pre_cfg["t"] == [50, 100] and pre_cfg["image_size"] == [32, 32]
    pre_log = read_log(runs / "pretrain")
    assert {"mse", "at", "mse_l0", "at_l0", "loss"} <= set(pre_log[0])
    # finetune result
    m = json.loads((runs / "ft" / "metrics.json").read_text())
    assert m["labels"] == 5 and m["split"] == "test"
    assert 0 <= m["miou"] <= 100
    assert set(m["per_class_iou"]) == set(CLASSES)
    assert "mIoU" in p.stdout
    picked = json.loads((runs / "ft" / "labeled_ids.json").read_text())["ids"]
    assert len(picked) == 5 and set(picked) <= set(
        json.loads((data / "splits.json").read_text())["train"]
    )
