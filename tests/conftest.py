"""Shared fixtures and helpers: a tiny generated mask folder, and a tiny teacher + pretrain run
made once per session with the real code paths (train-teacher and pretrain at 32 px); the
settings of those runs for tests that make their own; the list of backbones tested."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import dreamteacher as dt
from dreamteacher.data.synthetic import make_scenes

torch.set_num_threads(2)

# every timm backbone the tests use; tests/student/test_backbone.py is their contract
BACKBONES = ["resnet18", "resnet50", "convnext_tiny", "test_efficientnet"]

# the session's teacher_run: a tiny UNet, 4 steps at 32 px on the scenes' non-test images
TINY_TEACHER: dict[str, Any] = dict(
    splits=["train", "val"],
    image_size=[32],
    preset="tiny",
    steps=4,
    batch_size=4,
    save_every=2,
    warmup_steps=1,
    num_samples=4,
    sample_steps=2,
    log_every=1,
    device="cpu",
)


def tiny_pretrain(scenes: Path, teacher: Path, **kw: Any) -> dict[str, Any]:
    """pretrain's keyword arguments for a resnet18 on the scenes' non-test images, on the CPU,
    logging every step (`kw` adds or replaces settings)."""
    base = dict(
        data=str(scenes),
        teacher=str(teacher),
        splits=["train", "val"],
        backbone="resnet18",
        batch_size=4,
        warmup_epochs=0,
        log_every=1,
        device="cpu",
    )
    return base | kw


def read_log(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, one dict per record."""
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session", autouse=True)
def _drop_earlier_sessions(tmp_path_factory, request):
    """Remove earlier sessions' pytest-N folders before this session writes its own.

    pytest only removes them at exit, so a disk left full by earlier runs (up to 3 kept
    by default, ~11 GB each before the retention policy in pyproject.toml) fails this
    run. Folders with a .lock belong to a session still running and are kept; so is a
    --basetemp the user chose.
    """
    if request.config.option.basetemp is not None:
        return
    current = tmp_path_factory.getbasetemp()
    match = re.fullmatch(r"pytest-(\d+)", current.name)
    if match is None:
        return
    for old in current.parent.glob("pytest-*"):
        number = re.fullmatch(r"pytest-(\d+)", old.name)
        if number is None or int(number[1]) >= int(match[1]) or old.is_symlink():
            continue
        if not (old / ".lock").exists():
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """24 scenes, 32x32: 16 train, 8 test; 2 of the train ids are carved out as val, so the
    unlabeled commands read splits [train, val] (16 images), the labelled ones 14 train."""
    return make_scenes(
        tmp_path_factory.mktemp("scenes"),
        n=24,
        image_size=(32, 32),
        seed=1,
        splits={"train": 2 / 3, "test": 1 / 3},
    )


@pytest.fixture(scope="session")
def teacher_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    return dt.train_teacher(data=str(scenes), out=str(out), **TINY_TEACHER)


@pytest.fixture(scope="session")
def pretrain_run(scenes, teacher_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    return dt.pretrain(out=str(out), **tiny_pretrain(scenes, teacher_run, epochs=1))
