"""The smoke profile end to end on a tiny generated mask folder, then resumed and changed."""

import json

import pytest

import dreamteacher as dt
from dreamteacher.data.synthetic import make_scenes


@pytest.mark.slow
def test_smoke_profile_end_to_end_then_cached(tmp_path):
    data = make_scenes(
        tmp_path / "data", n=30, image_size=(32, 48), splits={"train": 0.6, "val": 0.1, "test": 0.3}
    )
    out = tmp_path / "bench"
    kw = {"profile": "smoke", "device": "cpu", "labels": [4, 100]}
    r = dt.benchmark(str(data), str(out), **kw)
    methods = ["scratch", "dreamteacher", "simclr", "mocov2", "byol", "densecl"]
    methods += ["dt-mix", "dt-label"]  # distilled from each subset's interpreter
    side = ["interpreter", "ddpm-seg"]  # teacher-side: one row per N and seed
    assert r["complete"] and {(x["method"], x["protocol"], x["labels"]) for x in r["runs"]} == {
        (m, p, n) for m in methods for p in ("finetune", "frozen") for n in (4, 100)
    } | {(m, "teacher-side", n) for m in side for n in (4, 100)}
    assert all(0 <= x["miou"] <= 100 for x in r["runs"])
    assert {x["labelled_images"] for x in r["runs"]} == {4, 18}  # 100 > the 18 train images
    assert json.loads((out / "results.json").read_text()) == r
    md = (out / "results.md").read_text()
    assert "**finetune**" in md and "**frozen**" in md and "| densecl |" in md
    assert (out / "miou_vs_labels.png").stat().st_size > 5000
    stages = [c["stage"] for c in r["costs"]]
    assert stages[0].startswith("teacher") and len(stages) == 1 + 5 + 2 * 4
    named = {"dreamteacher pretraining", "interpreter N4-seed0", "ddpm-seg N100-seed0"}
    assert named | {"dt-mix-N4-seed0 pretraining"} <= set(stages)
    assert all(c["images_seen"] > 0 for c in r["costs"])
    test_ids = set(json.loads((data / "splits.json").read_text())["test"])
    sub = json.loads((out / "subsets" / "N4_seed0.json").read_text())
    assert len(sub["ids"]) == 4 and not set(sub["ids"]) & test_ids
    # teacher, 5 pretrainings, per N (interpreter, dt-mix, dt-label, ddpm-seg), 32 evaluations
    assert r["cells_computed"] == 1 + 5 + 2 * 4 + 8 * 2 * 2

    # an interrupted benchmark resumes: drop one finished cell, everything else is reused
    victim = next((out / "cells").glob("eval-byol-frozen-N4-*"))
    (victim / "cell.json").unlink()
    again = dt.benchmark(str(data), str(out), **kw)
    assert again["cells_computed"] == 1
    old = {(x["method"], x["protocol"], x["labels"]): x["miou"] for x in r["runs"]}
    assert all(
        old[(x["method"], x["protocol"], x["labels"])] == x["miou"]
        for x in again["runs"]
        if x["method"] != "byol"
    )

    # a changed frozen recipe recomputes the frozen evaluations only
    changed = dt.benchmark(str(data), str(out), frozen_steps=3, **kw)
    assert changed["cells_computed"] == 8 * 2


def test_smoke_benchmark_on_a_standard_layout(tmp_path):
    """`--data KIND:PATH`: the benchmark reads a dataset in its own layout unchanged; its
    pretraining sees train + the carved val, never test."""
    from tests.data.test_layouts import make_pet

    make_pet(tmp_path / "pets")
    data = f"pet:{tmp_path / 'pets'}"
    kw = {"profile": "smoke", "device": "cpu", "methods": ["scratch", "simclr"]}
    r = dt.benchmark(data, str(tmp_path / "bench"), **kw)
    assert r["complete"] and {x["method"] for x in r["runs"]} == {"scratch", "simclr"}
    assert {x["labelled_images"] for x in r["runs"]} == {3}  # 4 trainval - 1 carved val
    cost = next(c for c in r["costs"] if c["stage"] == "simclr pretraining")
    assert cost["images_seen"] > 0
    cfg = next((tmp_path / "bench" / "cells").glob("pretrain-simclr-*/run/config.yaml"))
    text = cfg.read_text()
    assert f"data: {data}" in text and "- val" in text and "- test" not in text
