import json

import pytest
import torch

import dreamteacher as dt
from dreamteacher.student import Backbone


@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny"])
def test_pretrain_other_backbones(backbone, scenes, teacher_run, tmp_path):
    run = dt.pretrain(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(tmp_path / "p"),
        splits=["train"],
        backbone=backbone,
        epochs=1,
        batch_size=8,
        warmup_epochs=0,
        regressor_channels=32,
        device="cpu",
        log_every=1,
    )
    final = torch.load(run / "final.pt", weights_only=False)
    Backbone(backbone).model.load_state_dict(final["backbone_state"], strict=True)
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_distillation_loss_goes_down(scenes, teacher_run, tmp_path):
    run = dt.pretrain(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(tmp_path / "p"),
        splits=["train"],
        backbone="resnet18",
        epochs=6,
        batch_size=8,
        warmup_epochs=1,
        lr=2e-3,
        device="cpu",
        log_every=1,
    )
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["mse"] for r in log[:2]) / 2
    last = sum(r["mse"] for r in log[-2:]) / 2
    assert last < 0.9 * first, (first, last)
    assert log[0]["lr"] < log[1]["lr"]  # warm-up
    assert log[-1]["lr"] < 0.1 * 2e-3  # cosine decays to ~0
