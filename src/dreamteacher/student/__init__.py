"""Student side: timm backbone, UPerNet decoder, feature regressor, segmentation head."""

from dreamteacher.student.backbone import Backbone
from dreamteacher.student.decoder import PPM, FusedLogits, LevelwiseLogits, UPerDecoder
from dreamteacher.student.regressor import FeatureRegressor, RegressorOutput, Student
from dreamteacher.student.segmenter import Segmenter, UPerHead

__all__ = [
    "PPM",
    "Backbone",
    "FeatureRegressor",
    "FusedLogits",
    "LevelwiseLogits",
    "RegressorOutput",
    "Segmenter",
    "Student",
    "UPerDecoder",
    "UPerHead",
]
