"""Numerical faults and write failures: nothing already written is lost."""

import errno
import importlib

import pytest
import torch

import dreamteacher as dt
import dreamteacher.runfiles as runfiles
from dreamteacher.errors import UserError
from dreamteacher.losses import mix_distillation_loss
from tests.conftest import read_log, tiny_pretrain

# the module, not the function of the same name that dreamteacher.engine re-exports
pretrain_mod = importlib.import_module("dreamteacher.engine.pretrain")


def _nan_at(bad_steps):
    """The real loss, made NaN on the given 0-based calls."""
    calls = {"n": 0}

    def loss(*a, **k):
        out = mix_distillation_loss(*a, **k)
        if calls["n"] in bad_steps:
            out["loss"] = out["loss"] * float("nan")
        calls["n"] += 1
        return out

    return loss


def _kw(scenes, teacher_run):
    return tiny_pretrain(scenes, teacher_run, regressor_channels=32)


def test_a_nan_step_is_skipped(scenes, teacher_run, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "mix_distillation_loss", _nan_at({1}))
    with pytest.warns(UserWarning, match=r"step 2: non-finite loss.*skipped \(1/10"):
        run = dt.pretrain(out=str(tmp_path / "p"), epochs=1, **_kw(scenes, teacher_run))
    final = torch.load(run / "final.pt", weights_only=False)["backbone_state"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    logged = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3  # 4 steps, the NaN one not logged


def test_too_many_bad_steps_stop_and_keep_the_checkpoint(
    scenes, teacher_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(pretrain_mod, "mix_distillation_loss", _nan_at(set(range(2, 99))))
    out = tmp_path / "p"
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            UserError,
            match=r"NaN/inf for 3 steps in a "
            r"row \(up to step 5\).*step_00000004.pt",
        ),
    ):
        dt.pretrain(
            out=str(out), epochs=2, save_every=2, max_bad_steps=3, **_kw(scenes, teacher_run)
        )
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    # skipped steps change nothing (weights and BN statistics): checkpoint 4 equals 2
    a, b = (torch.load(p, weights_only=False)["model"] for p in ckpts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "final.pt").exists()


def test_disk_full_while_checkpointing_keeps_previous(tmp_path, monkeypatch):
    cfg = dt.config.PretrainConfig(out=str(tmp_path / "r"))
    run = runfiles.Run(cfg.out, cfg, keep=2)
    run.save_checkpoint(1, {"model": {"w": torch.ones(3)}})
    before = (run.ckpt_dir / "step_00000001.pt").read_bytes()

    def full(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfiles.torch, "save", full)
    with pytest.raises(UserError, match=r"could not write .*step_00000002.pt \(No space left"):
        run.save_checkpoint(2, {"model": {"w": torch.zeros(3)}})
    assert (run.ckpt_dir / "step_00000001.pt").read_bytes() == before
    assert [p.name for p in run.ckpt_dir.iterdir()] == ["step_00000001.pt"]  # no temp left


def test_export_failure_keeps_previous_export(pretrain_run, tmp_path, monkeypatch):
    export_mod = importlib.import_module("dreamteacher.exporting")

    bb = dt.export(pretrain_run, tmp_path / "bb")
    before = (bb / "model.safetensors").read_bytes()

    def denied(tensors, path, metadata=None):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(export_mod, "save_file", denied)
    with pytest.raises(UserError, match=r"Permission denied\); the previous model.safetensors"):
        dt.export(pretrain_run, bb)
    assert (bb / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in bb.iterdir()) == ["config.json", "model.safetensors"]


def test_outputs_get_the_umask_permissions_not_owner_only(pretrain_run, tmp_path):
    """Files written atomically (through a private temporary file) end up with the mode any
    new file gets under the umask: 0644 under 022, so others on a cluster can read them."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        runfiles.atomic_json({"a": 1}, tmp_path / "m.json")
        bb = dt.export(pretrain_run, tmp_path / "bb")
        os.umask(0o002)
        runfiles.atomic_json({"a": 2}, tmp_path / "g.json")
    finally:
        os.umask(old)
    for f, mode in [("m.json", 0o644), ("bb/model.safetensors", 0o644), ("g.json", 0o664)]:
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == mode, f
    assert stat.S_IMODE((bb / "config.json").stat().st_mode) == 0o644


def test_resume_refuses_another_number_of_processes(tmp_path):
    """The loop's state in a checkpoint names the number of processes that made it; resuming
    with another number is refused, saying how to resume."""
    import dataclasses

    cfg = dt.config.PretrainConfig(out=str(tmp_path / "r"))
    for step, made_by in [(1, 1), (2, 4)]:
        state = {"model": {}, "sampler": {"world_size": made_by}}
        runfiles.Run(cfg.out, cfg, world_size=made_by).save_checkpoint(step, state)
        again = dataclasses.replace(cfg, resume=True)
        now = 2 if made_by == 1 else 1
        how = "in one process, without torchrun" if made_by == 1 else "under torchrun with 4"
        with pytest.raises(
            UserError, match=rf"made by {made_by} process\(es\), now {now}; resume {how}"
        ):
            runfiles.Run(cfg.out, again, world_size=now).load_checkpoint()
        assert runfiles.Run(cfg.out, again, world_size=made_by).load_checkpoint()["step"] == step
        runfiles.Run(cfg.out, again).checkpoints()[-1].unlink()


def test_image_size_not_divisible_by_teacher_stride(scenes, teacher_run, tmp_path):
    with pytest.raises(UserError, match="not divisible by 16"):
        dt.pretrain(out=str(tmp_path / "p"), epochs=1, image_size=[40], **_kw(scenes, teacher_run))
    assert not (tmp_path / "p").exists()  # rejected before anything was written


def test_real_disk_full_errors_from_torch_and_safetensors(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError and safetensors as SafetensorError:
    both become the one-line message, the previous file kept."""
    cfg = dt.config.PretrainConfig(out=str(tmp_path / "r"))
    run = runfiles.Run(cfg.out, cfg, keep=0)  # keep=0 still keeps the newest
    run.save_checkpoint(1, {"model": {"w": torch.ones(3)}})
    run.save_checkpoint(2, {"model": {"w": torch.ones(3)}})
    assert [p.name for p in run.checkpoints()] == ["step_00000002.pt"]

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed")

    monkeypatch.setattr(runfiles.torch, "save", full)
    with pytest.raises(UserError, match=r"RuntimeError: .*PytorchStreamWriter.*nothing was"):
        run.save_checkpoint(3, {"model": {}})
    assert [p.name for p in run.checkpoints()] == ["step_00000002.pt"]


class _NanShim:
    """torch.nn.functional with one loss made NaN on chosen calls."""

    def __init__(self, name, bad):
        self.name, self.bad, self.n = name, bad, 0

    def __getattr__(self, attr):
        fn = getattr(torch.nn.functional, attr)
        if attr != self.name:
            return fn

        def wrapped(*a, **k):
            out = fn(*a, **k)
            self.n += 1
            return out * float("nan") if self.n - 1 in self.bad else out

        return wrapped


@pytest.mark.parametrize("kind", ["train-teacher", "finetune"])
def test_nan_guard_in_teacher_and_finetune(kind, scenes, tmp_path, monkeypatch):
    mod = importlib.import_module(
        "dreamteacher.engine.teacher" if kind == "train-teacher" else "dreamteacher.engine.finetune"
    )
    shim = _NanShim("mse_loss" if kind == "train-teacher" else "cross_entropy", set(range(1, 99)))
    monkeypatch.setattr(mod, "F", shim)
    kw = dict(
        data=str(scenes),
        out=str(tmp_path / "r"),
        image_size=[32],
        batch_size=2,
        device="cpu",
        save_every=1,
        max_bad_steps=2,
    )
    with (
        pytest.warns(UserWarning, match="non-finite"),
        pytest.raises(UserError, match=r"NaN/inf for 2 steps in a row \(up to step 3\)"),
    ):
        if kind == "train-teacher":
            dt.train_teacher(steps=6, splits=["train", "val"], **kw)
        else:
            dt.finetune(steps=6, backbone="resnet18", head_channels=32, **kw)
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("step_*.pt"))
    a, b = (torch.load(p, weights_only=False)["model"] for p in ckpts[-2:])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the skipped step changed nothing


def test_resume_refuses_changed_settings_and_fresh_runs_reset_the_log(
    scenes, teacher_run, tmp_path
):
    run = dt.pretrain(out=str(tmp_path / "p"), epochs=1, save_every=2, **_kw(scenes, teacher_run))
    with pytest.raises(UserError, match=r"made with batch_size=4, now batch_size=8"):
        dt.pretrain(
            out=str(run), epochs=1, resume=True, **{**_kw(scenes, teacher_run), "batch_size": 8}
        )
    # a folder with a log but no checkpoint starts a fresh log
    fresh = tmp_path / "f"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text('{"step": 99, "loss": 1}\n')
    dt.pretrain(out=str(fresh), epochs=1, **_kw(scenes, teacher_run))
    steps = [r["step"] for r in read_log(fresh)]
    assert steps == [1, 2, 3, 4]
