"""Bad input: one clear line naming the file and the fix, exit code 2, no traceback."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamteacher.cli import main
from dreamteacher.errors import UserError
from dreamteacher.teachers import load_teacher


def run_cli(args, capsys):
    code = main(args)
    lines = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in x for x in lines)
    # progress bars may have started; the error itself is exactly one line
    err = [x for x in lines if "error:" in x]
    assert all(x.startswith("dreamteacher ") for x in err), err
    return code, err


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(
        ["train-teacher", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and len(err) == 1
    assert "empty" in err[0] and str(tmp_path / "empty") in err[0]
    assert not (tmp_path / "r").exists()  # nothing written before the data was checked


def test_folder_without_images(tmp_path, capsys):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "notes.txt").write_text("hi")
    code, err = run_cli(["pretrain", "--data", str(d), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1
    code, err = run_cli(["train-teacher", "--data", str(d), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and "has no image files" in err[0] and "jpg" in err[0]


def test_mask_size_mismatch(tmp_path, capsys):
    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(seg / "images" / f"a{i}.png")
        size = (32, 32) if i != 1 else (16, 32)
        Image.fromarray(np.zeros(size, np.uint8)).save(seg / "masks" / f"a{i}.png")
    code, err = run_cli(
        [
            "finetune",
            "--data",
            str(seg),
            "--backbone",
            "resnet18",
            "--out",
            str(tmp_path / "r"),
            "--image-size",
            "32",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1
    assert "a1.png" in err[0] and "32x16" in err[0] and "resize the mask" in err[0]


def test_unknown_config_key_and_backbone(tmp_path, capsys, scenes):
    code, err = run_cli(
        ["finetune", "--data", str(scenes), "--out", str(tmp_path / "r"), "learning_rate=1"], capsys
    )
    assert code == 2 and len(err) == 1 and "unknown config key 'learning_rate'" in err[0]
    code, err = run_cli(
        [
            "finetune",
            "--data",
            str(scenes),
            "--out",
            str(tmp_path / "r2"),
            "--backbone",
            "resnet_99",
            "--image-size",
            "32",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "unknown backbone 'resnet_99'" in err[0]


def test_corrupt_image_names_the_file(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "ok.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, err = run_cli(
        [
            "train-teacher",
            "--strict",
            "--data",
            str(d),
            "--out",
            str(tmp_path / "r"),
            "--image-size",
            "32",
            "--steps",
            "2",
            "--batch-size",
            "2",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "broken.jpg" in err[0]


def test_no_traceback_from_the_console_entry(tmp_path):
    """The installed `python -m dreamteacher` path prints one line, not a traceback."""
    (tmp_path / "e").mkdir()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamteacher",
            "train-teacher",
            "--data",
            str(tmp_path / "e"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_existing_run_is_not_overwritten(teacher_run, scenes, capsys):
    before = sorted(p.name for p in (teacher_run / "checkpoints").iterdir())
    code, err = run_cli(
        [
            "train-teacher",
            "--data",
            str(scenes),
            "--out",
            str(teacher_run),
            "--image-size",
            "32",
            "splits=[train,val]",
        ],
        capsys,
    )
    assert code == 2 and "--resume" in err[0]
    assert sorted(p.name for p in (teacher_run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("flag", [["--device", "tpu"]])
def test_bad_device(tmp_path, capsys, scenes, flag):
    code, err = run_cli(
        [
            "finetune",
            "--data",
            str(scenes),
            "--out",
            str(tmp_path / "r"),
            "--image-size",
            "32",
            *flag,
        ],
        capsys,
    )
    assert code == 2 and "--device tpu" in err[0]


def test_bad_demo_setting(capsys, tmp_path):
    # the demo's settings are checked by the code that checks every command's config
    code, err = run_cli(["demo", "--out", str(tmp_path / "d"), "image_size=big"], capsys)
    assert code == 2 and "config key 'image_size' must be int, got 'big'" in err[0]
    code, err = run_cli(["demo", "--out", str(tmp_path / "d"), "teacher_stepz=3"], capsys)
    assert code == 2 and "unknown config key 'teacher_stepz'" in err[0]
    assert "teacher_steps" in err[0]  # the valid keys are listed
    assert not (tmp_path / "d").exists()


def test_unreadable_teacher_json_is_one_line(teacher_run, tmp_path):
    """A train-teacher run whose teacher.json is damaged: loading names the file and the fix;
    without the file the resolution comes from the UNet's sample_size."""
    run = tmp_path / "teacher"
    shutil.copytree(teacher_run, run)
    assert load_teacher(str(run)).image_size == [32, 32]
    (run / "teacher.json").write_text('{"image_size": [32,')
    with pytest.raises(UserError, match=r"cannot read .*teacher\.json \(JSONDecodeError\)"):
        load_teacher(str(run))
    (run / "teacher.json").unlink()
    assert load_teacher(str(run)).image_size == [32, 32]


# (command and arguments, a part of the one-line message). DATA is the scene mask folder,
# OUT a fresh folder, FILE an existing file, TEACHER the tiny teacher run.
BAD_INPUT = [
    (["train-teacher", "--out", "OUT"], "--data is required; pass --data PATH"),
    (["train-teacher", "--data", "DATA"], "--out is required"),
    (["pretrain", "--data", "DATA", "--out", "OUT"], "--teacher is required"),
    (["finetune", "--data", "DATA", "--out", "DATA/run"], "--out DATA/run is inside --data DATA"),
    (["train-teacher", "--data", "DATA", "--out", "DATA"], "--out DATA is inside --data DATA"),
    (["pretrain-baseline", "--data", "OUT/imgs", "--out", "OUT"], "--data OUT/imgs is inside"),
    (
        ["pretrain", "--data", "DATA", "--teacher", "TEACHER", "--out", "TEACHER/x"],
        "inside --teacher",
    ),
    (
        ["train-teacher", "--data", "DATA", "--out", "OUT", "lr=-1"],
        "'lr' must be positive, got -1.0",
    ),
    (["train-teacher", "--data", "DATA", "--out", "OUT", "lr=nan"], "'lr' is nan; give a finite"),
    (
        ["finetune", "--data", "DATA", "--out", "OUT", "--batch-size", "0"],
        "'batch_size' must be pos",
    ),
    (["train-teacher", "--data", "DATA", "--out", "OUT", "--save-every", "0"], "'save_every' must"),
    (
        ["train-teacher", "--data", "DATA", "--out", "OUT", "--steps", "0"],
        "'steps' must be positive",
    ),
    (["train-teacher", "--data", "DATA", "--out", "OUT", "--steps", "-5"], "got -5"),
    (
        ["pretrain-baseline", "--data", "DATA", "--out", "OUT", "betas=[0.9,1.5]"],
        "in [0, 1), got 1.5",
    ),
    (["finetune", "--data", "DATA", "--out", "OUT", "weight_decay=-0.1"], "zero or more, got -0.1"),
    (["benchmark", "--data", "DATA", "--out", "OUT", "finetune_lr=inf"], "'finetune_lr' is inf"),
    (["demo", "--out", "OUT", "teacher_steps=0"], "'teacher_steps' must be positive"),
    (["train-teacher", "--data", "DATA", "--out", "FILE"], "--out FILE is an existing file"),
    (["train-teacher", "--data", "DATA", "--out", "FILE/run"], "FILE is a file, not a folder"),
    (
        ["finetune", "--data", "DATA", "--out", "OUT", "--labels", "500", "--image-size", "32"],
        "labels=500 asks for more than the 14 train images; use 14 or fewer",
    ),
    (["benchmark", "--out", "OUT"], "--data is required; pass --data PATH, the input: a folder"),
    (["finetune", "--out", "OUT"], "or KIND:PATH, a standard dataset as downloaded (KIND: voc,"),
    (["finetune", "--data", "cityscapes:DATA", "--out", "OUT"], "no leftImg8bit under DATA"),
    (["finetune", "--data", "kitti:DATA/x", "--out", "OUT"], "unknown dataset kind 'kitti'"),
    (["train-teacher", "--data", "voc:DATA", "--out", "OUT"], "no VOCdevkit/ under DATA"),
    (["convert", "pet:DATA", "--out", "OUT"], "no oxford-iiit-pet/ under DATA"),
    (["convert", "DATA", "--out", "DATA/x"], "--out DATA/x is inside --data DATA"),
    (["convert", "camvid:DATA", "--out", "OUT", "--size", "0"], "must be one or two positive"),
    (["export", "TEACHER", "--out", "FILE"], "--out FILE is an existing file"),
    (["export", "TEACHER", "--out", "DATA"], "--out DATA is not empty and not an export"),
]


@pytest.mark.parametrize(
    "args, expected", BAD_INPUT, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_INPUT]
)
def test_bad_input_is_one_line_and_writes_nothing(
    args, expected, scenes, teacher_run, tmp_path, capsys
):
    paths = {
        "DATA": str(scenes),
        "OUT": str(tmp_path / "out"),
        "FILE": str(tmp_path / "notes.txt"),
        "TEACHER": str(teacher_run),
    }
    (tmp_path / "notes.txt").write_text("not a folder")
    fill = lambda a: re.sub(r"\b(DATA|OUT|FILE|TEACHER)\b", lambda m: paths[m[1]], a)
    before = (
        sorted(p.name for p in scenes.rglob("*")),
        sorted(p.name for p in teacher_run.rglob("*")),
    )
    code, err = run_cli([fill(a) for a in args], capsys)
    assert code == 2 and len(err) == 1, err
    assert fill(expected) in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written
    after = (
        sorted(p.name for p in scenes.rglob("*")),
        sorted(p.name for p in teacher_run.rglob("*")),
    )
    assert after == before and (tmp_path / "notes.txt").read_text() == "not a folder"


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--epoch", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --epoch" in capsys.readouterr().err


def test_unwritable_out_parent_is_one_line(tmp_path, monkeypatch, capsys, scenes):
    """(Simulated: the tests may run as root, who may write anywhere.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real(p, mode))
    code, err = run_cli(
        ["train-teacher", "--data", str(scenes), "--out", str(locked / "run")], capsys
    )
    assert code == 2 and f"cannot write in {locked} (permission denied)" in err[0]


def test_os_errors_past_the_checks_are_one_line(tmp_path, monkeypatch, capsys, scenes):
    """An OS error the checks could not foresee (here the run folder's creation failing with
    EACCES) is one line naming the path."""
    real = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.name == "run":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    args = ["finetune", "--data", str(scenes), "--out", str(tmp_path / "run"), "--steps", "1"]
    code, err = run_cli(args + ["--backbone", "resnet18", "--image-size", "32"], capsys)
    assert code == 2 and len(err) == 1
    assert f"cannot create --out {tmp_path / 'run'} (Permission denied)" in err[0]
