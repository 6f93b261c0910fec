"""Typed run configs: dataclass defaults <- YAML file <- CLI flags <- `key=value` overrides.

Every run folder gets the resolved config as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dreamteacher.errors import UserError


@dataclass
class RunOptions:
    """Settings every training command shares (checkpoints, devices, DDP, input policy)."""

    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = -1  # -1 = auto: 0 on CPU, up to 8 per GPU
    accum_steps: int = 1  # micro-batches per optimizer step (global batch = batch x ranks x this)
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the trained model
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    strict: bool = False  # fail on a bad input file instead of skipping it (docs/data.md)
    max_bad_steps: int = 10  # stop after this many NaN/inf losses in a row


@dataclass
class TeacherConfig(RunOptions):
    """`train-teacher`: a DDPM (diffusers UNet2DModel + DDPMScheduler) on a folder of images."""

    data: str = ""
    out: str = ""
    splits: list[str] | None = None  # with a mask folder as data: use only these splits' images
    image_size: list[int] = field(default_factory=lambda: [64, 64])  # H, W
    preset: str = "tiny"  # UNet size: tiny | small | base
    block_out_channels: list[int] | None = None  # overrides the preset
    layers_per_block: int | None = None  # overrides the preset
    attention_levels: list[int] | None = None  # encoder levels with self-attention
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    num_samples: int = 16  # images in the sample grid
    sample_steps: int = 50  # DDIM steps used to draw the sample grid


# the label/mix student's logit head (student/regressor.py): UPerNet's 3x3 fusion at stride 4,
# or its 1x1 version computed per level (student/decoder.py LevelwiseLogits)
LOGIT_HEADS = ("uper", "light")


@dataclass
class PretrainConfig(RunOptions):
    """`pretrain`: feature distillation of a teacher into a timm backbone (METHOD.md 1-3, 5)."""

    data: str = ""
    teacher: str = ""
    out: str = ""
    splits: list[str] | None = None  # with a mask folder as data: use only these splits' images
    backbone: str = "resnet50"
    image_size: list[int] | None = None  # default: the teacher's training resolution
    epochs: int = 100
    max_steps: int | None = None  # stop (and end the lr schedule) after this many steps
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 20.0
    t: list[int] = field(default_factory=lambda: [50])  # each sample draws one t from the list
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    lambda_at: float = 10.0
    regressor_channels: int = 256
    feature_cache: str | None = None  # a cache-features folder: read targets, skip the teacher
    compile_teacher: bool = False  # torch.compile the teacher's feature pass (plain UNets)
    # label distillation (METHOD.md section 4): feature | label | mix
    mode: str = "feature"
    interpreter: str | None = None  # a train-interpreter folder (label and mix modes)
    lambda_ld: float = 1.0  # L_mix = L_feat + lambda_ld * L_ld
    tau: float = 4.0  # softmax temperature of L_ld
    tau_squared: bool = True  # multiply L_ld by tau^2 (Hinton et al. 2015; docs/method.md)
    # the student's logit head (label, mix): uper = UPerNet's 3x3 fusion at stride 4; light =
    # a 1x1 fusion computed per level, about 26x fewer MACs (student/decoder.py)
    logit_head: str = "uper"


@dataclass
class InterpreterConfig(RunOptions):
    """`train-interpreter`: the feature interpreter on a frozen teacher's features of N
    labelled images (METHOD.md section 4); evaluates itself on the test split."""

    data: str = ""  # a mask folder
    teacher: str = ""
    out: str = ""
    labels: int | None = None  # N labelled training images (None = all)
    image_size: list[int] | None = None  # default: the teacher's training resolution
    epochs: int = 100
    max_steps: int | None = None
    warmup_epochs: float = 20.0
    batch_size: int = 8
    lr: float = 4e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    t: list[int] = field(default_factory=lambda: [50])
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    channels: int = 256
    dropout: float = 0.1
    dice_weight: float = 3.0  # loss = CE + dice_weight x Dice
    eval_split: str = "auto"
    eval_batch_size: int = 8


@dataclass
class DDPMSegConfig(RunOptions):
    """`train-ddpm-seg`: the DDPM-seg baseline (Baranchuk et al. 2022), an ensemble of
    per-pixel MLPs on upsampled, concatenated teacher features at several t. Pixels are
    streamed: memory does not grow with the number of images."""

    data: str = ""
    teacher: str = ""
    out: str = ""
    labels: int | None = None
    image_size: list[int] | None = None  # default: the teacher's training resolution
    t: list[int] = field(default_factory=lambda: [50, 150, 250])
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    ensemble: int = 10
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    steps: int = 1000
    batch_size: int = 4  # images per step
    pixels: int = 1024  # labelled pixels drawn per image and step, for each MLP
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_split: str = "auto"
    eval_batch_size: int = 4


@dataclass
class CacheConfig:
    """`cache-features`: K teacher encodings per image, stored once for pretrain to reuse."""

    data: str = ""
    teacher: str = ""
    out: str = ""
    splits: list[str] | None = None
    image_size: list[int] | None = None  # default: the teacher's training resolution
    draws: int = 4  # encodings per image (odd draws are of the flipped image)
    t: list[int] = field(default_factory=lambda: [50])
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, as pretrain encodes online) | fp32 | bf16
    compile_teacher: bool = False  # torch.compile the teacher's feature pass (plain UNets)
    num_workers: int = -1  # image decoding workers; -1 = auto (0 on CPU, up to 8 per GPU)
    save_every: int = 50  # batches between progress records (what --resume continues from)
    resume: bool = False  # continue an interrupted build in OUT.partial
    strict: bool = False


@dataclass
class FinetuneConfig(RunOptions):
    """`finetune`: semantic segmentation with a UPerNet head, all weights trainable."""

    data: str = ""
    out: str = ""
    backbone: str = "resnet50"
    weights: str = "scratch"  # an exported backbone folder, or "scratch"
    labels: int | None = None  # N labelled training images (None = all)
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    head_channels: int = 256
    eval_split: str = "auto"  # test if present, else val
    eval_batch_size: int = 8
    freeze_backbone: bool = False  # train the head only (a readout of the pretrained features)


@dataclass
class BaselineConfig(RunOptions):
    """`pretrain-baseline`: a self-supervised baseline (SimCLR, MoCo v2, BYOL, DenseCL) from the
    lightly library, trained on the same images at the same size; output exports like pretrain."""

    data: str = ""
    out: str = ""
    method: str = "simclr"  # simclr | mocov2 | byol | densecl
    splits: list[str] | None = None
    backbone: str = "resnet50"
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    temperature: float | None = None  # default: the method's (SimCLR 0.5, MoCo/DenseCL 0.2)
    memory_bank: int | None = None  # MoCo/DenseCL queue; default min(4096, half the images)
    momentum: float = 0.99  # start of the cosine momentum schedule (MoCo, BYOL, DenseCL) -> 1


C = TypeVar("C")


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Coerce/validate one value against a dataclass field type; raise UserError if wrong."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(name, value, a)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0])
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]  # one number = a list of one (e.g. t=50, image_size=64)
        return [_check_type(name, v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif (
        tp is str
        and isinstance(value, (str, int, float, os.PathLike))
        and not isinstance(value, bool)
    ):
        return str(value)
    tname = getattr(tp, "__name__", str(tp))
    raise UserError(f"config key '{name}' must be {tname}, got {value!r}; fix its value")


def _apply(cfg: Any, updates: dict[str, Any], source: str) -> None:
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    for key, value in updates.items():
        k = key.replace("-", "_")
        if k not in hints:
            raise UserError(
                f"unknown config key '{key}' in {source}; valid keys: {', '.join(names)}"
            )
        setattr(cfg, k, _check_type(k, value, hints[k]))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict; values parsed as YAML (so 3, 1e-3, [50,150], true work)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (e.g. lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def build_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    defaults_from: tuple[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> C:
    """Resolve a config: defaults, then `defaults_from` (named values, e.g. a benchmark
    profile), then the YAML file, then kwargs (not None), then overrides."""
    cfg = cls()
    if defaults_from is not None:
        _apply(cfg, defaults_from[1], defaults_from[0])
    if config_file:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"config file {path} not found; check the --config path") from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise UserError(
                f"config file {path} is not valid YAML{where}; fix its syntax"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping of key: value")
        _apply(cfg, data, str(path))
    _apply(cfg, {k: v for k, v in kwargs.items() if v is not None}, "arguments")
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        _apply(cfg, ov, "overrides")
    if getattr(cfg, "image_size", None) is not None:
        cfg.image_size = normalize_size(cfg.image_size)
    return cfg


def normalize_size(size: int | list[int]) -> list[int]:
    """One number = square; two = H, W."""
    if isinstance(size, int):
        size = [size]
    if len(size) == 1:
        size = [size[0], size[0]]
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"image_size must be one or two positive numbers (H W), got {size}")
    return [int(size[0]), int(size[1])]


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def load_config_dict(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text()) or {}
