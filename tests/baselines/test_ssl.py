"""The lightly baselines: each trains, keeps its momentum encoder out of the gradient, and
exports a timm-loadable backbone."""

import json
import math
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import dreamteacher as dt
from dreamteacher import api
from dreamteacher.baselines.ssl import METHODS, build_method, momentum_at
from dreamteacher.engine.baseline import default_memory_bank
from dreamteacher.errors import UserError
from tests.conftest import read_log


def test_momentum_schedule_is_cosine_from_start_to_one():
    assert momentum_at(0.0, 0.99) == pytest.approx(0.99)
    assert momentum_at(0.5, 0.99) == pytest.approx(0.995)
    assert momentum_at(1.0, 0.99) == pytest.approx(1.0)
    assert momentum_at(0.25, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_memory_bank_is_at_most_half_the_images():
    assert default_memory_bank(468, 16) == 224
    assert default_memory_bank(100_000, 256) == 4096
    assert default_memory_bank(10, 16) == 16


@pytest.mark.parametrize("method", METHODS)
def test_one_step_moves_the_online_backbone_only(method):
    torch.manual_seed(0)
    net = build_method(method, "resnet18", [32, 40], memory_bank=16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    views = [torch.rand(4, 3, 32, 40), torch.rand(4, 3, 32, 40)]
    loss = net(views, 0.0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = net.state_dict()
    assert not torch.equal(
        after["backbone.model.conv1.weight"], before["backbone.model.conv1.weight"]
    )
    momentum = [k for k in after if k.startswith("backbone_m.")]
    if method == "simclr":
        assert not momentum
    else:  # frozen for the optimizer; moved only by the EMA update inside the loss
        assert momentum and all(not p.requires_grad for p in net.backbone_m.parameters())
        k = "backbone_m.model.conv1.weight"
        assert torch.allclose(after[k], before[k], atol=1e-7)  # a copy: its EMA is a no-op
        online = after["backbone.model.conv1.weight"].clone()
        ema = after[k].clone()
        net(views, 0.0)  # the next loss first moves the EMA: 0.99 ema + 0.01 online
        assert torch.allclose(net.state_dict()[k], 0.99 * ema + 0.01 * online, atol=1e-6)


def test_the_transform_gives_two_views_of_the_requested_size():
    from PIL import Image

    net = build_method("byol", "resnet18", [32, 40])
    views = net.views(Image.new("RGB", (80, 60), (120, 30, 200)))
    assert len(views) == 2 and all(v.shape == (3, 32, 40) for v in views)
    assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in views)  # not normalised


def test_pretrain_baseline_exports_timm_weights(scenes, tmp_path):
    run = api.pretrain_baseline(
        data=str(scenes),
        out=str(tmp_path / "moco"),
        method="mocov2",
        backbone="resnet18",
        splits=["train", "val"],  # the 16 non-test images
        image_size=[32],
        epochs=1,
        batch_size=4,
        log_every=1,
        device="cpu",
    )
    logs = read_log(run)
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and logs[-1]["images_seen"] == 16
    bb = dt.export(run, tmp_path / "bb")
    assert json.loads((bb / "config.json").read_text())["method"] == "mocov2"
    model = timm.create_model("resnet18", pretrained=False)
    model.load_state_dict(load_file(bb / "model.safetensors"), strict=True)
    final = torch.load(run / "final.pt", weights_only=False)["backbone_state"]
    assert torch.equal(model.conv1.weight, final["conv1.weight"])


def test_unknown_method_and_missing_lightly_are_clear_errors(monkeypatch):
    with pytest.raises(UserError, match="unknown baseline method 'mae'"):
        build_method("mae", "resnet18", [32, 32])
    monkeypatch.setitem(sys.modules, "lightly.loss", None)
    with pytest.raises(UserError, match=r"pip install -e \.\[baselines\]"):
        build_method("simclr", "resnet18", [32, 32])


# Rank r of 2 takes its half of a fixed global batch of 4 (gloo over a file store); for each
# method one forward + backward under DDP; it saves the loss, the all-reduced gradient and
# the queue.
DDP_WORKER = """
import sys, torch, torch.distributed as tdist
from dreamteacher.baselines.ssl import build_method
from dreamteacher.engine import dist
rank, tmp = int(sys.argv[1]), sys.argv[2]
tdist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
env = dist.DistEnv(rank, 2, 0)
for method in sys.argv[3:]:
    torch.manual_seed(0)
    net = build_method(method, "test_resnet", [32, 32], memory_bank=8).eval()
    views = [torch.load(f"{tmp}/views.pt")[i][2 * rank : 2 * rank + 2] for i in range(2)]
    model = dist.wrap(net, env, torch.device("cpu"))
    loss = model(views, 0.0)
    loss.backward()
    bank = getattr(getattr(net, "criterion", None), "memory_bank", None)
    torch.save({"loss": loss.detach(), "grad": next(net.backbone.parameters()).grad,
                "bank": None if bank is None else bank.bank}, f"{tmp}/{method}{rank}.pt")
dist.teardown(env)
"""


def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path):
    """SimCLR's negatives and MoCo's queue span the ranks: the loss averaged over 2 ranks, the
    all-reduced gradient and the queue after the step equal one process's over all 4 images
    (eval-mode BatchNorm, so no statistic depends on how the batch is split)."""
    import subprocess

    torch.manual_seed(1)
    views = [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)]
    torch.save(views, tmp_path / "views.pt")
    methods = ["simclr", "mocov2"]
    cmd = [sys.executable, "-c", DDP_WORKER]
    procs = [subprocess.Popen([*cmd, str(r), str(tmp_path), *methods]) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for method in methods:
        ranks = [torch.load(tmp_path / f"{method}{r}.pt") for r in range(2)]
        torch.manual_seed(0)
        net = build_method(method, "test_resnet", [32, 32], memory_bank=8).eval()
        loss = net(views, 0.0)
        loss.backward()
        torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
        for r in ranks:
            torch.testing.assert_close(r["grad"], next(net.backbone.parameters()).grad)
        if method == "mocov2":  # both ranks' 4 keys went into each rank's queue, in rank order
            for r in ranks:
                torch.testing.assert_close(r["bank"], net.criterion.memory_bank.bank)
