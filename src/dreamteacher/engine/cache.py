"""cache-features: run the teacher once over the images, K encodings each (teachers/cache.py)."""

from __future__ import annotations

from pathlib import Path

from dreamteacher.config import CacheConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.errors import UserError
from dreamteacher.runfiles import save_config, track
from dreamteacher.runtime import loader_workers, resolve_device
from dreamteacher.teachers import resolve_teacher
from dreamteacher.teachers.cache import build_cache


def cache_features(cfg: CacheConfig) -> Path:
    device = resolve_device(cfg.device)
    if not cfg.out:
        raise UserError("no output folder; pass --out DIR")
    teacher = resolve_teacher(cfg).to(device)
    data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
    if cfg.compile_teacher:
        teacher.compile_features()
    print(f"cache-features: {len(data)} images x {cfg.draws} encodings (t={cfg.t}) -> {cfg.out}")
    out = build_cache(
        teacher,
        data,
        cfg.out,
        cfg.draws,
        cfg.batch_size,
        device,
        cfg.seed,
        meta={
            "teacher": str(cfg.teacher),
            "t": cfg.t,
            "strides": cfg.strides,
            "image_size": cfg.image_size,
        },
        progress=lambda it: track(it, "cache"),
        precision=cfg.precision,
        num_workers=loader_workers(cfg.num_workers, device),
        save_every=cfg.save_every,
        resume=cfg.resume,
    )
    save_config(cfg, out / "config.yaml")
    print(f"feature cache written to {out}; use it with `pretrain ... feature_cache={out}`")
    return out
