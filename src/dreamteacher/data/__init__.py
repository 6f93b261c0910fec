"""Data: unlabeled image folders, mask folders, the procedural demo scenes, samplers."""

from dreamteacher.data.folder import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    list_images,
    load_rgb,
)
from dreamteacher.data.sampler import Indexed, ResumableBatchSampler, StepTagged
from dreamteacher.data.segmentation import MaskFolder, select_labeled
from dreamteacher.data.unlabeled import unlabeled_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "Indexed",
    "MaskFolder",
    "ResumableBatchSampler",
    "list_images",
    "load_rgb",
    "StepTagged",
    "select_labeled",
    "unlabeled_images",
]
