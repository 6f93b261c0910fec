"""Labelled subsets, cached cells and the benchmark's config."""

import json
import shutil

import pytest

from dreamteacher.benchmarking.cells import Cells, cell_key
from dreamteacher.benchmarking.config import build_benchmark_config
from dreamteacher.benchmarking.run import labelled_subsets
from dreamteacher.data import MaskFolder
from dreamteacher.errors import UserError


def test_subsets_are_deterministic_and_disjoint_from_test(scenes):
    folder = MaskFolder(scenes)
    a = labelled_subsets(folder, [3, 5, 1000], [0, 1])
    b = labelled_subsets(folder, [3, 5, 1000], [0, 1])
    assert a == b
    train, test = set(folder.splits["train"]), set(folder.splits["test"])
    for (n, _), ids in a.items():
        assert len(ids) == min(n, len(train)) and set(ids) <= train and not set(ids) & test
    assert a[(3, 0)] != a[(3, 1)]
    assert set(a[(1000, 0)]) == train  # N beyond the split = all of it


def test_overlapping_splits_are_refused(scenes, tmp_path):
    d = tmp_path / "seg"
    shutil.copytree(scenes, d)
    splits = json.loads((d / "splits.json").read_text())
    splits["test"].append(splits["train"][0])
    (d / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(UserError, match="both train and the evaluation split"):
        labelled_subsets(MaskFolder(d), [2], [0])


def test_cells_are_cached_and_keyed_by_their_settings(tmp_path):
    cells, calls = Cells(tmp_path), []

    def fn(d):
        calls.append(d)
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "x.pt").write_text("x")
        return {"miou": 1.5}

    r1 = cells.get("eval", {"a": 1, "b": [1, 2]}, fn, cleanup=["checkpoints"])
    r2 = Cells(tmp_path).get("eval", {"b": [1, 2], "a": 1}, fn)  # same settings, any order
    assert len(calls) == 1 and r1 == r2 and r1["miou"] == 1.5
    assert not (calls[0] / "checkpoints").exists()
    cells.get("eval", {"a": 2, "b": [1, 2]}, fn)
    assert len(calls) == 2 and calls[1] != calls[0]
    assert cell_key({"a": 1}) != cell_key({"a": 1.5})


def test_config_precedence_and_errors(tmp_path):
    cfg = build_benchmark_config("smoke")
    assert cfg.image_size == [32, 48] and cfg.seeds == [0]
    f = tmp_path / "b.yaml"
    f.write_text("finetune_steps: 7\nseeds: [3]\n")
    cfg = build_benchmark_config("smoke", f, ["seeds=[4,5]"], labels=[2])
    assert (cfg.finetune_steps, cfg.seeds, cfg.labels) == (7, [4, 5], [2])
    with pytest.raises(UserError, match="unknown profile 'fast'"):
        build_benchmark_config("fast")
    with pytest.raises(UserError, match="unknown method 'mae'"):
        build_benchmark_config("smoke", overrides=["methods=[scratch,mae]"])
    with pytest.raises(UserError, match="unknown config key 'epochs'"):
        build_benchmark_config("smoke", overrides=["epochs=3"])


def test_cli_reports_a_bad_profile_in_one_line(tmp_path, capsys):
    from dreamteacher.cli import main

    rc = main(["benchmark", "--profile", "fast", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("dreamteacher benchmark: error: unknown profile 'fast'")
