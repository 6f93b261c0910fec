"""Training loops: train-teacher, pretrain, finetune (each one file, read top to bottom)."""

from dreamteacher.engine.cache import cache_features
from dreamteacher.engine.finetune import finetune
from dreamteacher.engine.pretrain import pretrain
from dreamteacher.engine.teacher import train_teacher

__all__ = ["cache_features", "finetune", "pretrain", "train_teacher"]
