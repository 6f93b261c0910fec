"""train-interpreter: the feature interpreter on a frozen teacher's features of N labelled
images (METHOD.md section 4), then its own test-split evaluation ("the teacher itself as a
segmenter"). Writes RUN/interpreter.pt (what `pretrain --mode label|mix` reads) and
RUN/metrics.json."""

from __future__ import annotations

from pathlib import Path

from dreamteacher.config import InterpreterConfig
from dreamteacher.engine import dist
from dreamteacher.engine.common import Run, epoch_schedule, resolve_teacher, seed_everything
from dreamteacher.engine.supervised import LabelledData, evaluate_and_report, fit
from dreamteacher.losses import segmentation_loss
from dreamteacher.teachers.interpreter import (
    FeatureInterpreter,
    TeacherSegmenter,
    save_interpreter,
)


def train_interpreter(cfg: InterpreterConfig) -> dict:
    """Train, evaluate, write RUN/interpreter.pt and RUN/metrics.json; return the metrics."""
    env, device = dist.setup(cfg.device)
    teacher = resolve_teacher(cfg)
    data = LabelledData(cfg)
    folder = data.folder
    seed_everything(cfg.seed)  # same init on every rank
    interp = FeatureInterpreter(teacher.channels, folder.num_classes, cfg.channels, cfg.dropout)
    net = TeacherSegmenter(teacher, interp).to(device)
    run = Run(cfg.out, cfg, cfg.keep_checkpoints, env.rank, env.world_size)
    data.save_ids(run, cfg.seed)
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps
    steps_per_epoch, steps, warmup = epoch_schedule(len(data.train), global_batch, cfg)
    if env.main:
        print(
            f"train-interpreter: teacher {cfg.teacher} (t={cfg.t}, channels {teacher.channels}) "
            f"on {len(data.train_ids)} labelled images, {folder.num_classes} classes, {steps} "
            f"steps of global batch {global_batch} at {cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"device {device}"
        )

    def step(model, x, y, keys):
        logits = model(x, keys)  # B, K, H, W; fresh keyed noise for every sample and step
        return segmentation_loss(logits, y, folder.ignore_index, cfg.dice_weight)

    betas = (cfg.betas[0], cfg.betas[1])
    train_time = fit(
        cfg, net, step, data.train, run, env, device, steps, warmup, betas, "interpret"
    )
    if not env.main:
        dist.teardown(env)
        return {}
    meta = {
        "teacher": str(Path(cfg.teacher).resolve()),
        "t": cfg.t,
        "strides": cfg.strides,
        "image_size": cfg.image_size,
        "class_names": folder.class_names,
        "ignore_index": folder.ignore_index,
    }
    save_interpreter(run.dir / "interpreter.pt", interp, meta)
    metrics = evaluate_and_report(
        net,
        data,
        cfg,
        run,
        device,
        teacher=meta["teacher"],
        t=cfg.t,
        steps=steps,
        train_time_s=train_time,
    )
    print(
        f"interpreter in {run.dir / 'interpreter.pt'}; distil it with `dreamteacher pretrain "
        f"--mode mix --interpreter {run.dir} --teacher {cfg.teacher} ...`"
    )
    dist.teardown(env)
    return metrics
