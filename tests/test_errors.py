"""Bad input: one clear line naming the file and the fix, exit code 2, no traceback."""

import shutil
import subprocess
import sys

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
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / f"a{i}.png")
        size = (32, 32) if i != 1 else (16, 32)
        Image.fromarray(np.zeros(size, np.uint8)).save(tmp_path / "masks" / f"a{i}.png")
    code, err = run_cli(
        [
            "finetune",
            "--data",
            str(tmp_path),
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
    without the file the teacher loads with no recorded resolution."""
    run = tmp_path / "teacher"
    shutil.copytree(teacher_run, run)
    assert load_teacher(str(run)).image_size == [32, 32]
    (run / "teacher.json").write_text('{"image_size": [32,')
    with pytest.raises(UserError, match=r"cannot read .*teacher\.json \(JSONDecodeError\)"):
        load_teacher(str(run))
    (run / "teacher.json").unlink()
    assert load_teacher(str(run)).image_size is None
