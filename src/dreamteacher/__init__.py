"""dreamteacher: pretrain timm backbones by distilling a generative model's features
(DreamTeacher, Li et al., ICCV 2023)."""

from dreamteacher.api import (
    benchmark,
    demo,
    export,
    finetune,
    pretrain,
    pretrain_baseline,
    train_ddpm_seg,
    train_interpreter,
    train_teacher,
)
from dreamteacher.errors import UserError
from dreamteacher.export import load_backbone

__version__ = "0.1.0"
__all__ = [
    "UserError",
    "benchmark",
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
