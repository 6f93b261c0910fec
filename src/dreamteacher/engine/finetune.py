"""finetune: semantic segmentation (UPerNet head, all weights trainable) and its evaluation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamteacher.config import FinetuneConfig
from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.engine import dist
from dreamteacher.engine.common import (
    NonFiniteGuard,
    Run,
    atomic_json,
    atomic_save,
    autocast,
    loop_state,
    lr_at,
    micro_batches,
    param_groups,
    progress,
    restore,
    seed_everything,
    track,
    training_loader,
)
from dreamteacher.engine.randomness import keyed_hflip, sample_keys
from dreamteacher.errors import UserError
from dreamteacher.eval import confusion_matrix, iou_per_class, mean_iou
from dreamteacher.export import read_exported
from dreamteacher.student import Backbone, Segmenter


def build_segmenter(backbone: str, weights: str, num_classes: int, ch: int = 256) -> Segmenter:
    bb = Backbone(backbone)
    if weights != "scratch":
        name, sd = read_exported(weights)
        if name != backbone:
            raise UserError(
                f"--weights {weights} holds a {name} but --backbone is {backbone}; "
                f"pass --backbone {name}"
            )
        own = bb.model.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise UserError(f"{weights}/model.safetensors lacks {missing[0]}; re-export it")
        bb.model.load_state_dict({k: sd[k] for k in own}, strict=True)
    return Segmenter(bb, num_classes, ch)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    batch_size: int = 8,
) -> torch.Tensor:
    """Confusion matrix over the whole split; logits are upsampled to each mask's size."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in track(loader, "evaluate"):
        logits = model(x.to(device))  # B, K, h, w
        logits = F.interpolate(logits, y.shape[-2:], mode="bilinear", align_corners=False)
        cm += confusion_matrix(logits.argmax(1).cpu(), y, num_classes, ignore_index)
    return cm


def finetune(cfg: FinetuneConfig) -> dict:
    """Train, evaluate on the test split (val if none), write RUN/metrics.json; return it.
    Runs under torchrun too (DDP over backbone + head; evaluation on rank 0)."""
    env, device = dist.setup(cfg.device)
    folder = MaskFolder(cfg.data, strict=cfg.strict)
    if not folder.splits.get("train"):
        raise UserError(f"{folder.root}/splits.json has no train ids; add a 'train' list")
    train_ids = select_labeled(folder.splits["train"], cfg.labels, cfg.seed)
    split = folder.eval_split(cfg.eval_split)
    train_set = folder.dataset(train_ids, cfg.image_size)
    eval_set = folder.dataset(folder.splits[split], cfg.image_size, full_res_masks=True)
    seed_everything(cfg.seed)  # same init on every rank
    net = build_segmenter(cfg.backbone, cfg.weights, folder.num_classes, cfg.head_channels)
    if cfg.freeze_backbone:
        net.freeze_backbone()
    net = net.to(device)
    run = Run(cfg.out, cfg, keep=cfg.keep_checkpoints, rank=env.rank)
    if env.main:
        atomic_json(
            {"labels": len(train_ids), "seed": cfg.seed, "ids": train_ids},
            run.dir / "labeled_ids.json",
        )
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    trainable = [p for p in net.parameters() if p.requires_grad]
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps

    start = restore(run, cfg.resume, net, opt)
    if start == 0:
        seed_everything(cfg.seed + env.rank)  # dropout noise: its own stream per rank
    model = dist.wrap(net, env, device, cfg.sync_bn, cfg.compile)

    sampler, loader = training_loader(train_set, cfg, env, device, start, cfg.steps)
    if env.main:
        print(
            f"finetune{' (frozen backbone)' if cfg.freeze_backbone else ''}: "
            f"{cfg.backbone} ({cfg.weights}) on {len(train_ids)} labelled images, "
            f"{folder.num_classes} classes, {cfg.steps} steps of global batch {global_batch} at "
            f"{cfg.image_size[0]}x{cfg.image_size[1]}, device {device}"
        )
    model.train()
    guard = NonFiniteGuard(cfg.max_bad_steps, run, net)
    with progress(cfg.steps, start, "finetune", disable=not env.main) as bar:
        t0 = time.time()
        for step, (idx, x, y) in zip(range(start, cfg.steps), loader):
            lr = lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            guard.begin()
            step_loss = torch.zeros((), device=device)
            for m, (idx_m, x_m, y_m) in micro_batches(cfg.accum_steps, idx, x, y):
                keys = sample_keys(cfg.seed, step, idx_m)
                x_m, y_m = keyed_hflip(keys, x_m.to(device), y_m.to(device))  # B,3,H,W / B,H,W
                with (
                    autocast(device, cfg.precision),
                    dist.no_sync(model, sync=m == cfg.accum_steps - 1),
                ):
                    logits = model(x_m)
                    loss = F.cross_entropy(logits.float(), y_m, ignore_index=folder.ignore_index)
                    (loss / cfg.accum_steps).backward()
                step_loss += loss.detach() / cfg.accum_steps
            # the gradients are all-reduced, so every rank takes the same decision
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, float("inf"))
            ok = guard.ok(step, step_loss, gnorm)  # a NaN/inf step is skipped
            if ok:
                opt.step()
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:  # host syncs only when logging
                logs = dist.mean_over_ranks({"loss": step_loss.item()}, env)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if ok:
                    run.log({"step": done, **logs, "lr": lr, "time": time.time() - t0})
            if done % cfg.save_every == 0 or done == cfg.steps:
                run.save_checkpoint(
                    done,
                    {
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        **loop_state(sampler, cfg.steps, cfg.warmup_steps),
                    },
                )
    if not env.main:
        dist.teardown(env)
        return {}
    model = net
    train_time = time.time() - t0
    # masks are compared at full resolution: batch only when they all have one size
    eval_bs = cfg.eval_batch_size if len(eval_set.mask_sizes) == 1 else 1
    cm = evaluate(model, eval_set, folder.num_classes, folder.ignore_index, device, eval_bs)
    iou = iou_per_class(cm)
    metrics = {
        "miou": mean_iou(cm),
        "per_class_iou": {
            n: (None if math.isnan(v) else float(v) * 100)
            for n, v in zip(folder.class_names, iou.tolist(), strict=True)
        },
        "split": split,
        "labels": len(train_ids),
        "seed": cfg.seed,
        "backbone": cfg.backbone,
        "weights": cfg.weights,
        "steps": cfg.steps,
        "freeze_backbone": cfg.freeze_backbone,
        "image_size": cfg.image_size,
        "train_time_s": train_time,
        "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1) * 100),
    }
    atomic_json(metrics, run.dir / "metrics.json")
    atomic_save(model.state_dict(), run.dir / "model.pt")
    print(format_metrics(metrics))
    dist.teardown(env)
    return metrics


def format_metrics(m: dict) -> str:
    rows = [f"{'class':<16} IoU %"] + [
        f"{k:<16} {'-' if v is None else f'{v:5.1f}'}" for k, v in m["per_class_iou"].items()
    ]
    rows.append(f"{'mIoU':<16} {m['miou']:5.1f}   ({m['split']} split, {m['labels']} labels)")
    return "\n".join(rows)


def load_metrics(run: str | Path) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())
