"""Student side: timm backbone, UPerNet decoder, feature regressor, segmentation head."""

from dreamteacher.student.backbone import Backbone
from dreamteacher.student.decoder import PPM, UPerDecoder
from dreamteacher.student.regressor import FeatureRegressor, Student
from dreamteacher.student.segmenter import Segmenter, UPerHead

__all__ = ["PPM", "Backbone", "FeatureRegressor", "Segmenter", "Student", "UPerDecoder", "UPerHead"]
