"""Training commands: train-teacher, pretrain, finetune, ... (one file each); they all run the
one optimizer loop in loop.py and give it what one of their steps computes."""

from dreamteacher.engine.cache import cache_features
from dreamteacher.engine.finetune import finetune
from dreamteacher.engine.pretrain import pretrain
from dreamteacher.engine.teacher import train_teacher

__all__ = ["cache_features", "finetune", "pretrain", "train_teacher"]
