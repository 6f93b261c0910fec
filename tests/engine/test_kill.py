"""A real `kill -9` at a random step, then --resume: the final weights equal those of an
uninterrupted run, bit for bit (CPU). The student is timm's `test_resnet` (0.4M parameters):
the backbone is incidental here, and its small checkpoints keep each run's 32 saves cheap."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file


def _cmd(kind, scenes, teacher_run, out):
    common = [
        "--out",
        out,
        "--batch-size",
        "4",
        "--save-every",
        "1",
        "--device",
        "cpu",
        "keep_checkpoints=2",
        "log_every=1",
    ]
    if kind == "pretrain":
        return [
            "pretrain",
            "--data",
            scenes,
            "--teacher",
            teacher_run,
            "--backbone",
            "test_resnet",
            "--epochs",
            "8",
            "splits=[train,val]",
            "regressor_channels=32",
            *common,
        ]
    if kind == "train-teacher":
        return [
            "train-teacher",
            "--data",
            scenes,
            "--image-size",
            "32",
            "--steps",
            "32",
            "splits=[train,val]",
            "num_samples=1",
            "sample_steps=1",
            "block_out_channels=[16,16,32,32,32]",  # small checkpoints for 32 saves
            "layers_per_block=1",
            *common,
        ]
    return [
        "finetune",
        "--data",
        scenes,
        "--backbone",
        "test_resnet",
        "--image-size",
        "32",
        "--steps",
        "32",
        "--labels",
        "8",
        "head_channels=32",
        *common,
    ]


def _weights(kind, out):
    if kind == "pretrain":
        s = torch.load(out / "final.pt", weights_only=False)
        return {**s["backbone_state"], **{"reg." + k: v for k, v in s["regressor_state"].items()}}
    if kind == "train-teacher":
        return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    return torch.load(out / "model.pt", weights_only=False)


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "dreamteacher", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


@pytest.mark.parametrize("kind", ["pretrain", "train-teacher", "finetune"])
def test_kill_9_then_resume_is_bit_exact(kind, scenes, teacher_run, tmp_path):
    ref = _run(_cmd(kind, scenes, teacher_run, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    kill_at = random.Random().randint(4, 20)  # 32 steps in all
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamteacher", *map(str, _cmd(kind, scenes, teacher_run, out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = out / "checkpoints" / f"step_{kill_at:08d}.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    final = (
        "final.pt" if kind == "pretrain" else ("unet" if kind == "train-teacher" else "model.pt")
    )
    assert not (out / final).exists()

    res = _run([*_cmd(kind, scenes, teacher_run, out), "--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed" in res.stdout
    a, b = _weights(kind, tmp_path / "ref"), _weights(kind, out)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"killed at step >= {kill_at}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert len(list((out / "checkpoints").glob("step_*.pt"))) == 2  # keep_checkpoints
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_kill_9_during_cache_features_then_resume_is_byte_exact(scenes, teacher_run, tmp_path):
    """cache-features killed after a random progress record resumes with --resume to level
    files and a meta.json identical to an uninterrupted build's (build time aside)."""

    def cmd(out):
        return [
            "cache-features",
            "--data",
            scenes,
            "--teacher",
            teacher_run,
            "--out",
            out,
            "--image-size",
            "128",  # slow enough on CPU to be killed mid-way: 12 batches of 2
            "--batch-size",
            "2",
            "--save-every",
            "1",
            "--device",
            "cpu",
            "splits=[train,test]",
            "draws=2",
        ]

    ref = _run(cmd(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    out, kill_at = tmp_path / "c", 2 * random.Random().randint(2, 8)  # images done, of 24
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamteacher", *map(str, cmd(out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record, deadline = tmp_path / "c.partial" / "progress.json", time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads(record.read_text())["done"] >= kill_at:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the build ended before image {kill_at}"
    assert not out.exists()

    res = _run([*cmd(out), "--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed" in res.stdout
    for lvl in range(4):
        a, b = ((d / f"level{lvl}.npy").read_bytes() for d in (tmp_path / "ref", out))
        assert a == b, f"killed after image {kill_at}: level {lvl} differs"
    meta = [json.loads((d / "meta.json").read_text()) for d in (tmp_path / "ref", out)]
    assert [m.pop("build_s") > 0 for m in meta] == [True, True] and meta[0] == meta[1]
    assert not (tmp_path / "c.partial").exists()
