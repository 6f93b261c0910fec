"""Run files: progress in logs (plain lines, no carriage returns)."""

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
