"""Labelled subsets, cached cells and the benchmark's config."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dreamteacher.benchmarking.cells import Cells, cell_key
from dreamteacher.benchmarking.config import build_benchmark_config
from dreamteacher.benchmarking.run import labelled_subsets
from dreamteacher.data import MaskFolder
from dreamteacher.defaults import SSL_METHODS
from dreamteacher.errors import UserError


def test_subsets_are_deterministic_and_disjoint_from_test(scenes, capsys):
    folder = MaskFolder(scenes)
    a = labelled_subsets(folder, [3, 5, 1000], [0, 1])
    said = capsys.readouterr().out  # N beyond the split is said, once per N
    assert said.count("N = 1000 is more than the 14 train images") == 1 and "N = 5" not in said
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
    with pytest.raises(UserError, match="in both train and test; make the splits disjoint"):
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
    with pytest.raises(UserError, match="--data is required; pass --data PATH, the input: a"):
        build_benchmark_config("smoke")  # no default dataset: a mask folder or KIND:PATH
    cfg = build_benchmark_config("smoke", data="seg")
    assert cfg.image_size == [32, 48] and cfg.seeds == [0]
    f = tmp_path / "b.yaml"
    f.write_text("finetune_steps: 7\nseeds: [3]\n")
    cfg = build_benchmark_config("smoke", f, ["seeds=[4,5]", "data=seg"], labels=[2])
    assert (cfg.finetune_steps, cfg.seeds, cfg.labels) == (7, [4, 5], [2])
    with pytest.raises(UserError, match="unknown profile 'fast'"):
        build_benchmark_config("fast")
    with pytest.raises(UserError, match="unknown method 'mae'"):
        build_benchmark_config("smoke", overrides=["data=seg", "methods=[scratch,mae]"])
    with pytest.raises(UserError, match="unknown config key 'epochs'"):
        build_benchmark_config("smoke", overrides=["data=seg", "epochs=3"])
    with pytest.raises(UserError, match="unknown dt_logit_head 'fpn'; choose one of uper, light"):
        build_benchmark_config("smoke", overrides=["data=seg", "dt_logit_head=fpn"])
    with pytest.raises(UserError, match="unknown eval_split 'train'; choose val"):
        build_benchmark_config("smoke", overrides=["data=seg", "eval_split=train"])
    with pytest.raises(UserError, match="unknown dt_at_source 'stages'; choose one of regressor"):
        build_benchmark_config("smoke", overrides=["data=seg", "dt_at_source=stages"])
    # every SSL method has its own lr setting (None: ssl_lr), checked like every number
    cfg = build_benchmark_config("smoke", overrides=["data=seg", "simclr_lr=1e-3"])
    assert cfg.simclr_lr == 1e-3 and cfg.mocov2_lr == 7e-4  # MoCo v2's default, chosen on val
    cfg = build_benchmark_config("smoke", overrides=["data=seg", "mocov2_lr=null"])
    assert cfg.mocov2_lr is None and all(
        getattr(cfg, f"{m}_lr") is None for m in SSL_METHODS if m != "mocov2"
    )
    with pytest.raises(UserError, match="'byol_lr' must be positive"):
        build_benchmark_config("smoke", overrides=["data=seg", "byol_lr=0"])


def test_cli_reports_a_bad_profile_in_one_line(tmp_path, capsys):
    from dreamteacher.cli import main

    rc = main(["benchmark", "--profile", "fast", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("dreamteacher benchmark: error: unknown profile 'fast'")


def test_label_distillation_rows_end_to_end_and_cached(tmp_path):
    """dt-mix / dt-label pretrain from the interpreter of each labelled subset; interpreter and
    ddpm-seg are teacher-side rows; a changed interpreter setting recomputes exactly the
    interpreter, the two backbones distilled from it and their evaluations."""
    import dreamteacher as dt
    from dreamteacher.data.synthetic import make_scenes

    data = make_scenes(
        tmp_path / "data", n=30, image_size=(32, 48), splits={"train": 0.6, "val": 0.1, "test": 0.3}
    )
    kw = {
        "profile": "smoke",
        "device": "cpu",
        "labels": [4],
        "protocols": ["finetune"],
        "methods": ["scratch", "dt-mix", "dt-label", "interpreter", "ddpm-seg"],
    }
    r = dt.benchmark(str(data), str(tmp_path / "b"), **kw)
    rows = {(x["method"], x["protocol"]) for x in r["runs"]}
    assert rows == {
        ("scratch", "finetune"),
        ("dt-mix", "finetune"),
        ("dt-label", "finetune"),
        ("interpreter", "teacher-side"),
        ("ddpm-seg", "teacher-side"),
    }
    assert all(0 <= x["miou"] <= 100 for x in r["runs"])
    # teacher, interpreter, dt-mix and dt-label pretraining, ddpm-seg, 3 evaluations
    assert r["cells_computed"] == 8
    cells = tmp_path / "b" / "cells"
    interp = next(cells.glob("interpreter-N4-seed0-*"))
    assert (interp / "run" / "interpreter.pt").exists()
    mix_run = next(cells.glob("pretrain-dt-mix-N4-seed0-*")) / "run"
    mix_cfg = (mix_run / "config.yaml").read_text()
    assert "mode: mix" in mix_cfg and str(interp / "run") in mix_cfg
    ids = json.loads((interp / "run" / "labeled_ids.json").read_text())["ids"]
    assert ids == json.loads((tmp_path / "b" / "subsets" / "N4_seed0.json").read_text())["ids"]
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| interpreter |" in md and "| ddpm-seg |" in md and "teacher-side" in md
    again = dt.benchmark(str(data), str(tmp_path / "b"), interpreter_max_steps=4, **kw)
    assert again["cells_computed"] == 1 + 2 + 2
    # the other logit head (uper; light is the default): only the dt-mix and dt-label
    # pretrainings and their evaluations
    uper = dt.benchmark(
        str(data), str(tmp_path / "b"), interpreter_max_steps=4, dt_logit_head="uper", **kw
    )
    assert uper["cells_computed"] == 2 + 2
    assert len(list(cells.glob("pretrain-dt-mix-N4-seed0-*"))) == 3
    for row in ("dt-mix", "dt-label"):
        heads = sorted(
            line.split(": ")[1]
            for d in cells.glob(f"pretrain-{row}-N4-seed0-*")
            for line in (d / "run" / "config.yaml").read_text().splitlines()
            if line.startswith("logit_head:")
        )
        assert heads == ["light", "light", "uper"], row  # interpreter_max_steps 6, 4; uper
    assert "logit head was" not in (tmp_path / "b" / "results.md").read_text()
    # the default head finds its cells again: nothing is recomputed
    again = dt.benchmark(str(data), str(tmp_path / "b"), interpreter_max_steps=4, **kw)
    assert again["cells_computed"] == 0
    assert "logit head was `light`" in (tmp_path / "b" / "results.md").read_text()


def test_dreamteacher_rows_from_a_feature_cache(tmp_path):
    """dt_feature_cache=K: the dreamteacher and dt-mix backbones are pretrained from one
    cache cell of K encodings of the pretraining images; turning it off again finds the
    online cells, and the teacher cell is shared."""
    import dreamteacher as dt
    from dreamteacher.data.synthetic import make_scenes

    data = make_scenes(
        tmp_path / "data", n=30, image_size=(32, 48), splits={"train": 0.6, "val": 0.1, "test": 0.3}
    )
    kw = dict(profile="smoke", device="cpu", labels=[4], protocols=["finetune"])
    kw |= dict(out=str(tmp_path / "b"), interpreter_max_steps=2)
    r = dt.benchmark(str(data), dt_feature_cache=2, methods=["dreamteacher", "dt-mix"], **kw)
    # teacher, feature cache, 2 pretrainings, the interpreter, 2 evaluations
    assert r["cells_computed"] == 7
    cells = tmp_path / "b" / "cells"
    (cache,) = cells.glob("feature-cache-*")
    meta = json.loads((cache / "cache" / "meta.json").read_text())
    assert meta["draws"] == 2 and meta["images"] == 21  # train + val, never test
    cfgs = {
        row: (next(cells.glob(f"pretrain-{row}-*")) / "run" / "config.yaml").read_text()
        for row in ("dreamteacher", "dt-mix-N4-seed0")
    }
    for row, run_cfg in cfgs.items():
        assert f"feature_cache: {cache / 'cache'}" in run_cfg, row
    assert "mode: mix" in cfgs["dt-mix-N4-seed0"]
    stages = [c["stage"] for c in r["costs"]]
    assert stages[:2] == ["teacher (train-teacher)", "feature cache (cache-features)"]
    assert stages.count("feature cache (cache-features)") == 1
    cost = r["costs"][1]
    assert cost["images_seen"] == 42
    md = (tmp_path / "b" / "results.md").read_text()
    assert "feature cache of 2 encodings per image" in md
    kw["methods"] = ["dreamteacher"]
    online = dt.benchmark(str(data), **kw)
    assert online["cells_computed"] == 2  # its own pretraining and evaluation; same teacher
    assert len(list(cells.glob("pretrain-dreamteacher-*"))) == 2
    assert "feature cache (cache-features)" not in [c["stage"] for c in online["costs"]]
    assert "feature cache of" not in (tmp_path / "b" / "results.md").read_text()
    with pytest.raises(UserError, match="'dt_feature_cache' must be zero or more, got -1"):
        dt.benchmark(str(data), dt_feature_cache=-1, **kw)


def test_val_carved_from_train_chooses_and_test_reports(tmp_path):
    """A folder with train and test only: eval_split=val scores a val part carved from train
    (recorded in subsets/val.json, never labelled), pretraining sees train + val, and the
    test run after it reuses the pretrained backbone with the same labelled ids."""
    import dreamteacher as dt
    from dreamteacher.data.synthetic import make_scenes

    data = make_scenes(tmp_path / "data", n=30, image_size=(32, 48))  # train 0.75, test 0.25
    kw = dict(profile="smoke", device="cpu", labels=[4], protocols=["finetune"])
    kw |= dict(methods=["dreamteacher"], dt_at_source="backbone", dt_lambda_at=5.0)
    kw |= dict(cells_dir=str(tmp_path / "cells"), teacher_steps=4)
    val = dt.benchmark(str(data), str(tmp_path / "val"), eval_split="val", **kw)
    carved = json.loads((tmp_path / "val" / "subsets" / "val.json").read_text())
    assert carved["carved_from"] == "train" and len(carved["ids"]) == 2  # round(22 * 0.1)
    labelled = json.loads((tmp_path / "val" / "subsets" / "N4_seed0.json").read_text())["ids"]
    assert not set(labelled) & set(carved["ids"])
    (row,) = val["runs"]
    metrics = json.loads((Path(row["cell"]) / "run" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["eval_images"] == 2
    assert metrics["val_carved_from_train"] is True
    assert "mIoU on the val split" in (tmp_path / "val" / "results.md").read_text()
    (pre,) = (tmp_path / "cells").glob("pretrain-dreamteacher-*")
    run_cfg = yaml.safe_load((pre / "run" / "config.yaml").read_text())
    assert run_cfg["splits"] == ["train", "val"]  # every image but the test split's
    assert (run_cfg["at_source"], run_cfg["lambda_at"]) == ("backbone", 5.0)
    (teacher,) = (tmp_path / "cells").glob("teacher-*")  # the smoke profile's cheap grid
    assert yaml.safe_load((teacher / "run" / "config.yaml").read_text())["sample_steps"] == 5
    md = (tmp_path / "val" / "results.md").read_text()
    assert "(val mIoU %, one seed)" in md and "±" not in md
    test = dt.benchmark(str(data), str(tmp_path / "test"), **kw)
    assert test["cells_computed"] == 1  # the evaluation only: teacher and backbone are reused
    metrics = json.loads((Path(test["runs"][0]["cell"]) / "run" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["eval_images"] == 8
    assert (
        json.loads((tmp_path / "test" / "subsets" / "N4_seed0.json").read_text())["ids"] == labelled
    )


def test_ssl_at_equal_compute_trains_for_dreamteachers_wall_time(tmp_path):
    """ssl_equal_compute: each SSL baseline gets a second pretraining of as many steps as fit
    in DreamTeacher's measured wall time (teacher + distillation) at the speed its
    equal-epochs pretraining measured; its rows are `<method>@compute`."""
    import dreamteacher as dt
    from dreamteacher.data.synthetic import make_scenes

    data = make_scenes(tmp_path / "data", n=24, image_size=(32, 48))
    kw = dict(profile="smoke", device="cpu", labels=[4], protocols=["frozen"], teacher_steps=4)
    kw |= dict(methods=["dreamteacher", "simclr"], ssl_equal_compute=True, simclr_lr=1e-3)
    r = dt.benchmark(str(data), str(tmp_path / "b"), **kw)
    assert [x["method"] for x in r["runs"]] == ["dreamteacher", "simclr", "simclr@compute"]
    cells = tmp_path / "b" / "cells"
    rec = {
        name: json.loads((next(cells.glob(f"{name}-??????????")) / "cell.json").read_text())
        for name in ("teacher", "pretrain-dreamteacher", "pretrain-simclr")
    }
    budget = rec["teacher"]["wall_s"] + rec["pretrain-dreamteacher"]["wall_s"]
    per_image = rec["pretrain-simclr"]["wall_s"] / rec["pretrain-simclr"]["images_seen"]
    steps = max(1, round(budget / per_image / 8))  # the smoke profile's batch of 8
    (d,) = cells.glob("pretrain-simclr@compute-*")
    run_cfg = yaml.safe_load((d / "run" / "config.yaml").read_text())
    assert run_cfg["max_steps"] == steps and run_cfg["lr"] == 1e-3  # simclr_lr, not ssl_lr
    (e,) = cells.glob("pretrain-simclr-??????????")
    assert yaml.safe_load((e / "run" / "config.yaml").read_text())["lr"] == 1e-3
    assert json.loads((d / "cell.json").read_text())["images_seen"] == steps * 8
    assert "simclr pretraining (equal compute)" in [c["stage"] for c in r["costs"]]
    md = (tmp_path / "b" / "results.md").read_text()
    assert "**frozen**, equal compute" in md and "| simclr@compute |" in md


def test_a_given_teacher_folder_replaces_the_teacher_cell(tmp_path):
    """teacher=PATH (here a diffusers DDPMPipeline folder): the DreamTeacher rows distil from
    it, no teacher is trained, its cells are keyed by the folder's files (a copy elsewhere
    finds them, a changed weight does not), and the equal-compute budget leaves it out."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    import dreamteacher as dt
    from dreamteacher.benchmarking.run import Benchmark
    from dreamteacher.data.synthetic import make_scenes
    from dreamteacher.teachers.diffusion import unet_kwargs

    data = make_scenes(
        tmp_path / "data", n=30, image_size=(32, 48), splits={"train": 0.6, "val": 0.1, "test": 0.3}
    )
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=[32, 48], in_channels=3, out_channels=3, **unet_kwargs("tiny"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    kw = dict(profile="smoke", device="cpu", labels=[4], protocols=["frozen"])
    kw |= dict(methods=["dreamteacher"], cells_dir=str(tmp_path / "cells"))
    r = dt.benchmark(str(data), str(tmp_path / "b1"), teacher=str(tmp_path / "ddpm"), **kw)
    assert r["cells_computed"] == 2  # a pretraining and its evaluation; nothing trained
    cells = tmp_path / "cells"
    assert not list(cells.glob("teacher-*"))
    assert not any(c["stage"].startswith("teacher") for c in r["costs"])
    (pre,) = cells.glob("pretrain-dreamteacher-*")
    rec = json.loads((pre / "cell.json").read_text())
    assert rec["params"]["teacher"].startswith("files-")
    assert f"teacher: {tmp_path / 'ddpm'}" in (pre / "run" / "config.yaml").read_text()
    assert "not trained here" in (tmp_path / "b1" / "results.md").read_text()
    # the equal-compute budget is the distillation cell alone
    cfg = build_benchmark_config(
        "smoke",
        data=str(data),
        out=str(tmp_path / "b1"),
        **{k: v for k, v in kw.items() if k != "profile"},
        teacher=str(tmp_path / "ddpm"),
    )
    assert Benchmark(cfg).dreamteacher_seconds() == rec["wall_s"]
    # the same files elsewhere: every cell found again
    shutil.copytree(tmp_path / "ddpm", tmp_path / "copy")
    again = dt.benchmark(str(data), str(tmp_path / "b2"), teacher=str(tmp_path / "copy"), **kw)
    assert again["cells_computed"] == 0
    # one changed weight: recomputed
    unet.conv_in.bias.data += 1
    unet.save_pretrained(tmp_path / "copy" / "unet")
    changed = dt.benchmark(str(data), str(tmp_path / "b3"), teacher=str(tmp_path / "copy"), **kw)
    assert changed["cells_computed"] == 2
    assert len(list(cells.glob("pretrain-dreamteacher-*"))) == 2
    with pytest.raises(UserError, match="holds no teacher"):
        dt.benchmark(str(data), str(tmp_path / "b4"), teacher=str(tmp_path / "data"), **kw)


def test_dt_strides_reach_every_teacher_reading_cell(tmp_path):
    """dt_strides=[8,16,32] (a teacher without a stride-4 level) goes into the distillation
    cells' settings (and, through `levels()`, the feature-cache and teacher-side cells'); at
    the default it is left out, so cells computed before the key existed keep their keys."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from dreamteacher.benchmarking.run import Benchmark
    from dreamteacher.data.synthetic import make_scenes
    from dreamteacher.teachers.diffusion import unet_kwargs

    data = make_scenes(tmp_path / "data", n=12, image_size=(32, 48))
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=[32, 48], in_channels=3, out_channels=3, **unet_kwargs("tiny"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    kw = dict(data=str(data), out=str(tmp_path / "b"), teacher=str(tmp_path / "ddpm"))
    default = Benchmark(build_benchmark_config("smoke", **kw))
    assert "strides" not in default._distillation() and default.levels() == {}
    sd = Benchmark(build_benchmark_config("smoke", dt_strides=[8, 16, 32], **kw))
    assert sd._distillation()["strides"] == [8, 16, 32]
    assert sd.levels() == {"strides": [8, 16, 32]}
    assert sd._distillation()["teacher"].key == default._distillation()["teacher"].key
