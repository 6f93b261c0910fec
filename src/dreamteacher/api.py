"""The Python API; mirrors the CLI one function per command.

    import dreamteacher as dt
    dt.train_teacher(data="imgs/", out="runs/teacher", preset="small", steps=20000)
    dt.pretrain(data="imgs/", teacher="runs/teacher", backbone="resnet50", out="runs/pre")
    dt.export("runs/pre", out="runs/bb")
    dt.finetune(data="seg/", backbone="resnet50", weights="runs/bb", labels=46, out="runs/ft")
    dt.train_interpreter(data="seg/", teacher="runs/teacher", labels=46, out="runs/interp")
    dt.pretrain(data="imgs/", teacher="runs/teacher", mode="mix", interpreter="runs/interp", ...)

Each takes the config keys as keyword arguments, plus `config=` (a YAML file) and
`overrides=` (["key=value", ...]); precedence: defaults < config < kwargs < overrides.
(`dt.benchmark` and `dt.demo` run these: benchmarking/ and demo.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamteacher import engine
from dreamteacher.config import (
    BaselineConfig,
    CacheConfig,
    ConvertConfig,
    DDPMSegConfig,
    FinetuneConfig,
    InspectConfig,
    InterpreterConfig,
    PretrainConfig,
    ProbeConfig,
    TeacherConfig,
    build_config,
    normalize_size,
)
from dreamteacher.data.convert import convert as _convert
from dreamteacher.exporting import export as _export
from dreamteacher.reporting import write_report

Options = list[str] | dict[str, Any] | None


def train_teacher(
    data: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> Path:
    """Train a diffusion teacher on every image under `data`; returns the run folder."""
    cfg = build_config(TeacherConfig, config, overrides, data=data, out=out, **kwargs)
    return engine.train_teacher(cfg)


def pretrain(
    data: str | None = None,
    teacher: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> Path:
    """Distil `teacher` into a timm `backbone` (mode="feature", the default; "label" or "mix"
    with `interpreter=` a train-interpreter folder); returns the run folder."""
    cfg = build_config(
        PretrainConfig, config, overrides, data=data, teacher=teacher, out=out, **kwargs
    )
    return engine.pretrain(cfg)


def cache_features(
    data: str | None = None,
    teacher: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> Path:
    """Store K teacher encodings per image for `pretrain(feature_cache=...)`."""
    cfg = build_config(
        CacheConfig, config, overrides, data=data, teacher=teacher, out=out, **kwargs
    )
    return engine.cache_features(cfg)


def probe(
    data: str | None = None,
    teacher: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Rank `teacher`'s (t, level set) choices by a linear probe's val mIoU on `labels`
    labelled images of the mask folder `data`; writes OUT/probe.json and OUT/pretrain.yaml
    (the best, for `pretrain(config=...)`) and returns the ranking."""
    cfg = build_config(
        ProbeConfig, config, overrides, data=data, teacher=teacher, out=out, **kwargs
    )
    return engine.probe(cfg)


def inspect_teacher(
    teacher: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Describe `teacher` (a train-teacher run, a diffusers pipeline or UNet folder) and time
    one encoding per level on this device; returns (and prints) the report."""
    cfg = build_config(InspectConfig, config, overrides, teacher=teacher, **kwargs)
    return engine.inspect_teacher(cfg)


def export(run: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the pretrained backbone as timm weights; returns the export folder. A non-empty
    `out` that is not an earlier export is refused unless `force`."""
    return _export(run, out, force)


def report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run or benchmark folder (by default RUN/report.html, which
    every training command and the benchmark also write when they end); returns its path."""
    return write_report(run, out)


def convert(
    data: str | None = None,
    out: str | None = None,
    *,
    size: int | list[int] | None = None,
    strict: bool = False,
) -> Path:
    """Write a labelled dataset (`KIND:PATH`, e.g. "cityscapes:/data/cityscapes", or a mask
    folder) as a mask folder in the new or empty folder `out`, resized to `size` (H, W) if
    given; returns `out`."""
    size = normalize_size(size) if size is not None else None
    cfg = build_config(ConvertConfig, None, None, data=data, out=out, size=size, strict=strict)
    return _convert(cfg.data, cfg.out, cfg.size, cfg.strict)


def finetune(
    data: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> dict:
    """Fine-tune `backbone` with `weights` (an export folder, or "scratch") for segmentation
    and evaluate; returns metrics.json's content."""
    cfg = build_config(FinetuneConfig, config, overrides, data=data, out=out, **kwargs)
    return engine.finetune(cfg)


def train_interpreter(
    data: str | None = None,
    teacher: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> dict:
    """Train the feature interpreter on `teacher`'s features of `labels` labelled images of the
    mask folder `data` and evaluate it; returns metrics.json's content."""
    cfg = build_config(
        InterpreterConfig, config, overrides, data=data, teacher=teacher, out=out, **kwargs
    )
    return engine.train_interpreter(cfg)


def train_ddpm_seg(
    data: str | None = None,
    teacher: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> dict:
    """The DDPM-seg baseline (per-pixel MLP ensemble on `teacher`'s features) on `labels`
    labelled images of `data`, evaluated; returns metrics.json's content."""
    cfg = build_config(
        DDPMSegConfig, config, overrides, data=data, teacher=teacher, out=out, **kwargs
    )
    return engine.train_ddpm_seg(cfg)


def pretrain_baseline(
    data: str | None = None,
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: Options = None,
    **kwargs: Any,
) -> Path:
    """Train a self-supervised baseline (`method`: simclr, mocov2, byol, densecl; needs
    lightly) on the images under `data`; returns the run folder, which `export` turns into
    timm weights."""
    cfg = build_config(BaselineConfig, config, overrides, data=data, out=out, **kwargs)
    return engine.pretrain_baseline(cfg)
