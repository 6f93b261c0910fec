"""Run files: progress in logs (plain lines, no carriage returns), the TensorBoard logger."""

import sys

import pytest

from dreamteacher import runfiles
from dreamteacher.runfiles import LineProgress, progress, track


def test_progress_in_a_log_is_plain_lines(capsys, monkeypatch):
    """stderr is not a terminal here (captured): no bar, no \\r; a line every interval and one
    at the end with the count and the last postfix."""
    bar = progress(10, 2, "pretrain")
    assert isinstance(bar, LineProgress)
    monkeypatch.setattr(runfiles, "LOG_EVERY_S", 1e-9)
    with LineProgress(6, 0, "train") as bar:
        for _ in range(6):
            bar.update(1)
            bar.set_postfix(loss="0.5000")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 6  # one per update, the end not repeated
    assert lines[0].startswith("train: 1/6, ") and lines[-1].startswith("train: 6/6, ")
    assert lines[-1].endswith(", loss=0.5000")
    monkeypatch.setattr(runfiles, "LOG_EVERY_S", 30.0)
    assert list(track(range(3), "evaluate")) == [0, 1, 2]
    assert capsys.readouterr().err.startswith("evaluate: 3/3, ")  # the end line only


def _board(run, kind: str, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return getattr(acc, kind)(tag)


def test_tensorboard_events_repeat_the_log_and_are_rewound_on_resume(
    scenes, teacher_run, tmp_path, capsys
):
    """logger=tensorboard: every number of metrics.jsonl as a scalar at its step; a resumed
    run drops the events logged after its checkpoint, as it does the log lines."""
    import dreamteacher as dt
    from tests.conftest import read_log, tiny_pretrain

    kw = tiny_pretrain(scenes, teacher_run, epochs=2, logger="tensorboard")
    run = dt.pretrain(out=str(tmp_path / "b"), save_every=3, keep_checkpoints=5, **kw)
    assert "img_s=" in capsys.readouterr().err  # the progress shows images per second
    first = {e.step: e.value for e in _board(run, "Scalars", "loss")}
    assert sorted(first) == list(range(1, 9))
    for p in sorted((run / "checkpoints").glob("step_*.pt"))[-2:]:  # back to step 3
        p.unlink()
    (run / "final.pt").unlink()
    dt.pretrain(out=str(run), save_every=3, keep_checkpoints=5, resume=True, **kw)
    log = read_log(run)
    loss = _board(run, "Scalars", "loss")
    assert [e.step for e in loss] == [r["step"] for r in log] == list(range(1, 9))
    for e, r in zip(loss, log, strict=True):
        assert e.value == pytest.approx(r["loss"], rel=1e-6)
    assert [e.value for e in _board(run, "Scalars", "lr")] == pytest.approx([r["lr"] for r in log])
    assert {e.step: e.value for e in loss if e.step <= 3} == pytest.approx(
        {k: v for k, v in first.items() if k <= 3}
    )
    (features,) = _board(run, "Images", "features")  # the resumed run's; the first's dropped
    assert features.step == 8 and features.width > 200


def test_segmentation_examples_reach_tensorboard(scenes, tmp_path):
    import dreamteacher as dt

    run = tmp_path / "ft"
    dt.finetune(
        data=str(scenes), out=str(run), backbone="resnet18", labels=4, steps=2, batch_size=4,
        image_size=[32], device="cpu", head_channels=16, warmup_steps=0, logger="tensorboard",
    )  # fmt: skip
    (image,) = _board(run, "Images", "examples")
    assert image.step == 2 and image.height > image.width  # a row per image, 4 rows of 3


def test_teacher_samples_reach_tensorboard(scenes, tmp_path):
    import dreamteacher as dt
    from tests.conftest import TINY_TEACHER

    run = dt.train_teacher(
        data=str(scenes), out=str(tmp_path / "t"), **(TINY_TEACHER | {"logger": "tensorboard"})
    )
    # a grid at the checkpoint of step 2, and the final one
    at_2, image = _board(run, "Images", "samples")
    assert (at_2.step, image.step) == (2, TINY_TEACHER["steps"])
    # a 2 x 2 grid of 32 px samples with torchvision's 2 px padding, as samples.png
    assert (image.width, image.height) == (70, 70)
    assert len(_board(run, "Scalars", "loss")) == TINY_TEACHER["steps"]


def test_logger_errors(tmp_path, monkeypatch):
    from dreamteacher.config import PretrainConfig
    from dreamteacher.errors import UserError
    from dreamteacher.runfiles import Run

    with pytest.raises(UserError, match="unknown logger 'wandb'; choose one of jsonl, tensorb"):
        Run(tmp_path / "a", PretrainConfig(logger="wandb"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(UserError, match="needs the tensorboard package: pip install"):
        Run(tmp_path / "b", PretrainConfig(logger="tensorboard"))
    assert not (tmp_path / "b").exists()  # refused before anything is written
    Run(tmp_path / "c", PretrainConfig())  # jsonl needs nothing more
