"""pretrain: feature distillation of a frozen teacher into a timm backbone (METHOD.md 1-3, 5).

Runs as one process or under torchrun (DDP over student + regressor; engine/dist.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamteacher.config import PretrainConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine import dist
from dreamteacher.engine.common import (
    Run,
    atomic_save,
    autocast,
    epoch_schedule,
    micro_batches,
    param_groups,
    resolve_precision,
    resolve_teacher,
    restore,
    seed_everything,
    training_loader,
)
from dreamteacher.engine.loop import optimize
from dreamteacher.engine.randomness import keyed_hflip, sample_keys
from dreamteacher.errors import UserError
from dreamteacher.losses import mix_distillation_loss
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers.cache import CachedTargets, FeatureCache
from dreamteacher.teachers.interpreter import FeatureInterpreter, load_interpreter

MODES = ("feature", "label", "mix")


def distill_forward_backward(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    x: torch.Tensor,
    keys: list[int],
    device: torch.device,
    lambda_at: float = 10.0,
    precision: str = "auto",
    channels_last: bool = False,
    scale: float = 1.0,
    cached: list[torch.Tensor] | None = None,
    interpreter: FeatureInterpreter | None = None,
    ld: dict | None = None,
) -> dict[str, torch.Tensor]:
    """One micro-batch of distillation: flip, teacher targets, student predictions, loss,
    backward (gradients scaled by `scale`). x # B, 3, H, W in [0, 1], on any device.
    `cached`: the targets read from a feature cache (# B, C_l, h_l, w_l each, any dtype; x
    then arrives flipped like them) instead of the teacher's. With an interpreter, its logits
    on the same teacher features are the soft labels of L_ld (`ld`: lambda_ld, tau,
    tau_squared)."""
    x = x.to(device, non_blocking=True)
    if cached is None:
        (x,) = keyed_hflip(keys, x)  # horizontal flip: the only augmentation
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        if cached is not None:  # fp16 on disk, widened on the device
            targets = [t.to(device, non_blocking=True).float() for t in cached]
        else:
            # frozen teacher under inference mode; clone() makes its outputs normal tensors
            targets = [f.clone() for f in teacher(x, keys)]
        soft = None
        if interpreter is not None:
            with torch.inference_mode():
                soft = interpreter(targets).clone()  # B, K, H/4, W/4: the soft labels
        preds, logits = model(x)
        losses = mix_distillation_loss(preds, targets, logits, soft, lambda_at, **(ld or {}))
        (losses["loss"] * scale).backward()
    return losses


def pretrain(cfg: PretrainConfig) -> Path:
    """Distil; writes RUN/final.pt (backbone + regressor weights) and returns the run folder."""
    env, device = dist.setup(cfg.device)
    teacher = resolve_teacher(cfg).to(device)  # frozen
    interpreter = check_mode(cfg, teacher)
    if interpreter is not None:
        interpreter = interpreter.to(device)
    cache = None
    data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
    if cfg.feature_cache:
        cache = FeatureCache(cfg.feature_cache, data)
        if cache.channels != teacher.channels:
            raise UserError(
                f"feature cache {cfg.feature_cache} has channels {cache.channels}, "
                f"the teacher {teacher.channels}; rebuild the cache"
            )
        teacher = teacher.cpu()  # not run: the cache supplies its features
        built, now = cache.meta.get("precision"), resolve_precision(device, cfg.precision)
        if built and built != now and env.main:
            print(f"note: feature cache {cfg.feature_cache} was encoded in {built}, this run "
                  f"computes in {now}; the targets stay as encoded")  # fmt: skip
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
    ).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    run = Run(cfg.out, cfg, cfg.keep_checkpoints, env.rank, env.world_size)
    opt = torch.optim.AdamW(
        param_groups(student, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
    )
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps
    steps_per_epoch, total, warmup = epoch_schedule(len(data), global_batch, cfg)

    start = restore(run, cfg.resume, student, opt)
    model = dist.wrap(student, env, device, cfg.sync_bn, cfg.compile)

    if cache is not None:  # the loader (its workers, on CUDA) reads the cached targets
        items = CachedTargets(data, cache, cfg.seed)
        sampler, loader = training_loader(items, cfg, env, device, start, total, step_keyed=True)
    else:
        sampler, loader = training_loader(data, cfg, env, device, start, total)
    if env.main:
        soft = (
            f", interpreter {cfg.interpreter}, {cfg.logit_head} logit head" if interpreter else ""
        )
        print(
            f"pretrain ({cfg.mode} distillation): {cfg.backbone} <- teacher {cfg.teacher} "
            f"(t={cfg.t}){soft}; "
            f"{len(data)} images "
            f"at {cfg.image_size[0]}x{cfg.image_size[1]}, {total} steps "
            f"({total / steps_per_epoch:g} epochs) of global batch {global_batch} "
            f"({env.world_size} rank(s) x {cfg.batch_size} x "
            f"{cfg.accum_steps} accumulation), device {device}"
        )
        for line in getattr(teacher, "tap_description", lambda: [])():
            print(f"  teacher {line}")
    ld = {"lambda_ld": cfg.lambda_ld, "tau": cfg.tau, "tau_squared": cfg.tau_squared}

    def step_fn(step: int, batch) -> dict[str, torch.Tensor]:
        # B; B, 3, H, W: this rank's share of the global batch (+ cached targets, if any)
        idx, x, *cached = batch
        terms: dict[str, torch.Tensor] = {}
        for m, (idx_m, x_m, *cached_m) in micro_batches(cfg.accum_steps, idx, x, *cached):
            keys = sample_keys(cfg.seed, step, idx_m)
            with dist.no_sync(model, sync=m == cfg.accum_steps - 1):
                losses = distill_forward_backward(
                    model,
                    teacher,
                    x_m,
                    keys,
                    device,
                    cfg.lambda_at,
                    cfg.precision,
                    channels_last,
                    scale=1 / cfg.accum_steps,
                    cached=cached_m or None,
                    interpreter=interpreter,
                    ld=ld,
                )
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float() / cfg.accum_steps
        return terms

    optimize(
        loader,
        sampler,
        step_fn,
        student,
        opt,
        run,
        env,
        cfg,
        start=start,
        total=total,
        warmup=warmup,
        desc="pretrain",
        steps_per_epoch=steps_per_epoch,
    )
    if env.main:
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
                "method": "dreamteacher" if cfg.mode == "feature" else f"dreamteacher-{cfg.mode}",
            },
            run.dir / "final.pt",
        )
        print(
            f"pretrained backbone in {run.dir / 'final.pt'}; export it with "
            f"`dreamteacher export {run.dir} --out BB`"
        )
    dist.teardown(env)
    return run.dir


def check_mode(cfg: PretrainConfig, teacher) -> FeatureInterpreter | None:
    """The interpreter for label/mix distillation, None for feature distillation."""
    if cfg.mode not in MODES:
        raise UserError(f"unknown --mode '{cfg.mode}'; choose one of {', '.join(MODES)}")
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
