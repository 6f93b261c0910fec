"""The command line: each command's flags (generated from its config, config.FLAGS) and how
list flags share their tokens with key=value overrides."""

import subprocess
import sys

import pytest

from dreamteacher import cli
from dreamteacher.errors import UserError

COMMON = {"data", "out", "image_size", "batch_size", "seed", "device", "strict", "resume"}
COMMON |= {"save_every"}
# each command's flags, as generated from its config's fields named in config.FLAGS
FLAGS = {
    "train-teacher": COMMON | {"steps", "preset", "kind"},
    "pretrain": COMMON | {"epochs", "teacher", "t", "backbone", "mode", "interpreter"},
    "cache-features": COMMON | {"teacher", "t"},
    "finetune": COMMON | {"steps", "labels", "backbone", "weights"},
    "train-interpreter": COMMON | {"epochs", "labels", "teacher", "t"},
    "train-ddpm-seg": COMMON | {"steps", "labels", "teacher", "t"},
    "pretrain-baseline": COMMON | {"epochs", "backbone", "method"},
    "probe": COMMON | {"steps", "labels", "teacher", "t"},
    "inspect-teacher": {"teacher", "t", "image_size", "batch_size", "device"},
    "benchmark": {
        "data",
        "out",
        "profile",
        "labels",
        "backbone",
        "image_size",
        "device",
        "teacher",
    },
    "demo": {"out", "image_size", "labels", "backbone", "batch_size", "seed", "device"},
}


def test_every_command_has_its_flags():
    _, flags = cli.build_parser()
    assert {k: set(v) for k, v in flags.items()} == FLAGS
    assert set(cli.COMMANDS) == set(FLAGS) | {"export", "convert", "report"}


def test_list_flag_takes_the_leading_integers():
    args = cli.parse(["pretrain", "--image-size", "64", "80", "lr=1e-3", "--t", "50", "100"])
    kw = cli.flag_kwargs(args)
    assert kw == {"image_size": [64, 80], "t": [50, 100]}
    assert args.overrides == ["lr=1e-3"]


def test_overrides_anywhere_and_flags_typed():
    args = cli.parse(["finetune", "lr=2e-3", "--labels", "5", "steps=3", "--resume"])
    assert cli.flag_kwargs(args) == {"labels": 5, "resume": True}
    assert sorted(args.overrides) == ["lr=2e-3", "steps=3"]


def test_list_flag_without_integers_is_one_line():
    args = cli.parse(["pretrain", "--t", "fifty"])
    with pytest.raises(UserError, match="--t needs integers, got 'fifty'"):
        cli.flag_kwargs(args)


def test_unknown_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(["finetune", "--lables", "5"])
    assert e.value.code == 2 and "--lables" in capsys.readouterr().err


def test_help_and_argument_errors_import_no_numerical_library():
    """`--help` and a refused argument answer without importing torch, diffusers or timm."""
    code = (
        "import sys\n"
        "from dreamteacher.cli import main\n"
        "argvs = (['pretrain', '--help'], ['train-teacher', '--out', 'x'], ['convert', '-h'])\n"
        "for argv in argvs:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'timm', 'numpy') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr
    assert "--data is required" in p.stderr


def test_help_shows_each_flags_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train-teacher", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS optimizer steps (default: 2000)" in text
    assert "--image-size N [N ...] input size: one number (square) or H W (default: 64 64)" in text
    assert "--data DATA input: a folder of images, a mask folder" in text
    assert "or KIND:PATH, a standard dataset" in text and "(required)" in text
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the teacher's resolution)" in text and "(default: 50)" in text


def test_warnings_print_one_line_without_source(tmp_path):
    """The CLI prints a warning as `warning: ...` alone: no file path, no code line."""
    code = (
        "import warnings\n"
        "from dreamteacher import cli\n"
        "def command(**kw):\n"
        "    warnings.warn('skipped 1 unreadable input(s) under x: a.png (empty image)')\n"
        "cli._api = lambda name: command\n"
        "cli.check = lambda *a: None\n"
        "raise SystemExit(cli.main(['demo', '--out', 'somewhere']))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert p.returncode == 0
    assert p.stderr == "warning: skipped 1 unreadable input(s) under x: a.png (empty image)\n"
