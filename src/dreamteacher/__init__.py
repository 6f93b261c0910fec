"""dreamteacher: pretrain timm backbones by distilling a generative model's features
(DreamTeacher, Li et al., ICCV 2023)."""

from dreamteacher.api import (
    cache_features,
    export,
    finetune,
    pretrain,
    pretrain_baseline,
    train_ddpm_seg,
    train_interpreter,
    train_teacher,
)
from dreamteacher.benchmarking import benchmark
from dreamteacher.demo import demo
from dreamteacher.errors import UserError
from dreamteacher.export import load_backbone

__version__ = "0.1.0"
__all__ = [
    "UserError",
    "benchmark",
    "cache_features",
    "demo",
    "export",
    "finetune",
    "load_backbone",
    "pretrain",
    "pretrain_baseline",
    "train_ddpm_seg",
    "train_interpreter",
    "train_teacher",
]
