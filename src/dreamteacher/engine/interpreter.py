"""train-interpreter: the feature interpreter on a frozen teacher's features of N labelled
images (docs/method.md, "Label distillation and mix distillation"), then its own test-split
evaluation ("the teacher itself as a segmenter"). Writes RUN/interpreter.pt (what
`pretrain --mode label|mix` reads) and RUN/metrics.json."""

from __future__ import annotations

from pathlib import Path

from dreamteacher.config import InterpreterConfig
from dreamteacher.engine.loop import epoch_schedule
from dreamteacher.engine.session import Session
from dreamteacher.engine.supervised import LabelledData, evaluate_and_report
from dreamteacher.losses import segmentation_loss
from dreamteacher.randomness import keyed_hflip
from dreamteacher.runtime import seed_everything
from dreamteacher.teachers import resolve_teacher
from dreamteacher.teachers.interpreter import (
    FeatureInterpreter,
    TeacherSegmenter,
    save_interpreter,
)


def train_interpreter(cfg: InterpreterConfig) -> dict:
    """Train, evaluate, write RUN/interpreter.pt and RUN/metrics.json; return the metrics."""
    with Session(cfg) as s:
        teacher = resolve_teacher(cfg)
        data = LabelledData(cfg)
        folder = data.folder
        seed_everything(cfg.seed)  # same init on every rank
        interp = FeatureInterpreter(teacher.channels, folder.num_classes, cfg.channels, cfg.dropout)
        net = TeacherSegmenter(teacher, interp).to(s.device)
        run = s.open_run()
        data.save_ids(run, cfg.seed)
        steps_per_epoch, steps, warmup = epoch_schedule(len(data.train), s.global_batch, cfg)
        if s.main:
            print(
                f"train-interpreter: teacher {cfg.teacher} (t={cfg.t}, channels "
                f"{teacher.channels}) on {len(data.train_ids)} labelled images, "
                f"{folder.num_classes} classes, {steps} steps of global batch {s.global_batch} "
                f"at {cfg.image_size[0]}x{cfg.image_size[1]}, device {s.device}"
            )

        def micro_step(model, batch, keys, step):
            x, y = keyed_hflip(keys, *batch)  # B, 3, H, W and B, H, W
            logits = model(x, keys)  # B, K, H, W; fresh keyed noise for every sample and step
            return segmentation_loss(logits, y, folder.ignore_index, cfg.dice_weight)

        train_time = s.fit(
            net, micro_step, data.train, run, total=steps, warmup=warmup, desc="interpret",
            reseed=True,
        )  # fmt: skip
        if not s.main:
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
            s.device,
            teacher=meta["teacher"],
            t=cfg.t,
            steps=steps,
            train_time_s=train_time,
        )
        print(
            f"interpreter in {run.dir / 'interpreter.pt'}; distil it with `dreamteacher "
            f"pretrain --mode mix --interpreter {run.dir} --teacher {cfg.teacher} ...`"
        )
        return metrics
