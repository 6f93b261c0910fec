"""Commands: train-teacher, pretrain, finetune, inspect-teacher, ... (one file each). Each sets up
through engine/session.py and runs the one optimizer loop in engine/loop.py, handing it what
one of its micro-batches computes."""

from dreamteacher.engine.baseline import pretrain_baseline
from dreamteacher.engine.cache import cache_features
from dreamteacher.engine.ddpm_seg import train_ddpm_seg
from dreamteacher.engine.finetune import finetune
from dreamteacher.engine.inspect import inspect_teacher
from dreamteacher.engine.interpreter import train_interpreter
from dreamteacher.engine.pretrain import pretrain
from dreamteacher.engine.probe import probe
from dreamteacher.engine.teacher import train_teacher

__all__ = [
    "cache_features",
    "finetune",
    "inspect_teacher",
    "pretrain",
    "pretrain_baseline",
    "probe",
    "train_ddpm_seg",
    "train_interpreter",
    "train_teacher",
]
