"""The label-efficient benchmark's settings and its three profiles (smoke, cpu, gpu).

Precedence: dataclass defaults < profile < YAML file < keyword arguments < key=value overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamteacher.config import (
    DDPM_SEG_T,
    LOGIT_HEADS,
    STRIDES,
    BaselineConfig,
    DDPMSegConfig,
    FinetuneConfig,
    InterpreterConfig,
    PretrainConfig,
    T,
    build_config,
)
from dreamteacher.defaults import AT_SOURCES, SSL_METHODS
from dreamteacher.errors import UserError

# backbones pretrained once on the unlabeled images: none, DreamTeacher, each SSL baseline
PRETRAINED = ["scratch", "dreamteacher", *SSL_METHODS]
# backbones distilled from the interpreter of each (N, seed) labelled subset (docs/method.md,
# "Label distillation and mix distillation")
LABEL_DISTILLED = ["dt-mix", "dt-label"]
# segmenters on the teacher's features themselves: no backbone, one result per (N, seed)
TEACHER_SIDE = ["interpreter", "ddpm-seg"]
# a backbone distilled from a GAN teacher trained here on the same unlabeled images
GAN_DISTILLED = ["dt-gan"]
ALL_METHODS = PRETRAINED + GAN_DISTILLED + LABEL_DISTILLED + TEACHER_SIDE
PROTOCOLS = ["finetune", "frozen"]
EQUAL_COMPUTE = "@compute"  # the row suffix of an SSL baseline trained at equal compute
EVAL_SPLITS = ("val", "test")  # val to choose settings; test for the reported table


@dataclass
class BenchmarkConfig:
    """`benchmark`: every method pretrained on the same unlabeled images, then evaluated with N
    labelled images for each N, seed and protocol; mIoU on the test split. A setting that is
    a command's key defaults to that command's default (e.g. dt_lr to pretrain's lr)."""

    data: str = ""  # a mask folder or KIND:PATH (required)
    out: str = "runs/benchmark"
    profile: str = "cpu"
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    labels: list[int] = field(default_factory=lambda: [23, 46, 367])  # N >= train size = all
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # which images are labelled
    pretrain_splits: list[str] | None = None  # None: every split but test (train, val, ...)
    # the split every evaluation is scored on: val to choose settings, test for the reported
    # table (read once, with the settings chosen on val)
    eval_split: str = "test"
    backbone: str = "resnet18"
    image_size: list[int] = field(default_factory=lambda: [64, 80])  # H, W for every stage
    device: str = "auto"
    precision: str = "auto"
    # the teacher: a folder to use as it is (a train-teacher run, a diffusers pipeline or UNet
    # folder; keyed by its files' hash, not trained here), or None to train one with these
    teacher: str | None = None
    teacher_preset: str = "tiny"
    teacher_steps: int = 1500
    teacher_batch_size: int = 16
    teacher_lr: float = 1e-3
    teacher_sample_steps: int | None = None  # DDIM steps of the sample grid (None: train-teacher's)
    # the GAN teacher of the dt-gan row (train-teacher --kind gan; its lr and betas the GAN's)
    gan_preset: str = "tiny"
    gan_steps: int = 1500
    gan_batch_size: int = 16
    gan_psi: float = 1.0  # truncation of the samples distilled
    # student pretraining, the same epochs and batch for every method
    pretrain_epochs: int = 30
    pretrain_max_steps: int | None = None
    pretrain_batch_size: int = 16
    dt_lr: float = PretrainConfig.lr
    dt_t: list[int] = field(default_factory=lambda: list(T))
    # the teacher levels read (e.g. [8, 16, 32] for Stable Diffusion, docs/teachers.md)
    dt_strides: list[int] = field(default_factory=lambda: list(STRIDES))
    dt_lambda_at: float = PretrainConfig.lambda_at
    dt_at_source: str = PretrainConfig.at_source  # regressor | backbone (docs/method.md)
    dt_feature_cache: int = 0  # > 0: the dreamteacher, dt-mix and dt-label rows read their
    # targets from a feature cache of this many encodings per image (a cell of its own, shared)
    # instead of running the teacher
    ssl_lr: float = BaselineConfig.lr
    # one SSL method's own lr (None: ssl_lr); MoCo v2's 7e-4 was its best on CamVid's val split
    # at equal epochs and at equal compute (docs/benchmarks.md, "The SSL baselines' lr")
    simclr_lr: float | None = None
    mocov2_lr: float | None = 7e-4
    byol_lr: float | None = None
    densecl_lr: float | None = None
    # also train each SSL baseline for as long as DreamTeacher's teacher + feature cache +
    # distillation took (measured wall time), rows `<method>@compute` in a table of their own
    ssl_equal_compute: bool = False
    # the feature interpreter (interpreter row; soft labels of dt-mix and dt-label)
    interpreter_epochs: int = 100
    interpreter_max_steps: int | None = 500
    interpreter_channels: int = InterpreterConfig.channels
    lambda_ld: float = PretrainConfig.lambda_ld
    tau: float = PretrainConfig.tau
    # the dt-mix / dt-label students' logit head: uper | light. light was chosen on CamVid's
    # val split (docs/benchmarks.md, "The light logit head"): as good there, and cheaper
    dt_logit_head: str = "light"
    # DDPM-seg (Baranchuk et al. 2022)
    ddpm_seg_t: list[int] = field(default_factory=lambda: list(DDPM_SEG_T))
    ddpm_seg_steps: int = 500
    ddpm_seg_ensemble: int = DDPMSegConfig.ensemble
    ddpm_seg_pixels: int = DDPMSegConfig.pixels
    # evaluation: one recipe per protocol, the same for every method
    finetune_steps: int = 200
    finetune_lr: float = FinetuneConfig.lr
    frozen_steps: int = 200
    frozen_lr: float = FinetuneConfig.lr
    finetune_batch_size: int = FinetuneConfig.batch_size
    head_channels: int = 128  # UPerNet head width
    eval_batch_size: int = FinetuneConfig.eval_batch_size
    keep_weights: bool = False  # keep each evaluation's model.pt and checkpoints
    cells_dir: str = ""  # where finished cells are cached (default OUT/cells); share it
    # between output folders to reuse cells, e.g. a probe of one setting on a subset
    report: bool = True  # OUT/report.html at the end (and each cell's run has its own)


PROFILES: dict[str, dict[str, Any]] = {
    # the harness end to end in a few minutes on 2 CPU cores, on any mask folder
    "smoke": {
        "image_size": [32, 48],
        "labels": [8],
        "seeds": [0],
        "teacher_steps": 20,
        "teacher_batch_size": 8,
        "teacher_sample_steps": 5,  # the grid of a 20-step teacher is noise at any step count
        "gan_steps": 4,
        "gan_batch_size": 8,
        "pretrain_epochs": 1,
        "pretrain_max_steps": 4,
        "pretrain_batch_size": 8,
        "finetune_steps": 10,
        "frozen_steps": 10,
        "interpreter_max_steps": 6,
        "interpreter_channels": 32,
        "ddpm_seg_steps": 6,
        "ddpm_seg_ensemble": 2,
    },
    # resnet18 at 64x80 on 2 CPU cores, in the background: the equal-compute table at N = 46
    # over 3 seeds (docs/benchmarks.md has it and its timing). Other rows and N reuse its
    # cells: e.g. "methods=[dt-mix,dt-label]" "labels=[23,46,367]".
    "cpu": {
        "methods": PRETRAINED,
        "ssl_equal_compute": True,
        "labels": [46],
        "seeds": [0, 1, 2],
    },
    # resnet50 at 256x320 on one H100/H200, in what gpu.sh leaves of its 8 minutes (at least
    # 390 s after its throughput stage). On one H200 (docs/benchmarks.md) the 400-step teacher
    # took 60 s, each pretraining 15-18 s, each evaluation 11-18 s: 324 s for the stage.
    "gpu": {
        "methods": PRETRAINED,  # the per-(N, seed) rows do not fit the 8 minutes
        "backbone": "resnet50",
        "image_size": [256, 320],
        "labels": [23],  # add N with labels=[23,367]: cells already computed are reused
        "seeds": [0],
        "teacher_steps": 400,
        "teacher_batch_size": 32,
        "pretrain_epochs": 6,
        "pretrain_batch_size": 32,
        "finetune_steps": 100,
        "frozen_steps": 100,
        "finetune_batch_size": 16,
        "eval_batch_size": 32,
    },
}


def build_benchmark_config(
    profile: str = "cpu",
    config_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    **kwargs: Any,
) -> BenchmarkConfig:
    if profile not in PROFILES:
        raise UserError(f"unknown profile '{profile}'; pick one of {', '.join(PROFILES)}")
    cfg = build_config(
        BenchmarkConfig,
        config_file,
        overrides,
        defaults_from=(f"profile {profile}", PROFILES[profile]),
        profile=profile,
        **kwargs,
    )
    bad = [m for m in cfg.methods if m not in ALL_METHODS]
    if bad:
        raise UserError(f"unknown method '{bad[0]}'; pick from {', '.join(ALL_METHODS)}")
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad:
        raise UserError(f"unknown protocol '{bad[0]}'; pick from {', '.join(PROTOCOLS)}")
    if not cfg.labels:  # (each N is checked positive by build_config)
        raise UserError("labels is empty; give at least one number of labelled images")
    if cfg.eval_split not in EVAL_SPLITS:
        raise UserError(
            f"unknown eval_split '{cfg.eval_split}'; choose val (to choose settings) or test"
        )
    if cfg.dt_at_source not in AT_SOURCES:
        raise UserError(
            f"unknown dt_at_source '{cfg.dt_at_source}'; choose one of {', '.join(AT_SOURCES)}"
        )
    if cfg.dt_logit_head not in LOGIT_HEADS:
        raise UserError(
            f"unknown dt_logit_head '{cfg.dt_logit_head}'; choose one of {', '.join(LOGIT_HEADS)}"
        )
    if not cfg.seeds:
        raise UserError("seeds is empty; give at least one, e.g. seeds=[0]")
    return cfg
