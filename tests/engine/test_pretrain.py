import pytest
import torch

import dreamteacher as dt
from dreamteacher.student import Backbone
from tests.conftest import BACKBONES, read_log, tiny_pretrain


def _pretrain(scenes, teacher, out, **kw):
    return dt.pretrain(out=str(out), **tiny_pretrain(scenes, teacher, **kw))


# resnet18 is the fixtures' backbone
@pytest.mark.parametrize("backbone", [b for b in BACKBONES if b != "resnet18"])
def test_pretrain_other_backbones(backbone, scenes, teacher_run, tmp_path):
    run = _pretrain(scenes, teacher_run, tmp_path / "p", backbone=backbone, epochs=1,
                    batch_size=8, regressor_channels=32)  # fmt: skip
    final = torch.load(run / "final.pt", weights_only=False)
    Backbone(backbone).model.load_state_dict(final["backbone_state"], strict=True)
    log = read_log(run)
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_distillation_loss_goes_down(scenes, teacher_run, tmp_path):
    run = _pretrain(scenes, teacher_run, tmp_path / "p", epochs=6, batch_size=8,
                    warmup_epochs=1, lr=2e-3)  # fmt: skip
    log = read_log(run)
    first = sum(r["mse"] for r in log[:2]) / 2
    last = sum(r["mse"] for r in log[-2:]) / 2
    assert last < 0.9 * first, (first, last)
    assert log[0]["lr"] < log[1]["lr"]  # warm-up
    assert log[-1]["lr"] < 0.1 * 2e-3  # cosine decays to ~0


def test_compile_teacher_refuses_a_hooked_unet(scenes, tmp_path):
    """compile_teacher=true reaches the teacher: an NCSN++-style UNet (read through hooks)
    is refused with the fix, before anything is written."""
    from dreamteacher.errors import UserError
    from tests.teachers.test_contract import _skip_unet

    _skip_unet().save_pretrained(tmp_path / "ncsnpp")
    with pytest.raises(UserError, match="compile_teacher=false"):
        _pretrain(scenes, tmp_path / "ncsnpp", tmp_path / "p", image_size=[32, 32],
                  compile_teacher=True, max_steps=1)  # fmt: skip
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_compiled_pretrain_matches_eager(scenes, teacher_run, tmp_path):
    """compile=true compile_teacher=true (inductor): the same losses as eager, step by step."""
    logs = {}
    for c in (False, True):
        run = _pretrain(scenes, teacher_run, tmp_path / str(c), max_steps=3, epochs=10,
                        compile=c, compile_teacher=c)  # fmt: skip
        logs[c] = [r["loss"] for r in read_log(run)]
    assert len(logs[True]) == 3
    for a, b in zip(logs[False], logs[True], strict=True):
        assert abs(a - b) < 1e-3 * abs(a), (logs[False], logs[True])


def test_unknown_at_source_is_one_line(scenes, teacher_run, tmp_path):
    from dreamteacher.errors import UserError

    with pytest.raises(UserError, match="unknown at_source 'stages'; choose one of regressor"):
        _pretrain(scenes, teacher_run, tmp_path / "r", at_source="stages")
