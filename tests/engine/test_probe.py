"""probe: the linear probe ranks informative features above noise, the candidate sets, and the
command end to end on a train-teacher run (ranking, pretrain.yaml that pretrain reads)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import dreamteacher as dt
from dreamteacher import cli
from dreamteacher.config import PretrainConfig, ProbeConfig, build_config
from dreamteacher.engine.probe import fit_and_score, level_sets, stack
from dreamteacher.errors import UserError


def test_candidate_level_sets():
    cfg = ProbeConfig()
    assert level_sets(cfg) == [
        [4], [4, 8], [4, 8, 16], [4, 8, 16, 32], [8], [8, 16], [8, 16, 32], [16], [16, 32], [32]
    ]  # fmt: skip
    cfg.level_sets = [[8, 32], [16]]
    assert level_sets(cfg) == [[8, 32], [16]]
    cfg.level_sets = [[2, 4]]
    with pytest.raises(UserError, match=r"level set \[2, 4\] must be a non-empty subset"):
        level_sets(cfg)


def test_stack_resizes_to_the_finest_level():
    maps = [torch.rand(2, 3, 8, 10), torch.rand(2, 5, 4, 5), torch.rand(2, 7, 2, 3)]
    x = stack(maps, [1, 2])
    assert x.shape == (2, 12, 4, 5)
    assert torch.equal(x[:, :5], maps[1])  # the finest chosen level is kept as it is


def test_the_probe_scores_informative_features_above_noise():
    """Masks of 3 classes at 16x16; features at 8x8: one-hot of the class (plus noise) against
    pure noise. The probe reads the first almost perfectly and the second at chance."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (24, 8, 8), generator=g)
    masks = y.repeat_interleave(2, 1).repeat_interleave(2, 2)  # # 24, 16, 16
    onehot = F.one_hot(y, 3).permute(0, 3, 1, 2).float()
    good = onehot + 0.1 * torch.randn(onehot.shape, generator=g)
    noise = torch.randn(24, 3, 8, 8, generator=g)
    cfg = ProbeConfig(steps=150, lr=5e-2, batch_size=8)
    dev = torch.device("cpu")
    args = (3, 255, cfg, dev)
    hi = fit_and_score(good[:16], masks[:16], good[16:], masks[16:], *args)
    lo = fit_and_score(noise[:16], masks[:16], noise[16:], masks[16:], *args)
    assert hi > 90 and lo < 40, (hi, lo)


def test_probe_end_to_end(scenes, teacher_run, tmp_path, capsys):
    out = tmp_path / "probe"
    kw = dict(labels=6, steps=20, device="cpu", level_sets=[[4, 8, 16, 32], [32]])
    r = dt.probe(str(scenes), str(teacher_run), str(out), t=[50, 900], **kw)
    rows = r["ranking"]
    assert {(x["t"], tuple(x["strides"])) for x in rows} == {
        (t, s) for t in (50, 900) for s in ((4, 8, 16, 32), (32,))
    }
    assert [x["val_miou"] for x in rows] == sorted((x["val_miou"] for x in rows), reverse=True)
    assert all(0 <= x["val_miou"] <= 100 for x in rows)
    assert r["labels"] == 6 and r["val_images"] == 2  # the val ids carved from train
    assert json.loads((out / "probe.json").read_text()) == json.loads(json.dumps(r))
    best = yaml.safe_load((out / "pretrain.yaml").read_text())
    assert best == {"teacher": str(teacher_run.resolve()), "t": [rows[0]["t"]],
                    "strides": rows[0]["strides"]}  # fmt: skip
    cfg = build_config(PretrainConfig, out / "pretrain.yaml", data=str(scenes), out="x")
    assert cfg.t == [rows[0]["t"]] and cfg.strides == rows[0]["strides"]
    printed = capsys.readouterr().out
    assert "best: t=" in printed and "val mIoU" in printed
    # the same seed gives the same ranking
    again = dt.probe(str(scenes), str(teacher_run), str(tmp_path / "p2"), t=[50, 900], **kw)
    assert again["ranking"] == rows
    # scored on val only; a t outside the schedule is refused
    with pytest.raises(UserError, match="probe scores the val split"):
        dt.probe(str(scenes), str(teacher_run), str(tmp_path / "p3"), eval_split="test", **kw)
    rc = cli.main(["probe", "--teacher", str(teacher_run), "--data", str(scenes),
                   "--labels", "4", "--out", str(tmp_path / "p4"), "t=[1000]"])  # fmt: skip
    assert rc == 2 and "t=[1000] must lie in 0..999" in capsys.readouterr().err
