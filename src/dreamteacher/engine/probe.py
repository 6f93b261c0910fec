"""probe: which t and which levels of a teacher to distil, answered with a number.

For each candidate t the teacher encodes the N labelled train images and the val images once
(a fixed noise draw per image). For each candidate level set a linear probe (a 1x1
convolution on the levels' maps, standardised per channel, resized to the finest level's
grid and concatenated) is trained on the N images and scored on val: mIoU at the probe's
input resolution. The ranking is printed and written to OUT/probe.json; OUT/pretrain.yaml
holds the best (teacher, t, strides), which `pretrain --config` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dreamteacher.config import ProbeConfig
from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.errors import UserError
from dreamteacher.eval.metrics import confusion_matrix, mean_iou
from dreamteacher.runfiles import atomic_json, atomic_write, save_config, track
from dreamteacher.runtime import autocast, resolve_device
from dreamteacher.teachers import resolve_teacher

VAL_KEY = 1_000_000  # val images' noise keys start here, apart from the train images'


def level_sets(cfg: ProbeConfig) -> list[list[int]]:
    """The candidate level sets: cfg.level_sets, or every contiguous run of cfg.strides."""
    s = list(cfg.strides)
    sets = cfg.level_sets or [s[i:j] for i in range(len(s)) for j in range(i + 1, len(s) + 1)]
    for ls in sets:
        bad = [v for v in ls if v not in s]
        if not ls or bad:
            raise UserError(
                f"level set {ls} must be a non-empty subset of strides {s}; fix level_sets"
            )
    return [list(ls) for ls in sets]


@torch.no_grad()
def encode(teacher, dataset, key0: int, device, batch: int, precision: str):
    """Every image's maps (one list per level, # N, C_l, h_l, w_l on the CPU) and masks."""
    feats: list[list[torch.Tensor]] = [[] for _ in teacher.strides]
    masks = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch)
    k = key0
    for x, y in loader:
        keys = list(range(k, k + len(x)))
        k += len(x)
        with autocast(device, precision):
            maps = teacher(x.to(device), keys)
        for lv, m in zip(feats, maps, strict=True):
            lv.append(m.float().cpu())
        masks.append(y)
    return [torch.cat(lv) for lv in feats], torch.cat(masks)


def stack(maps: list[torch.Tensor], idx: list[int]) -> torch.Tensor:
    """The chosen levels resized to the finest one's grid and concatenated # N, C, h, w."""
    size = max((maps[i].shape[-2:] for i in idx), key=lambda hw: hw[0] * hw[1])
    return torch.cat(
        [F.interpolate(maps[i], size, mode="bilinear", align_corners=False) for i in idx], 1
    )


def fit_and_score(
    train: torch.Tensor,
    y_train: torch.Tensor,
    val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    cfg: ProbeConfig,
    device: torch.device,
) -> float:
    """Train a 1x1 conv on standardised `train` maps (# N, C, h, w) for the masks (# N, H, W);
    the val mIoU (%) of its upsampled predictions."""
    mu = train.mean((0, 2, 3), keepdim=True)
    sd = train.std((0, 2, 3), keepdim=True).clamp(min=1e-6)
    g = torch.Generator().manual_seed(cfg.seed)
    probe = nn.Conv2d(train.shape[1], num_classes, 1).to(device)
    with torch.no_grad():  # the same start for every candidate of this width
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=g) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    n = len(train)
    for _ in range(cfg.steps):
        pick = torch.randint(n, (min(cfg.batch_size, n),), generator=g)
        x = ((train[pick] - mu) / sd).to(device)  # B, C, h, w
        logits = F.interpolate(probe(x), y_train.shape[-2:], mode="bilinear")  # B, K, H, W
        loss = F.cross_entropy(logits, y_train[pick].to(device), ignore_index=ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(val), 32):
            x = ((val[i : i + 32] - mu) / sd).to(device)
            logits = F.interpolate(probe(x), y_val.shape[-2:], mode="bilinear")
            y = y_val[i : i + 32].to(device)
            cm += confusion_matrix(logits.argmax(1), y, num_classes, ignore_index)
    return mean_iou(cm)


def probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Rank every (t, level set) candidate; write OUT/probe.json and OUT/pretrain.yaml."""
    if cfg.eval_split != "val":
        raise UserError(
            f"probe scores the val split (it chooses settings), got eval_split={cfg.eval_split}; "
            "leave it at val"
        )
    if not cfg.out:
        raise UserError("no output folder; pass --out DIR")
    device = resolve_device(cfg.device)
    teacher = resolve_teacher(cfg).to(device)  # checks every candidate t against its schedule
    sets = level_sets(cfg)
    folder = MaskFolder(cfg.data, strict=cfg.strict)
    if not folder.splits.get("train"):
        raise UserError(f"{folder.root} has no train split to label; add a 'train' list")
    train_ids = select_labeled(folder.splits["train"], cfg.labels, cfg.seed)
    val_ids = folder.splits[folder.eval_split("val")]
    train_ds = folder.dataset(train_ids, cfg.image_size)
    val_ds = folder.dataset(val_ids, cfg.image_size)
    print(
        f"probe: teacher {cfg.teacher}, t in {cfg.t}, {len(sets)} level sets, "
        f"{len(train_ids)} labelled images, {len(val_ids)} val images at "
        f"{cfg.image_size[0]}x{cfg.image_size[1]}, device {device}"
    )
    rows = []
    for t in track(cfg.t, "probe"):
        teacher.t = [int(t)]
        tr, y_tr = encode(teacher, train_ds, 0, device, cfg.batch_size, cfg.precision)
        va, y_va = encode(teacher, val_ds, VAL_KEY, device, cfg.batch_size, cfg.precision)
        for ls in sets:
            idx = [teacher.strides.index(s) for s in ls]
            miou = fit_and_score(
                stack(tr, idx), y_tr, stack(va, idx), y_va,
                folder.num_classes, folder.ignore_index, cfg, device,
            )  # fmt: skip
            rows.append({"t": int(t), "strides": ls, "val_miou": miou})
    rows.sort(key=lambda r: -r["val_miou"])
    best = rows[0]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "teacher": str(Path(cfg.teacher).resolve()),
        "labels": len(train_ids),
        "val_images": len(val_ids),
        "image_size": cfg.image_size,
        "ranking": rows,
    }
    atomic_json(result, out / "probe.json")
    best_cfg = {"teacher": result["teacher"], "t": [best["t"]], "strides": best["strides"]}
    atomic_write(out / "pretrain.yaml", lambda p: Path(p).write_text(yaml.safe_dump(best_cfg)))
    save_config(cfg, out / "config.yaml")
    print(format_ranking(rows))
    print(
        f"best: t={best['t']}, strides {best['strides']} ({best['val_miou']:.1f} val mIoU); "
        f"use it with `dreamteacher pretrain --config {out / 'pretrain.yaml'} ...`"
    )
    return result


def format_ranking(rows: list[dict[str, Any]]) -> str:
    lines = ["  rank  t     strides         val mIoU"]
    for k, r in enumerate(rows, 1):
        levels = ",".join(str(s) for s in r["strides"])
        lines.append(f"  {k:>4}  {r['t']:<4}  {levels:<14}  {r['val_miou']:>8.1f}")
    return "\n".join(lines)
