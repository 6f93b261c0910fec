"""The smoke profile end to end on a tiny generated mask folder, then resumed and changed."""

import json
import re

import pytest

import dreamteacher as dt
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.reporting.runs import kind


@pytest.mark.slow
def test_smoke_profile_end_to_end_then_cached(tmp_path):
    data = make_scenes(
        tmp_path / "data", n=30, image_size=(32, 48), splits={"train": 0.6, "val": 0.1, "test": 0.3}
    )
    out = tmp_path / "bench"
    kw = {"profile": "smoke", "device": "cpu", "labels": [4, 100]}
    r = dt.benchmark(str(data), str(out), **kw)
    methods = ["scratch", "dreamteacher", "simclr", "mocov2", "byol", "densecl", "dt-gan"]
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
    teachers = set(re.findall(r'<a href="([^"]+)">teacher</a>', (out / "report.html").read_text()))
    # the dreamteacher rows' teacher and dt-gan's
    assert len(teachers) == 2 and all((out / t).exists() for t in teachers)
    stages = [c["stage"] for c in r["costs"]]
    # the teacher, 5 pretrainings, the GAN teacher and dt-gan, per N 4 teacher-side stages
    assert stages[0].startswith("teacher") and len(stages) == 1 + 5 + 2 + 2 * 4
    assert {"GAN teacher (train-teacher --kind gan)", "dt-gan pretraining"} <= set(stages)
    named = {"dreamteacher pretraining", "interpreter N4-seed0", "ddpm-seg N100-seed0"}
    assert named | {"dt-mix-N4-seed0 pretraining"} <= set(stages)
    assert all(c["images_seen"] > 0 for c in r["costs"])
    test_ids = set(json.loads((data / "splits.json").read_text())["test"])
    sub = json.loads((out / "subsets" / "N4_seed0.json").read_text())
    assert len(sub["ids"]) == 4 and not set(sub["ids"]) & test_ids
    # teacher, 5 pretrainings, GAN teacher and dt-gan, per N (interpreter, dt-mix, dt-label,
    # ddpm-seg), 36 evaluations
    assert r["cells_computed"] == 1 + 5 + 2 + 2 * 4 + 9 * 2 * 2

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
    assert changed["cells_computed"] == 9 * 2


def test_smoke_benchmark_on_a_standard_layout(tmp_path):
    """`--data KIND:PATH`: the benchmark reads a dataset in its own layout unchanged; its
    pretraining sees train + the carved val, never test."""
    from tests.data.test_layouts import make_pet

    make_pet(tmp_path / "pets")
    data = f"pet:{tmp_path / 'pets'}"
    kw = {"profile": "smoke", "device": "cpu", "methods": ["scratch", "simclr", "dt-gan"]}
    r = dt.benchmark(data, str(tmp_path / "bench"), **kw)
    assert r["complete"] and {x["method"] for x in r["runs"]} == {"scratch", "simclr", "dt-gan"}
    # dt-gan: a GAN teacher trained on the same images (no diffusion teacher), in the costs
    stages = [c["stage"] for c in r["costs"]]
    assert stages == ["simclr pretraining", "GAN teacher (train-teacher --kind gan)",
                      "dt-gan pretraining"]  # fmt: skip
    assert {x["labelled_images"] for x in r["runs"]} == {3}  # 4 trainval - 1 carved val
    cost = next(c for c in r["costs"] if c["stage"] == "simclr pretraining")
    assert cost["images_seen"] > 0
    cfg = next((tmp_path / "bench" / "cells").glob("pretrain-simclr-*/run/config.yaml"))
    text = cfg.read_text()
    assert f"data: {data}" in text and "- val" in text and "- test" not in text
    # the report: the plot, the tables, and a row per evaluation linking to its cells' reports
    html = (tmp_path / "bench" / "report.html").read_text()
    assert "miou_vs_labels" not in html and html.count("data:image/png;base64,") == 1
    assert "<th>method</th>" in html and "simclr pretraining" in html  # results + cost tables
    links = re.findall(r'<a href="([^"]+)">(evaluation|pretraining)</a>', html)
    assert len([x for x in links if x[1] == "evaluation"]) == len(r["runs"])
    assert len([x for x in links if x[1] == "pretraining"]) == len(
        [x for x in r["runs"] if x["method"] != "scratch"]
    )  # scratch has no pretraining cell
    for href, _ in links:
        cell_report = tmp_path / "bench" / href
        assert cell_report.exists() and kind(cell_report.parent) in (
            "finetune",
            "pretrain-baseline",
            "pretrain",
        )
    (gan,) = set(re.findall(r'<a href="([^"]+)">teacher</a>', html))  # dt-gan's teacher
    assert kind((tmp_path / "bench" / gan).parent) == "train-teacher"
