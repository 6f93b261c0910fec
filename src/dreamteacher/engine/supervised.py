"""What every supervised segmentation command shares (finetune, train-interpreter,
train-ddpm-seg): N labelled images of a mask folder (trained through engine/session.py), then
the test-split evaluation written to RUN/metrics.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.errors import UserError
from dreamteacher.eval import confusion_matrix, iou_per_class, mean_iou
from dreamteacher.reporting import EXAMPLES, figures
from dreamteacher.runfiles import Run, atomic_json, atomic_write, track
from dreamteacher.runtime import loader_workers, seed_everything

EXAMPLES_SHOWN = 4  # evaluated images kept with their predictions for the report


class LabelledData:
    """The labelled training images (N picked by seed from the train split) and the evaluation
    split (test if present, else val) of a mask folder, at `image_size`."""

    def __init__(self, cfg: Any):
        self.folder = MaskFolder(cfg.data, strict=cfg.strict)
        if not self.folder.splits.get("train"):
            raise UserError(f"{self.folder.root}/splits.json has no train ids; add a 'train' list")
        self.train_ids = select_labeled(self.folder.splits["train"], cfg.labels, cfg.seed)
        self.split = self.folder.eval_split(cfg.eval_split)
        self.train = self.folder.dataset(self.train_ids, cfg.image_size)
        self.eval = self.folder.dataset(
            self.folder.splits[self.split], cfg.image_size, full_res_masks=True
        )

    def save_ids(self, run: Run, seed: int) -> None:
        if run.rank == 0:
            atomic_json(
                {"labels": len(self.train_ids), "seed": seed, "ids": self.train_ids},
                run.dir / "labeled_ids.json",
            )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    examples: dict[str, list] | None = None,
) -> torch.Tensor:
    """Confusion matrix over the whole split; logits are upsampled to each mask's size. The
    images are decoded by `num_workers` loader processes and the matrix is counted on
    `device` (on one H200 the test split took 3.5 s per evaluation with neither). With
    `examples` ({"images": [], "truth": [], "pred": []}), the first images (# h, w, 3 uint8),
    their masks and predictions (# H, W; those of the first mask's size) are appended to its
    lists, at least EXAMPLES_SHOWN of them where the split has them."""
    model.eval()
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=cuda
    )
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in track(loader, "evaluate"):
        logits = model(x.to(device, non_blocking=cuda))  # B, K, h, w
        logits = F.interpolate(logits.float(), y.shape[-2:], mode="bilinear", align_corners=False)
        y = y.to(device, non_blocking=cuda)  # B, H, W at the masks' full resolution
        pred = logits.argmax(1)  # B, H, W
        # counted on the device, summed into cm on the CPU
        cm += confusion_matrix(pred, y, num_classes, ignore_index)
        if examples is not None and len(examples["images"]) < EXAMPLES_SHOWN:
            first = examples["truth"][0].shape if examples["truth"] else tuple(y.shape[-2:])
            if tuple(y.shape[-2:]) == first:  # masks of one size, drawn over their images
                examples["images"] += list((x.permute(0, 2, 3, 1) * 255).round().byte().numpy())
                examples["truth"] += list(y.cpu().to(torch.int16).numpy())
                examples["pred"] += list(pred.cpu().to(torch.int16).numpy())
    return cm


def evaluate_and_report(
    model: torch.nn.Module,
    data: LabelledData,
    cfg: Any,
    run: Run,
    device: torch.device,
    **extra: Any,
) -> dict[str, Any]:
    """mIoU (and per-class IoU, pixel accuracy) on the evaluation split at the masks' full
    resolution; written to RUN/metrics.json and printed."""
    # masks are compared at full resolution: batch only when they all have one size
    bs = cfg.eval_batch_size if len(data.eval.mask_sizes) == 1 else 1
    seed_everything(cfg.seed)  # a teacher-side model draws its noise from the global RNG
    folder = data.folder
    workers = loader_workers(cfg.num_workers, device)
    shown: dict[str, list] = {"images": [], "truth": [], "pred": []}
    cm = evaluate(
        model, data.eval, folder.num_classes, folder.ignore_index, device, bs, workers, shown
    )
    iou = iou_per_class(cm)
    metrics = {
        "miou": mean_iou(cm),
        "per_class_iou": {
            n: (None if math.isnan(v) else float(v) * 100)
            for n, v in zip(folder.class_names, iou.tolist(), strict=True)
        },
        "split": data.split,
        "eval_images": len(data.eval),  # scored: the split's readable images
        "eval_images_skipped": len(folder.dropped.get(data.split, [])),
        "val_carved_from_train": bool(data.folder.carved_val),
        "labels": len(data.train_ids),
        "seed": cfg.seed,
        **extra,
        "image_size": cfg.image_size,
        "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1) * 100),
        "confusion": cm.tolist(),  # rows: true class, columns: predicted
    }
    atomic_json(metrics, run.dir / "metrics.json")
    save_examples(run.dir / EXAMPLES, shown, folder.ignore_index)
    if run.board() is not None and shown["images"]:
        n = EXAMPLES_SHOWN
        png = figures.segmentation_examples(
            np.stack(shown["images"][:n]), np.stack(shown["truth"][:n]),
            np.stack(shown["pred"][:n]), folder.class_names, folder.ignore_index,
        )  # fmt: skip
        run.log_image("examples", png, int(extra.get("steps", 0)))
    print(format_metrics(metrics))
    return metrics


def save_examples(path: Path, shown: dict[str, list], ignore_index: int) -> None:
    """The first EXAMPLES_SHOWN evaluated images with their masks and predictions (the
    report's examples)."""
    if not shown["images"]:
        return
    arrays = {k: np.stack(v[:EXAMPLES_SHOWN]) for k, v in shown.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays, ignore_index=np.array(ignore_index))

    atomic_write(path, write)


def format_metrics(m: dict) -> str:
    rows = [f"{'class':<16} IoU %"] + [
        f"{k:<16} {'-' if v is None else f'{v:5.1f}'}" for k, v in m["per_class_iou"].items()
    ]
    rows.append(f"{'mIoU':<16} {m['miou']:5.1f}   ({m['split']} split, {m['labels']} labels)")
    return "\n".join(rows)
