"""pretrain: feature distillation of a frozen teacher into a timm backbone (docs/method.md:
"Teacher", "Student and regressor", "Losses", "Pretraining recipe"), and label or mix
distillation of a feature interpreter's soft labels ("Label distillation and mix distillation").

One step: the loop (engine/loop.py) hands each micro-batch to `distill_losses` below, whose
loss is `losses.mix_distillation_loss`. Runs as one process or under torchrun (DDP over
student + regressor; engine/dist.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamteacher.config import MODES, PretrainConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine.loop import epoch_schedule
from dreamteacher.engine.session import Session
from dreamteacher.errors import UserError
from dreamteacher.losses import AT_SOURCES, LAMBDA_AT, match_size, mix_distillation_loss, whiten
from dreamteacher.randomness import keyed_hflip
from dreamteacher.reporting import FEATURES, figures, pca_rgb
from dreamteacher.runfiles import atomic_save, atomic_write
from dreamteacher.runtime import resolve_precision, seed_everything
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import resolve_teacher
from dreamteacher.teachers.cache import CachedTargets, FeatureCache
from dreamteacher.teachers.interpreter import FeatureInterpreter, load_interpreter


def distill_losses(
    model: torch.nn.Module,
    teacher: torch.nn.Module | None,
    x: torch.Tensor,
    keys: list[int],
    lambda_at: float = LAMBDA_AT,
    channels_last: bool = False,
    cached: list[torch.Tensor] | None = None,
    interpreter: FeatureInterpreter | None = None,
    ld: dict | None = None,
    at_source: str = AT_SOURCES[0],
) -> dict[str, torch.Tensor]:
    """One micro-batch of distillation, on the device (under the loop's autocast): flip,
    teacher targets, student predictions, losses. x # B, 3, H, W in [0, 1]. `cached`: the
    targets read from a feature cache (# B, C_l, h_l, w_l each, any dtype; x then arrives
    flipped like them) instead of the teacher's. With an interpreter, its logits on the same
    teacher features are the soft labels of L_ld (`ld`: lambda_ld, tau, tau_squared).
    `at_source`: L_AT on the regressor's predictions or on the backbone's C2..C5."""
    if cached is None:
        (x,) = keyed_hflip(keys, x)  # horizontal flip: the only augmentation
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if cached is not None:
        targets = [t.float() for t in cached]  # fp16 on disk, widened on the device
    else:
        # frozen teacher under inference mode; clone() makes its outputs normal tensors
        targets = [f.clone() for f in teacher(x, keys)]
    soft = None
    if interpreter is not None:
        with torch.inference_mode():
            soft = interpreter(targets).clone()  # B, K, H/4, W/4: the soft labels
    (preds, logits), feats = model(x, with_backbone=True)  # feats: C2..C5
    at_student = feats if at_source == "backbone" else None
    return mix_distillation_loss(
        preds, targets, logits, soft, lambda_at, **(ld or {}), at_student=at_student
    )


def pretrain(cfg: PretrainConfig) -> Path:
    """Distil; writes RUN/final.pt (backbone + regressor weights) and returns the run folder."""
    with Session(cfg) as s:
        teacher = resolve_teacher(cfg, synthetic_ok=True).to(s.device)  # frozen
        interpreter = check_mode(cfg, teacher)
        if interpreter is not None:
            interpreter = interpreter.to(s.device)
        data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
        items = data
        synthetic = getattr(teacher, "synthetic", False)  # a GAN: distilled on its own images
        if synthetic:
            teacher.psi = cfg.truncation_psi
            items = Draws(len(data))  # as many synthesized images per epoch as data has
        elif cfg.feature_cache:  # the loader (its workers, on CUDA) reads the cached targets
            cache = FeatureCache(cfg.feature_cache, data)
            if cache.channels != teacher.channels:
                raise UserError(
                    f"feature cache {cfg.feature_cache} has channels {cache.channels}, "
                    f"the teacher {teacher.channels}; rebuild the cache"
                )
            teacher = teacher.cpu()  # not run: the cache supplies its features
            built, now = cache.meta.get("precision"), resolve_precision(s.device, cfg.precision)
            if built and built != now and s.main:
                print(f"note: feature cache {cfg.feature_cache} was encoded in {built}, this "
                      f"run computes in {now}; the targets stay as encoded")  # fmt: skip
            items = CachedTargets(data, cache, cfg.seed)
        elif cfg.compile_teacher:
            teacher.compile_features()
        seed_everything(cfg.seed)  # same init on every rank
        backbone = Backbone(cfg.backbone, cfg.strides)
        student = Student(
            backbone,
            FeatureRegressor(
                backbone.channels,
                teacher.channels if cfg.mode != "label" else [],  # label: no feature heads
                cfg.regressor_channels,
                interpreter.num_classes if interpreter is not None else None,
                cfg.logit_head,
            ),
        ).to(s.device)
        channels_last = s.device.type == "cuda"
        if channels_last:
            student = student.to(memory_format=torch.channels_last)
        run = s.open_run()
        steps_per_epoch, total, warmup = epoch_schedule(len(data), s.global_batch, cfg)
        if s.main:
            soft = f", interpreter {cfg.interpreter}, {cfg.logit_head} logit head"
            print(
                f"pretrain ({cfg.mode} distillation): {cfg.backbone} <- teacher {cfg.teacher} "
                f"(t={cfg.t}){soft if interpreter else ''}; {len(data)} images "
                f"at {cfg.image_size[0]}x{cfg.image_size[1]}, {total} steps "
                f"({total / steps_per_epoch:g} epochs) of global batch {s.global_batch} "
                f"({s.env.world_size} rank(s) x {cfg.batch_size} x "
                f"{cfg.accum_steps} accumulation), device {s.device}"
            )
            for line in getattr(teacher, "tap_description", lambda: [])():
                print(f"  teacher {line}")
        ld = {"lambda_ld": cfg.lambda_ld, "tau": cfg.tau, "tau_squared": cfg.tau_squared}

        def micro_step(model, batch, keys, step) -> dict[str, torch.Tensor]:
            x, *cached = batch  # B, 3, H, W (+ the cached targets, if any)
            if synthetic:  # the teacher's images G(z_key) and its features of them
                x, cached = teacher.sample(keys, s.device)
                x, cached = x.clone(), [f.clone() for f in cached]  # (out of inference mode)
            return distill_losses(
                model, teacher, x, keys, cfg.lambda_at, channels_last, cached or None,
                interpreter, ld, cfg.at_source,
            )  # fmt: skip

        s.fit(
            student,
            micro_step,
            items,
            run,
            total=total,
            warmup=warmup,
            desc="pretrain",
            steps_per_epoch=steps_per_epoch,
            step_keyed=items is not data and not synthetic,
        )
        if s.main:
            atomic_save(
                {
                    "backbone": cfg.backbone,
                    "strides": cfg.strides,
                    "backbone_state": backbone.state_dict_for_export(),
                    "regressor_state": student.regressor.state_dict(),
                    "teacher_channels": teacher.channels,
                    "image_size": cfg.image_size,
                    "mode": cfg.mode,
                    "logit_head": cfg.logit_head if interpreter is not None else None,
                    "method": "dreamteacher"
                    if cfg.mode == "feature"
                    else f"dreamteacher-{cfg.mode}",
                },
                run.dir / "final.pt",
            )
            feature_snapshot(student, teacher, data, s.device, run, total)
            print(
                f"pretrained backbone in {run.dir / 'final.pt'}; export it with "
                f"`dreamteacher export {run.dir} --out BB`"
            )
        return run.dir


FEATURE_IMAGES = 4  # images of the report's feature picture: the data's first


@torch.no_grad()
def feature_snapshot(student: Student, teacher, data, device: torch.device, run, step: int) -> None:
    """RUN/features.npz for the report: for the data's first FEATURE_IMAGES images (a GAN
    teacher: its images of keys 0, 1, ...), the teacher's
    whitened maps (the regression targets) and the student's predictions of them at each
    level, both projected on the targets' first three principal components, as RGB. Nothing
    for label distillation (no feature predictions). With logger=tensorboard, also an image."""
    if not student.regressor.heads:
        return
    keys = list(range(min(FEATURE_IMAGES, len(data))))
    on = next(teacher.parameters()).device  # (the CPU when a feature cache stood in for it)
    if getattr(teacher, "synthetic", False):  # a GAN: its own first images
        x, targets = teacher.sample(keys, on)
        x = x.cpu()
    else:
        x = torch.stack([data[i] for i in keys])  # B, 3, H, W
        targets = teacher(x.to(on), keys)
    student.eval()  # what the exported backbone computes
    preds = student(x.to(device)).features
    arrays = {"images": (x.permute(0, 2, 3, 1) * 255).round().byte().numpy()}
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        p = p.float().cpu()
        target = whiten(match_size(t.float().cpu(), p))  # B, C, h, w
        arrays[f"teacher_{i}"], arrays[f"student_{i}"] = (c.numpy() for c in pca_rgb(target, p))
    arrays["strides"] = np.array(teacher.strides[: len(preds)])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(run.dir / FEATURES, write)
    if run.board() is not None:
        levels = [
            {
                "stride": int(st),
                "teacher": arrays[f"teacher_{i}"],
                "student": arrays[f"student_{i}"],
            }
            for i, st in enumerate(arrays["strides"])
        ]
        run.log_image("features", figures.feature_pca(arrays["images"], levels), step)


class Draws(torch.utils.data.Dataset):
    """n empty items: a GAN teacher's batches are synthesized from the samples' keys."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1)


def check_mode(cfg: PretrainConfig, teacher) -> FeatureInterpreter | None:
    """The interpreter for label/mix distillation, None for feature distillation."""
    if cfg.mode not in MODES:
        raise UserError(f"unknown --mode '{cfg.mode}'; choose one of {', '.join(MODES)}")
    if cfg.at_source not in AT_SOURCES:
        raise UserError(
            f"unknown at_source '{cfg.at_source}'; choose one of {', '.join(AT_SOURCES)}"
        )
    if getattr(teacher, "synthetic", False):
        if cfg.mode != "feature":
            raise UserError(
                f"--mode {cfg.mode} needs the teacher's features of labelled images, and a GAN "
                "teacher has no encoder; use --mode feature"
            )
        if cfg.feature_cache:
            raise UserError(
                "a GAN teacher synthesizes new images at every step; drop feature_cache"
            )
    if cfg.mode == "feature":
        if cfg.interpreter:
            raise UserError(
                "--interpreter is only used with --mode label or mix; drop it or set the mode"
            )
        return None
    if not cfg.interpreter:
        raise UserError(
            f"--mode {cfg.mode} needs --interpreter RUN (a train-interpreter output folder)"
        )
    interp, meta = load_interpreter(cfg.interpreter)
    if interp.channels != teacher.channels or list(meta["strides"]) != list(cfg.strides):
        raise UserError(
            f"interpreter {cfg.interpreter} was trained on a teacher with channels "
            f"{interp.channels} at strides {meta['strides']}, this one has {teacher.channels} "
            f"at {cfg.strides}; train the interpreter on --teacher {cfg.teacher}"
        )
    if sorted(meta["t"]) != sorted(cfg.t):
        raise UserError(
            f"interpreter {cfg.interpreter} reads teacher features at t={meta['t']}, pretrain "
            f"uses t={cfg.t}; pass t={meta['t'][0] if len(meta['t']) == 1 else meta['t']}"
        )
    return interp
