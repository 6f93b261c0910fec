"""--resume continues from the last checkpoint and ends with the same weights as an
uninterrupted run (CPU, same seed)."""

import os
import shutil

import pytest
import torch

import dreamteacher as dt
from dreamteacher.errors import UserError
from tests.conftest import TINY_TEACHER, read_log, tiny_pretrain


def _final_weights(run):
    return torch.load(run / "final.pt", weights_only=False)["backbone_state"]


def test_pretrain_resume_matches_uninterrupted(scenes, teacher_run, tmp_path):
    kw = tiny_pretrain(scenes, teacher_run, epochs=2, warmup_epochs=1)
    a = dt.pretrain(out=str(tmp_path / "a"), save_every=100, **kw)
    b = dt.pretrain(out=str(tmp_path / "b"), save_every=3, keep_checkpoints=5, **kw)
    # simulate a crash after step 6: drop later checkpoints and the final weights
    ckpts = sorted((b / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_00000003.pt", "step_00000006.pt", "step_00000008.pt"]
    ckpts[-1].unlink()
    ckpts[-2].write_bytes(b"truncated")  # a corrupt latest checkpoint falls back to step 3
    (b / "final.pt").unlink()
    dt.pretrain(out=str(b), save_every=3, keep_checkpoints=5, resume=True, **kw)
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [r["step"] for r in read_log(b)]
    assert steps == list(range(1, 9))  # the log was rewound to the checkpoint, no duplicates


def test_train_teacher_resume_matches_uninterrupted(scenes, teacher_run, tmp_path):
    """The fixture run went 4 steps with checkpoints at 2 and 4; a copy cut back to step 2 and
    resumed must end with the same EMA teacher weights."""
    from diffusers import UNet2DModel

    b = tmp_path / "b"
    shutil.copytree(teacher_run, b)
    (b / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(b / "unet")
    dt.train_teacher(data=str(scenes), out=str(b), resume=True, **TINY_TEACHER)
    wa = UNet2DModel.from_pretrained(teacher_run / "unet").state_dict()
    wb = UNet2DModel.from_pretrained(b / "unet").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_resume_from_a_checkpoint_that_does_not_fit(scenes, teacher_run, tmp_path, part):
    """A checkpoint whose weights or optimizer state no longer fit the model (e.g. written by
    another library version) stops with one line naming the run, not a traceback."""
    b = tmp_path / "b"
    shutil.copytree(teacher_run, b)
    (b / "checkpoints" / "step_00000004.pt").unlink()
    ckpt = b / "checkpoints" / "step_00000002.pt"
    state = torch.load(ckpt, weights_only=False)
    if part == "model":
        state["model"].pop(next(iter(state["model"])))
    else:
        state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    torch.save(state, ckpt)
    with pytest.raises(UserError) as e:
        dt.train_teacher(data=str(scenes), out=str(b), resume=True, **TINY_TEACHER)
    msg = str(e.value)
    assert str(b) in msg and "does not fit" in msg and "\n" not in msg


def test_resume_from_another_working_folder(scenes, teacher_run, tmp_path, monkeypatch, capsys):
    """A run started with data='scenes' in one folder resumes with data='<parent>/scenes' from
    the folder above (paths are compared resolved, from the working folder each run had);
    another data folder is still refused."""
    from diffusers import UNet2DModel

    b = tmp_path / "b"
    shutil.copytree(teacher_run, b)
    (b / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(b / "unet")
    ckpt = b / "checkpoints" / "step_00000002.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["cwd"]  # every checkpoint records its working folder
    state["config"]["data"], state["cwd"] = scenes.name, str(scenes.parent)  # as if relative
    torch.save(state, ckpt)
    other = tmp_path / "scenes"
    shutil.copytree(scenes, other)
    with pytest.raises(UserError, match=rf"was made with data='{scenes.name}', now data='{other}'"):
        dt.train_teacher(data=str(other), out=str(b), resume=True, **TINY_TEACHER)
    monkeypatch.chdir(scenes.parent.parent)
    rel = f"{scenes.parent.name}/{scenes.name}"
    dt.train_teacher(data=rel, out=str(b), resume=True, **TINY_TEACHER)
    assert f"resumed {b} at step 2" in capsys.readouterr().out
    wa = UNet2DModel.from_pretrained(teacher_run / "unet").state_dict()
    wb = UNet2DModel.from_pretrained(b / "unet").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_a_checkpoint_says_so(scenes, tmp_path, capsys):
    kw = {**TINY_TEACHER, "steps": 1, "num_samples": 1, "sample_steps": 1}
    dt.train_teacher(data=str(scenes), out=str(tmp_path / "t"), resume=True, **kw)
    assert f"--resume: no checkpoint in {tmp_path / 't'} yet; starting at step 0" in (
        capsys.readouterr().out
    )
    # the teacher's files are readable like every other output (0666 less the umask)
    weights = next((tmp_path / "t" / "unet").glob("*.safetensors"))
    umask = os.umask(0)
    os.umask(umask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask
