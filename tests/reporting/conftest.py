"""A tiny finetune run for the report tests (the teacher and pretrain runs are the
session's, tests/conftest.py)."""

import pytest

import dreamteacher as dt


@pytest.fixture(scope="session")
def finetune_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "ft"
    dt.finetune(
        data=str(scenes), out=str(out), backbone="resnet18", labels=8, steps=4, batch_size=4,
        image_size=[32], device="cpu", log_every=1, head_channels=32, warmup_steps=1,
    )  # fmt: skip
    return out
