"""Typed run configs: dataclass defaults <- YAML file <- CLI flags <- `key=value` overrides.

A command's config is assembled from groups declared once (`Common`, `TrainOptions`, the
schedule, the teacher's features, the labelled subset, the student); a command redeclares a
field only to give it its own default. `FLAGS` names the keys that are also command-line
flags (cli.py generates them from these fields). Every run folder gets the resolved config
as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dreamteacher.dataspec import KINDS, data_folder
from dreamteacher.defaults import AT_SOURCES, DICE_WEIGHT, LAMBDA_AT, LAMBDA_LD, TAU
from dreamteacher.errors import UserError

# Defaults that several commands (and the benchmark) share, each declared once here.
STRIDES = [4, 8, 16, 32]  # the feature levels distilled: the student's C2..C5
T = [50]  # the diffusion step(s) at which the teacher is read (docs/method.md, "Teacher")
DDPM_SEG_T = [50, 150, 250]  # DDPM-seg's concatenated steps (docs/method.md, "DDPM-seg")
IMAGE_SIZE = [64, 64]  # H, W for commands that have no teacher to take the size from
BACKBONE = "resnet50"
ADAM_BETAS = [0.9, 0.999]  # torch's AdamW default
PRETRAIN_BETAS = [0.9, 0.95]  # for distillation and SSL pretraining (as in MAE)
TEACHER_KINDS = ("diffusion", "gan")  # train-teacher --kind
TEACHER_LR = {"diffusion": 2e-4, "gan": 2.5e-3}  # train-teacher's lr by kind
TEACHER_BETAS = {"diffusion": ADAM_BETAS, "gan": [0.0, 0.99]}  # (StyleGAN2's for the GAN)
MODES = ("feature", "label", "mix")  # pretrain's distillation modes (docs/method.md)
# the label/mix student's logit head (student/regressor.py): UPerNet's 3x3 fusion at stride 4,
# or its 1x1 version computed per level (student/decoder.py LevelwiseLogits)
LOGIT_HEADS = ("uper", "light")

# config keys that are also command-line flags (--image-size for image_size), with their help;
# each command gets those of its config's fields
FLAGS: dict[str, str] = {
    "data": (
        "input: a folder of images, a mask folder (finetune, benchmark, ...), or KIND:PATH, a "
        f"standard dataset as downloaded (KIND: {', '.join(KINDS)}; docs/data.md)"
    ),
    "out": "folder to write",
    "teacher": (
        "train-teacher run (diffusion or gan), or a folder of a diffusers pipeline (DDPM, DDIM, "
        "...), UNet2DModel, Stable Diffusion, ADM checkpoint (.pt + flags.txt) or StyleGAN2-ADA "
        "pickle (.pkl)"
    ),
    "t": "diffusion step(s) t at which the teacher is read",
    "backbone": "timm model name, e.g. resnet50",
    "weights": "exported backbone folder, or 'scratch'",
    "labels": "number of labelled training images",
    "mode": "feature, label or mix distillation",
    "interpreter": "train-interpreter run folder (label and mix modes)",
    "method": "simclr, mocov2, byol or densecl",
    "kind": "teacher to train: diffusion or gan (StyleGAN2)",
    "preset": "UNet (or GAN) size: tiny, small or base",
    "profile": "smoke, cpu or gpu",
    "image_size": "input size: one number (square) or H W",
    "batch_size": "images per step and process",
    "epochs": "passes over the data",
    "steps": "optimizer steps",
    "seed": "random seed",
    "save_every": "steps between checkpoints (cache-features: batches between progress records)",
    "resume": "continue from the last checkpoint in --out",
    "device": "cpu, cuda or auto",
    "strict": "fail on an unreadable or unmatched input file instead of skipping it",
}


def _list(default: list) -> Any:
    return field(default_factory=lambda: list(default))


@dataclass
class Common:
    """Every command: its input and output, the batch, and how it runs."""

    data: str = ""
    out: str = ""
    image_size: list[int] | None = None  # H, W; None: the teacher's training resolution
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    num_workers: int = -1  # -1 = auto: 0 on CPU, up to 8 per GPU
    strict: bool = False  # fail on a bad input file instead of skipping it (docs/data.md)
    resume: bool = False
    save_every: int = 500


@dataclass
class TrainOptions(Common):
    """Every training command: what the loop reads (engine/loop.py) and its AdamW."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = _list(ADAM_BETAS)
    accum_steps: int = 1  # micro-batches per optimizer step (global batch = batch x ranks x this)
    keep_checkpoints: int = 2
    log_every: int = 10
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only)
    compile: bool = False  # torch.compile the trained model
    max_bad_steps: int = 10  # stop after this many NaN/inf losses in a row
    logger: str = "jsonl"  # jsonl | tensorboard (the same records also as TensorBoard events)
    report: bool = True  # write RUN/report.html when the command ends (`dreamteacher report`)


@dataclass
class BySteps:
    """A schedule counted in optimizer steps."""

    steps: int = 1000
    warmup_steps: int = 50


@dataclass
class ByEpochs:
    """A schedule counted in passes over the data."""

    epochs: int = 100
    max_steps: int | None = None  # stop (and end the lr schedule) after this many steps
    warmup_epochs: float = 20.0


@dataclass
class Unlabeled:
    """Commands that read unlabeled images."""

    splits: list[str] | None = None  # with a mask folder as data: use only these splits' images


@dataclass
class Labelled:
    """Commands trained on N labelled images of a mask folder and evaluated on its test split."""

    labels: int | None = None  # N labelled training images (None = all)
    eval_split: str = "auto"  # test if present, else val
    eval_batch_size: int = 8


@dataclass
class TeacherFeatures:
    """Commands that read a frozen teacher's features (teachers/)."""

    teacher: str = ""
    t: list[int] = _list(T)  # each sample draws one t from the list
    strides: list[int] = _list(STRIDES)


@dataclass
class StudentOptions:
    """Commands that train a timm backbone."""

    backbone: str = BACKBONE


@dataclass
class TeacherConfig(Unlabeled, BySteps, TrainOptions):
    """`train-teacher`: a DDPM (diffusers UNet2DModel + DDPMScheduler), or with kind=gan a
    StyleGAN2 (engine/gan.py), on a folder of images."""

    kind: str = "diffusion"  # diffusion | gan
    image_size: list[int] = _list(IMAGE_SIZE)
    preset: str = "tiny"  # UNet (or GAN) size: tiny | small | base
    lr: float | None = None  # None: the kind's (TEACHER_LR)
    betas: list[float] | None = None  # None: the kind's (TEACHER_BETAS)
    block_out_channels: list[int] | None = None  # overrides the preset
    layers_per_block: int | None = None  # overrides the preset
    attention_levels: list[int] | None = None  # encoder levels with self-attention
    steps: int = 2000
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    num_samples: int = 16  # images in the sample grid
    sample_steps: int = 50  # DDIM steps used to draw the sample grid
    checkpoint_samples: bool = True  # a grid at every checkpoint too (RUN/samples/step_*.png)
    # kind=gan (docs/teachers.md, "GAN teachers")
    r1_gamma: float = 0.1  # weight of the R1 penalty on real images (x gamma / 2)
    r1_every: int = 16  # R1 on every 16th step only, weighted x 16 (lazy regularisation)
    diffaugment: str = "color,translation,cutout"  # DiffAugment policy ('' = none)


@dataclass
class PretrainConfig(StudentOptions, TeacherFeatures, Unlabeled, ByEpochs, TrainOptions):
    """`pretrain`: feature distillation of a teacher into a timm backbone (docs/method.md,
    "Student and regressor", "Losses", "Pretraining recipe")."""

    lr: float = 4e-3
    betas: list[float] = _list(PRETRAIN_BETAS)
    lambda_at: float = LAMBDA_AT
    at_source: str = AT_SOURCES[0]  # L_AT on the regressor's predictions or the backbone's
    regressor_channels: int = 256
    feature_cache: str | None = None  # a cache-features folder: read targets, skip the teacher
    truncation_psi: float = 1.0  # a GAN teacher's truncation: w = w_avg + psi (w - w_avg)
    compile_teacher: bool = False  # torch.compile the teacher's feature pass (plain UNets)
    # label distillation (docs/method.md, "Label distillation and mix distillation")
    mode: str = "feature"  # feature | label | mix
    interpreter: str | None = None  # a train-interpreter folder (label and mix modes)
    lambda_ld: float = LAMBDA_LD  # L_mix = L_feat + lambda_ld * L_ld
    tau: float = TAU  # softmax temperature of L_ld
    tau_squared: bool = True  # multiply L_ld by tau^2 (Hinton et al. 2015; docs/method.md)
    # the student's logit head (label, mix): uper = UPerNet's 3x3 fusion at stride 4; light =
    # a 1x1 fusion computed per level, about 26x fewer MACs (student/decoder.py)
    logit_head: str = "uper"


@dataclass
class InterpreterConfig(TeacherFeatures, Labelled, ByEpochs, TrainOptions):
    """`train-interpreter`: the feature interpreter on a frozen teacher's features of N
    labelled images (docs/method.md, "Label distillation and mix distillation"); evaluates
    itself on the test split."""

    batch_size: int = 8
    lr: float = 4e-3
    betas: list[float] = _list(PRETRAIN_BETAS)
    channels: int = 256
    dropout: float = 0.1
    dice_weight: float = DICE_WEIGHT  # loss = CE + dice_weight x Dice


@dataclass
class DDPMSegConfig(TeacherFeatures, Labelled, BySteps, TrainOptions):
    """`train-ddpm-seg`: the DDPM-seg baseline (Baranchuk et al. 2022), an ensemble of
    per-pixel MLPs on upsampled, concatenated teacher features at several t. Pixels are
    streamed: memory does not grow with the number of images."""

    t: list[int] = _list(DDPM_SEG_T)
    ensemble: int = 10
    hidden: list[int] = _list([256, 128])
    batch_size: int = 4  # images per step
    pixels: int = 1024  # labelled pixels drawn per image and step, for each MLP
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_batch_size: int = 4


@dataclass
class CacheConfig(TeacherFeatures, Unlabeled, Common):
    """`cache-features`: K teacher encodings per image, stored once for pretrain to reuse."""

    draws: int = 4  # encodings per image (odd draws are of the flipped image)
    batch_size: int = 32
    compile_teacher: bool = False  # torch.compile the teacher's feature pass (plain UNets)
    save_every: int = 50  # batches between progress records (what --resume continues from)


@dataclass
class ProbeConfig(TeacherFeatures, Labelled, Common):
    """`probe`: rank (t, level set) choices of a teacher by the val mIoU of a linear probe on
    its frozen features of N labelled images; writes the best as a pretrain config."""

    t: list[int] = _list([25, 50, 100, 150, 250, 500])  # the candidate steps
    level_sets: list[list[int]] | None = None  # None: every contiguous run of `strides`
    eval_split: str = "val"  # a probe chooses settings: scored on val, never test
    batch_size: int = 8
    steps: int = 300  # probe training steps per candidate
    lr: float = 1e-2


@dataclass
class InspectConfig(TeacherFeatures):
    """`inspect-teacher`: a teacher's kind, size, schedule and levels, and the time and memory
    of one encoding per level on this device."""

    image_size: list[int] | None = None  # H, W; None: the teacher's training resolution
    batch_size: int = 1
    device: str = "auto"
    precision: str = "auto"
    repeats: int = 5  # timed encodings per level (the median is reported), after one warm-up
    json: str = ""  # also write the report to this JSON file


@dataclass
class ConvertConfig:
    """`convert`: a standard dataset (KIND:PATH) or mask folder written as a mask folder."""

    data: str = ""
    out: str = ""
    size: list[int] | None = None  # H, W to resize to (images bicubic, masks nearest); None: as is
    strict: bool = False  # fail on a bad input file instead of skipping it


@dataclass
class FinetuneConfig(StudentOptions, Labelled, BySteps, TrainOptions):
    """`finetune`: semantic segmentation with a UPerNet head, all weights trainable."""

    weights: str = "scratch"  # an exported backbone folder, or "scratch"
    image_size: list[int] = _list(IMAGE_SIZE)
    batch_size: int = 8
    head_channels: int = 256
    freeze_backbone: bool = False  # train the head only (a readout of the pretrained features)


@dataclass
class BaselineConfig(StudentOptions, Unlabeled, ByEpochs, TrainOptions):
    """`pretrain-baseline`: a self-supervised baseline (SimCLR, MoCo v2, BYOL, DenseCL) from the
    lightly library, trained on the same images at the same size; output exports like pretrain."""

    method: str = "simclr"  # simclr | mocov2 | byol | densecl
    image_size: list[int] = _list(IMAGE_SIZE)
    batch_size: int = 32
    lr: float = 2e-3
    betas: list[float] = _list(PRETRAIN_BETAS)
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
    check_values(cfg)
    check_paths(cfg)
    return cfg


# Value rules, by key, for every config (commands, benchmark, demo): numbers are finite and
# positive unless named here.
NON_NEGATIVE = {
    "weight_decay",
    "warmup_steps",
    "warmup_epochs",
    "lambda_at",
    "dt_lambda_at",
    "lambda_ld",
    "dice_weight",
    "t",
    "dt_t",
    "ddpm_seg_t",
    "seed",
    "seeds",
    "dt_feature_cache",
    "attention_levels",
    "truncation_psi",
    "gan_psi",
}
FRACTIONS = {"betas", "ema_decay", "momentum", "dropout"}  # in [0, 1)
AT_LEAST = {"num_workers": -1}  # -1 = auto
# keys without a meaningful default: a command refuses to run without them
REQUIRED = ("data", "out", "teacher")
# inputs that the output folder must not be, or lie in (its files would be read as input)
INPUT_FOLDERS = ("data", "teacher", "interpreter", "weights", "feature_cache")


def _numbers(value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_values(cfg: Any) -> None:
    """Refuse a missing required key, or a number that is not finite or out of its range,
    with one line naming the key and the fix."""
    for key in REQUIRED:
        if getattr(cfg, key, None) == "":
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} is required; pass {flag} PATH, the {FLAGS[key]}")
    for f in dataclasses.fields(cfg):
        for v in _numbers(getattr(cfg, f.name)):
            if not math.isfinite(v):
                raise UserError(f"config key '{f.name}' is {v}; give a finite number")
            if f.name in AT_LEAST:
                low = AT_LEAST[f.name]
                ok, want = v >= low, f"at least {low}"
            elif f.name in FRACTIONS:
                ok, want = 0 <= v < 1, "in [0, 1)"
            elif f.name in NON_NEGATIVE:
                ok, want = v >= 0, "zero or more"
            else:
                ok, want = v > 0, "positive"
            if not ok:
                raise UserError(f"config key '{f.name}' must be {want}, got {v}; fix its value")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(cfg: Any) -> None:
    """The output folder is not an input folder, nor inside one, nor around --data (a run's
    files would be read as data by the next run); it is not an existing file."""
    out = getattr(cfg, "out", "")
    if not out:
        return
    out_path = Path(out).expanduser().resolve()
    if out_path.exists() and not out_path.is_dir():
        raise UserError(f"--out {out} is an existing file; name a folder to write the run to")
    parent = next(p for p in (out_path, *out_path.parents) if p.exists())
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out}: cannot write in {parent} (permission denied); choose an --out you "
            "can write to"
        )
    for key in INPUT_FOLDERS:
        value = getattr(cfg, key, None)
        if not isinstance(value, str) or not value or value == "scratch":
            continue
        path = (data_folder(value) if key == "data" else Path(value)).expanduser().resolve()
        flag = "--" + key.replace("_", "-")
        if _inside(out_path, path):
            raise UserError(
                f"--out {out} is inside {flag} {value}: the run's files would land among its "
                f"input; choose an --out outside {value}"
            )
        if key == "data" and _inside(path, out_path):
            raise UserError(
                f"--data {value} is inside --out {out}: the run's files would be read as data; "
                "choose an --out that does not contain the data"
            )


def normalize_size(size: int | list[int]) -> list[int]:
    """One number = square; two = H, W."""
    if isinstance(size, int):
        size = [size]
    if len(size) == 1:
        size = [size[0], size[0]]
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"image_size must be one or two positive numbers (H W), got {size}")
    return [int(size[0]), int(size[1])]
