"""The DDPM-seg baseline: descriptor shapes, the ensemble's prediction, streamed training, and
its peak memory measured against the number of labelled images."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamteacher.baselines.ddpm_seg import DDPMSeg
from dreamteacher.teachers import create_teacher
from tests.conftest import read_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    return DDPMSeg(teacher, [50, 150], num_classes=4, ensemble=3, hidden=[16, 8], pixels=20)


def test_descriptors_concatenate_every_level_and_t(model):
    x = torch.rand(2, 3, 32, 32)
    d = model.descriptors(x, keys=[1, 2])
    assert model.dim == 2 * sum(model.teacher.channels)
    assert d.shape == (2, model.dim, 32, 32)
    half = sum(model.teacher.channels)
    assert not torch.allclose(d[:, :half], d[:, half:])  # t=50 and t=150 differ
    assert torch.equal(d, model.descriptors(x, keys=[1, 2]))  # keyed noise: reproducible


def test_training_forward_samples_labelled_pixels_per_member(model):
    model.train()
    y = torch.full((2, 32, 32), 255)
    y[:, :4, :] = 1  # 2 x 128 labelled pixels, all class 1
    outs = model(torch.rand(2, 3, 32, 32), y, keys=[1, 2])
    assert len(outs) == 3
    for logits, labels in outs:
        assert logits.shape == (40, 4) and (labels == 1).all()  # 20 pixels per image


def test_prediction_is_the_ensemble_mean_in_chunks(model):
    model.eval()
    d = torch.randn(1, model.dim, 5, 7)
    logp = model.predict(d)
    assert logp.shape == (1, 4, 5, 7)
    assert torch.allclose(logp.exp().sum(1), torch.ones(1, 5, 7), atol=1e-5)
    pixel = d[0, :, 2, 3].unsqueeze(0)
    mean = torch.stack([m(pixel).softmax(1) for m in model.members]).mean(0)
    assert torch.allclose(logp[0, :, 2, 3].exp(), mean[0], atol=1e-6)
    model.chunk = 4  # chunking changes nothing
    assert torch.allclose(model.predict(d), logp, atol=1e-6)
    model.chunk = 16384


def test_peak_memory_does_not_grow_with_labelled_images(tmp_path):
    """10 vs 40 labelled images, the same steps, each in a fresh process: the reference
    approach (every labelled pixel's descriptor in RAM) would add 4x the 10-image footprint."""
    out = tmp_path / "m.json"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "ddpm_seg_memory.py"),
            "--steps",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    small, large = json.loads(out.read_text())
    assert (small["labels"], large["labels"]) == (10, 40)
    assert 0 <= small["miou"] <= 100 and 100 < small["peak_rss_mb"] < 8000
    naive_growth = large["all_pixels_in_ram_mb"] - small["all_pixels_in_ram_mb"]
    assert naive_growth > 150  # what holding the descriptors would add: the test can fail
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 50


def test_train_ddpm_seg_end_to_end(scenes, teacher_run, tmp_path):
    import dreamteacher as dt

    m = dt.train_ddpm_seg(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(tmp_path / "d"),
        labels=8,
        steps=30,
        ensemble=2,
        pixels=128,
        log_every=1,
        device="cpu",
    )
    assert m["labels"] == 8 and m["split"] == "test" and 0 <= m["miou"] <= 100
    log = read_log(tmp_path / "d")
    first = sum(r["loss"] for r in log[:3]) / 3
    last = sum(r["loss"] for r in log[-3:]) / 3
    assert len(log) == 30 and last < 0.8 * first, (first, last)
    sd = torch.load(tmp_path / "d" / "model.pt", weights_only=True)
    assert sd and all(k.startswith("members.") for k in sd)  # the teacher is not copied
    from dreamteacher.reporting.runs import kind

    assert kind(tmp_path / "d") == "train-ddpm-seg"
    assert "IoU per class" in (tmp_path / "d" / "report.html").read_text()
