"""engine/loop.py: the one optimizer loop, on a one-parameter model whose every step can be
computed by hand."""

import json
import math
from dataclasses import dataclass, replace

import pytest
import torch

from dreamteacher.engine.common import Run, lr_at
from dreamteacher.engine.dist import DistEnv
from dreamteacher.engine.loop import optimize


@dataclass
class _Cfg:  # the fields of a run config that the loop reads
    lr: float = 0.1
    batch_size: int = 2
    accum_steps: int = 1
    log_every: int = 1
    save_every: int = 2
    max_bad_steps: int = 3
    resume: bool = False


class _Sampler:  # what loop_state records of the data order
    seed, batch_size, world_size, steps_per_epoch = 0, 2, 1, 4


def _run(tmp_path, bad=(), **kw):
    """w starts at 1; the loss of step k is (w - 1)^2 + k * w, so dL/dw = 2 (w - 1) + k.
    Plain SGD: w <- w - lr_k * grad. The steps in `bad` return a NaN loss."""
    w = torch.nn.Parameter(torch.ones(()))
    net = torch.nn.Module()
    net.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    cfg = replace(_Cfg(), **kw.pop("cfg", {}))
    run = Run(tmp_path / "run", cfg, keep=10)
    updates = []

    def step_fn(step, batch):
        assert batch == f"batch {step}"  # the loader's items reach step_fn in order
        loss = (w - 1) ** 2 + step * w
        if step in bad:
            loss = loss * float("nan")
        loss.backward()
        return {"loss": loss.detach(), "term": torch.tensor(float(step))}

    seconds = optimize(
        [f"batch {k}" for k in range(10)],
        _Sampler(),
        step_fn,
        net,
        opt,
        run,
        DistEnv(),
        cfg,
        start=0,
        total=5,
        warmup=2,
        desc="test",
        after_update=updates.append,
        extra_state=lambda: {"extra": len(updates)},
        **kw,
    )
    logs = [json.loads(x) for x in run.metrics_path.read_text().splitlines()]
    return w.item(), logs, updates, run, seconds


def _by_hand(bad=(), clip=math.inf):
    w = 1.0
    for k in range(5):
        g = 2 * (w - 1) + k
        g = max(-clip, min(clip, g))
        if k not in bad:
            w -= lr_at(k, 5, 2, 0.1) * g
    return w


def test_schedule_updates_logs_and_checkpoints(tmp_path):
    w, logs, updates, run, seconds = _run(tmp_path, steps_per_epoch=2)
    assert w == pytest.approx(_by_hand(), abs=1e-6)
    assert updates == [0, 1, 2, 3, 4] and seconds > 0
    # one record per step: the warm-up + cosine lr, the terms, epochs and images seen
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in logs] == pytest.approx([lr_at(k, 5, 2, 0.1) for k in range(5)])
    assert [r["term"] for r in logs] == [0, 1, 2, 3, 4]
    assert [r["epoch"] for r in logs] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["images_seen"] for r in logs] == [2, 4, 6, 8, 10]
    assert "grad_norm" not in logs[0]  # no clipping asked for: not logged
    # every save_every steps and at the end, with the caller's extra state
    assert [p.name for p in run.checkpoints()] == [f"step_0000000{k}.pt" for k in (2, 4, 5)]
    last = torch.load(run.checkpoints()[-1], weights_only=False)
    assert last["model"]["w"].item() == pytest.approx(w) and last["extra"] == 5
    assert last["lr_schedule"] == {"kind": "warmup_cosine", "total_steps": 5, "warmup_steps": 2}


def test_non_finite_step_is_skipped(tmp_path):
    with pytest.warns(UserWarning, match="step 3: non-finite"):
        w, logs, updates, _, _ = _run(tmp_path, bad={2})
    assert w == pytest.approx(_by_hand(bad={2}), abs=1e-6)
    assert updates == [0, 1, 3, 4]  # no EMA update after a skipped step
    assert [r["step"] for r in logs] == [1, 2, 4, 5]  # nor a log line


def test_gradient_clipping_and_its_log(tmp_path):
    w, logs, _, _, _ = _run(tmp_path, max_grad_norm=0.5)
    assert w == pytest.approx(_by_hand(clip=0.5), abs=1e-6)
    # the norm before clipping is logged: |2 (w - 1) + k| at step k
    assert logs[0]["grad_norm"] == pytest.approx(0.0) and logs[4]["grad_norm"] > 3
