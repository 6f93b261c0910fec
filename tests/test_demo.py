"""The demo end to end at a tiny size: every stage, with the settings it was given."""

import json

import yaml

import dreamteacher as dt


def test_demo_runs_every_stage_with_its_settings(tmp_path):
    out = tmp_path / "demo"
    r = dt.demo(
        str(out),
        image_size=32,
        num_images=24,
        labels=4,
        teacher_steps=3,
        teacher_batch_size=4,
        teacher_lr=5e-4,
        pretrain_epochs=1,
        finetune_steps=2,
        batch_size=4,
        device="cpu",
    )
    assert set(r["runs"]) == {"dreamteacher", "scratch"}
    assert all(0 <= v["miou"] <= 100 for v in r["runs"].values())
    assert json.loads((out / "results.json").read_text())["settings"]["teacher_lr"] == 5e-4
    # each stage ran with the demo's settings: the teacher at its own lr
    teacher = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    assert (teacher["lr"], teacher["steps"], teacher["batch_size"]) == (5e-4, 3, 4)
    assert teacher["image_size"] == [32, 32]
    pre = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    assert (pre["epochs"], pre["backbone"], pre["splits"]) == (1, "resnet18", ["train", "val"])
    ft = yaml.safe_load((out / "finetune_dreamteacher" / "config.yaml").read_text())
    assert (ft["labels"], ft["steps"], ft["weights"]) == (4, 2, str(out / "backbone"))
    assert (out / "teacher" / "samples.png").exists()
    assert "| dreamteacher |" in (out / "results.md").read_text()
    for run in ("teacher", "pretrain", "finetune_dreamteacher", "finetune_scratch"):
        assert (out / run / "report.html").stat().st_size > 10_000  # figures embedded
