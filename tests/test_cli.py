"""The command line: each command's flags (generated from its config, config.FLAGS) and how
list flags share their tokens with key=value overrides."""

import pytest

from dreamteacher import cli
from dreamteacher.errors import UserError

COMMON = {"data", "out", "image_size", "batch_size", "seed", "device", "strict", "resume"}
COMMON |= {"save_every"}
# each command's flags, as generated from its config's fields named in config.FLAGS
FLAGS = {
    "train-teacher": COMMON | {"steps", "preset"},
    "pretrain": COMMON | {"epochs", "teacher", "t", "backbone", "mode", "interpreter"},
    "cache-features": COMMON | {"teacher", "t"},
    "finetune": COMMON | {"steps", "labels", "backbone", "weights"},
    "train-interpreter": COMMON | {"epochs", "labels", "teacher", "t"},
    "train-ddpm-seg": COMMON | {"steps", "labels", "teacher", "t"},
    "pretrain-baseline": COMMON | {"epochs", "backbone", "method"},
    "benchmark": {"data", "out", "profile", "labels", "backbone", "image_size", "device"},
    "demo": {"out", "image_size", "labels", "backbone", "batch_size", "seed", "device"},
}


def test_every_command_has_its_flags():
    _, flags = cli.build_parser()
    assert {k: set(v) for k, v in flags.items()} == FLAGS
    assert set(cli.COMMANDS) == set(FLAGS) | {"export"}


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
