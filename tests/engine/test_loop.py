"""engine/loop.py: the one optimizer loop, on a one-parameter model whose every step can be
computed by hand; and its micro-batching against one pass over the whole batch."""

import json
import math
from dataclasses import dataclass, replace

import pytest
import torch

from dreamteacher.engine.dist import DistEnv
from dreamteacher.engine.loop import (
    EMA,
    WARMUP_CAP,
    cap_warmup,
    forward_backward,
    lr_at,
    optimize,
)
from dreamteacher.randomness import sample_keys
from dreamteacher.runfiles import Run


@dataclass
class _Cfg:  # the fields of a run config that the loop reads
    lr: float = 0.1
    batch_size: int = 2
    accum_steps: int = 1
    log_every: int = 1
    save_every: int = 2
    max_bad_steps: int = 3
    resume: bool = False
    seed: int = 0
    precision: str = "auto"


class _Sampler:  # what loop_state records of the data order
    seed, batch_size, world_size, steps_per_epoch = 0, 2, 1, 4


def _batches(n=10):
    """Step k's batch: dataset indices (k, k + 100) and their values (k, k + 1)."""
    return [(torch.tensor([k, k + 100]), torch.tensor([[float(k)], [k + 1.0]])) for k in range(n)]


def _run(tmp_path, bad=(), decay=None, warmup=1, **kw):
    """w starts at 1; the loss of step k is (w - 1)^2 + k * w, so dL/dw = 2 (w - 1) + k.
    Plain SGD: w <- w - lr_k * grad. The steps in `bad` return a NaN loss."""
    w = torch.nn.Parameter(torch.ones(()))
    net = torch.nn.Module()
    net.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    cfg = replace(_Cfg(), **kw.pop("cfg", {}))
    run = Run(tmp_path / "run", cfg, keep=10)
    ema = EMA(net, decay) if decay is not None else None
    seen = []

    def micro_step(model, batch, keys, step):
        (x,) = batch
        assert x[:, 0].tolist() == [step, step + 1]  # the loader's items, in order
        seen.append(keys)
        loss = (model.w - 1) ** 2 + step * model.w
        if step in bad:
            loss = loss * float("nan")
        return {"loss": loss, "term": torch.tensor(float(step))}

    seconds = optimize(
        _batches(),
        _Sampler(),
        micro_step,
        net,
        net,
        opt,
        run,
        DistEnv(),
        torch.device("cpu"),
        cfg,
        start=0,
        total=5,
        warmup=warmup,
        desc="test",
        ema=ema,
        **kw,
    )
    logs = [json.loads(x) for x in run.metrics_path.read_text().splitlines()]
    return w.item(), logs, ema, run, seconds, seen


def _by_hand(bad=(), clip=math.inf, decay=None):
    w, e = 1.0, 1.0
    for k in range(5):
        g = 2 * (w - 1) + k
        g = max(-clip, min(clip, g))
        if k not in bad:
            w -= lr_at(k, 5, 1, 0.1) * g
            if decay is not None:
                d = min(decay, (1 + k) / (10 + k))
                e += (1 - d) * (w - e)
    return w, e


def test_schedule_logs_keys_and_checkpoints(tmp_path):
    w, logs, _, run, seconds, seen = _run(tmp_path, steps_per_epoch=2)
    assert w == pytest.approx(_by_hand()[0], abs=1e-6) and seconds > 0
    # each sample's key comes from (seed, step, its dataset index)
    assert seen == [sample_keys(0, k, torch.tensor([k, k + 100])) for k in range(5)]
    # one record per step: the warm-up + cosine lr, the terms, epochs and images seen
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in logs] == pytest.approx([lr_at(k, 5, 1, 0.1) for k in range(5)])
    assert [r["term"] for r in logs] == [0, 1, 2, 3, 4]
    assert [r["epoch"] for r in logs] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["images_seen"] for r in logs] == [2, 4, 6, 8, 10]
    assert "grad_norm" not in logs[0]  # no clipping asked for: not logged
    # every save_every steps and at the end
    assert [p.name for p in run.checkpoints()] == [f"step_0000000{k}.pt" for k in (2, 4, 5)]
    last = torch.load(run.checkpoints()[-1], weights_only=False)
    assert last["model"]["w"].item() == pytest.approx(w) and "ema" not in last
    assert last["lr_schedule"] == {"kind": "warmup_cosine", "total_steps": 5, "warmup_steps": 1}


def test_warm_up_is_capped_when_the_run_is_short(tmp_path):
    """A warm-up longer than WARMUP_CAP of the steps run (e.g. warm-up epochs with max_steps
    cutting the run) is cut, with a warning: the lr peaks early and decays to the end."""
    assert cap_warmup(1, 5) == 1 and cap_warmup(900, 500, warn=False) == int(WARMUP_CAP * 500)
    with pytest.warns(UserWarning, match="warm-up of 4 steps cut to 1, 25% of the 5 steps"):
        _, logs, _, run, _, _ = _run(tmp_path, warmup=4)
    lrs = [r["lr"] for r in logs]
    assert lrs == pytest.approx([lr_at(k, 5, 1, 0.1) for k in range(5)])
    assert lrs[0] == max(lrs) and lrs[-1] < 0.2 * lrs[0]  # peaks at step 1, decays to the end
    last = torch.load(run.checkpoints()[-1], weights_only=False)
    assert last["lr_schedule"]["warmup_steps"] == 1


def test_ema_follows_the_good_steps_with_its_warm_up(tmp_path):
    w, _, ema, run, _, _ = _run(tmp_path, bad={2}, decay=0.5)
    w_hand, e_hand = _by_hand(bad={2}, decay=0.5)
    assert w == pytest.approx(w_hand, abs=1e-6)
    assert ema.module.w.item() == pytest.approx(e_hand, abs=1e-6)
    last = torch.load(run.checkpoints()[-1], weights_only=False)
    assert last["ema"]["w"].item() == pytest.approx(e_hand, abs=1e-6)


def test_non_finite_step_is_skipped(tmp_path):
    with pytest.warns(UserWarning, match="step 3: non-finite"):
        w, logs, _, _, _, _ = _run(tmp_path, bad={2})
    assert w == pytest.approx(_by_hand(bad={2})[0], abs=1e-6)
    assert [r["step"] for r in logs] == [1, 2, 4, 5]  # no log line for the skipped step


def test_gradient_clipping_and_its_log(tmp_path):
    w, logs, _, _, _, _ = _run(tmp_path, max_grad_norm=0.5)
    assert w == pytest.approx(_by_hand(clip=0.5)[0], abs=1e-6)
    # the norm before clipping is logged: |2 (w - 1) + k| at step k
    assert logs[0]["grad_norm"] == pytest.approx(0.0) and logs[4]["grad_norm"] > 3


@pytest.mark.parametrize("accum", [2, 3])
def test_micro_batches_sum_to_the_whole_batch(accum):
    """`accum` micro-batches (rows m::accum) give the gradient and the mean loss of one pass
    over the whole batch, each sample with the key of its own dataset index."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    idx, x = torch.arange(6) + 10, torch.randn(6, 3)
    seen = {}

    def micro_step(model, batch, keys, step):
        (xm,) = batch
        for k, row in zip(keys, xm, strict=True):
            seen[k] = row
        return {"loss": model(xm).pow(2).mean()}

    terms = forward_backward(micro_step, net, (idx, x), 7, accum, 0, torch.device("cpu"), "fp32")
    grad = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    whole = net(x).pow(2).mean()
    whole.backward()
    assert terms["loss"].item() == pytest.approx(whole.item(), rel=1e-6)
    for g, p in zip(grad, net.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)
    keys = sample_keys(0, 7, idx)
    assert sorted(seen) == sorted(keys)
    assert all(torch.equal(seen[k], x[i]) for i, k in enumerate(keys))
